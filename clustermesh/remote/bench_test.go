package remote_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/remote"
	"github.com/braidmesh/braid/clustermesh/sim"
	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/kvstore/memory"
)

// fillSim writes n simulated clusters (sim.Generate: 100 nodes, 101
// identities, 1,000 IP entries and 100 services each, as `braid bench
// cold-sync` loads them) with their configs, grants and sync markers, and
// returns how many entries the Watcher should hold.
func fillSim(tb testing.TB, s kvstore.Store, n int) int {
	tb.Helper()
	ctx := context.Background()
	services := make([]string, 100)
	for i := range services {
		services[i] = fmt.Sprintf("svc-%d", i)
	}
	put := func(k string, v any) {
		b, err := json.Marshal(v)
		if err != nil {
			tb.Fatal(err)
		}
		if err := s.Put(ctx, k, b, 0); err != nil {
			tb.Fatal(err)
		}
	}
	entries := 0
	for i := range n {
		cfg := clustermesh.ClusterConfig{Name: clustermesh.ClusterName(fmt.Sprintf("cluster-%d", i+1)), ID: clustermesh.ClusterID(i + 1),
			PodCIDRs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16)}}
		st, err := sim.Generate(cfg, 100, 10, services)
		if err != nil {
			tb.Fatal(err)
		}
		for j := range st.Nodes {
			put(st.Nodes[j].Key(), &st.Nodes[j])
		}
		for j := range st.Identities {
			put(st.Identities[j].Key(), &st.Identities[j])
		}
		for j := range st.IPs {
			put(st.IPs[j].Key(), &st.IPs[j])
		}
		for j := range st.Services {
			put(st.Services[j].Key(), &st.Services[j])
		}
		counts := map[clustermesh.Kind]int{clustermesh.KindNodes: len(st.Nodes), clustermesh.KindIdentities: len(st.Identities),
			clustermesh.KindIPs: len(st.IPs), clustermesh.KindServices: len(st.Services)}
		for _, k := range clustermesh.Kinds {
			put(clustermesh.SyncedKey(cfg.Name, k), clustermesh.SyncMarker{Entries: counts[k]})
			entries += counts[k]
		}
		put(cfg.Key(), &cfg)
		g := cfg.Grant()
		put(g.Key(), &g)
	}
	return entries
}

// BenchmarkColdSync times a fresh Watcher syncing 25 simulated clusters
// (32,500 entries, a tenth of `braid bench cold-sync`) from the in-memory
// store, with a subscriber reading every change as that command's consumer
// does. It isolates the consumer's decoding and applying from etcd:
//
//	go test -run '^$' -bench ColdSync -benchmem ./clustermesh/remote/
func BenchmarkColdSync(b *testing.B) {
	const clusters = 25
	s := memory.New()
	defer s.Close()
	want := fillSim(b, s, clusters)
	runtime.GC()
	var cpu time.Duration
	b.ResetTimer()
	for range b.N {
		cpu0 := cpuTime()
		ctx, cancel := context.WithCancel(context.Background())
		w, err := remote.New(remote.Config{Self: "consumer"}, s, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		changes := w.Subscribe(ctx)
		done := make(chan struct{})
		go func() { defer close(done); _ = w.Run(ctx) }()
		synced := 0
		timeout := time.After(5 * time.Minute)
		for synced < clusters {
			select {
			case ch := <-changes:
				if ch.Type == remote.ClusterSynced {
					synced++
				}
			case <-timeout:
				b.Fatalf("%d of %d clusters synced", synced, clusters)
			}
		}
		b.StopTimer()
		cpu += cpuTime() - cpu0
		got := 0
		for _, st := range w.Status() {
			for _, n := range st.Entries {
				got += n
			}
		}
		if got != want {
			b.Fatalf("watcher holds %d entries, want %d", got, want)
		}
		cancel()
		<-done
		runtime.GC()
		b.StartTimer()
	}
	// CPU time is the figure that compares across runs on a shared
	// machine; the wall time follows the share of the cores the test got.
	b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms/op")
}

// cpuTime returns the user and system CPU time the process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
