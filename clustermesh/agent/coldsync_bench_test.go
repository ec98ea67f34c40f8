package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/braidmesh/braid/bpf"
	"github.com/braidmesh/braid/bpf/bpftest"
	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/agent"
	"github.com/braidmesh/braid/clustermesh/sim"
	"github.com/braidmesh/braid/kvstore/etcd"
	"github.com/braidmesh/braid/kvstore/etcd/etcdtest"
)

// BenchmarkColdSyncToBPF times a fresh agent against a broker holding
// simulated clusters as `braid bench cold-sync` fills it (250, or
// BRAID_BENCH_CLUSTERS; 1,300 entries each) until its ipcache map holds
// every cluster's IP entries: the Watcher's sync and the mesh and
// datapath loops' rounds together. It reports the wall time and the
// process's CPU time over it (the embedded etcd serving the reads
// included, the same in every run). Run as root:
//
//	go test -run '^$' -bench ColdSyncToBPF -benchtime 2x -timeout 20m ./clustermesh/agent/
func BenchmarkColdSyncToBPF(b *testing.B) {
	bpftest.RequireRoot(b)
	clusters := 250
	if s := os.Getenv("BRAID_BENCH_CLUSTERS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 250 {
			b.Fatalf("BRAID_BENCH_CLUSTERS=%q: want 1..250", s)
		}
		clusters = n
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := etcdtest.Start(b, etcdtest.WithoutFsync())
	store, err := etcd.New(ctx, etcd.Config{Endpoints: srv.Endpoints()})
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	fillClusters(b, store.Client(), clusters)
	want := clusters * 1000

	var wall, cpu time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		pins := bpftest.PinDir(b)
		a, err := agent.New(agent.Config{Cluster: "consumer", Node: "n1", Zone: "za", BPF: bpf.Config{PinDir: pins}}, store, nil)
		if err != nil {
			b.Fatal(err)
		}
		actx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		b.StartTimer()
		start, cpu0 := time.Now(), cpuTime()
		go func() { done <- a.Run(actx) }()
		ipcache := func() int {
			for _, m := range a.Snapshot().Maps {
				if m.Name == "ipcache" {
					return m.Entries
				}
			}
			return 0
		}
		for deadline := time.Now().Add(5 * time.Minute); ipcache() < want; {
			select {
			case err := <-done:
				b.Fatalf("agent: %v", err)
			case <-time.After(50 * time.Millisecond): // Snapshot reads every cluster's status: not too often
			}
			if time.Now().After(deadline) {
				b.Fatalf("ipcache holds %d entries after 5 min, want %d", ipcache(), want)
			}
		}
		wall += time.Since(start)
		cpu += cpuTime() - cpu0
		b.StopTimer()
		stop()
		if err := <-done; err != nil {
			b.Fatalf("agent: %v", err)
		}
		b.StartTimer()
	}
	b.ReportMetric(wall.Seconds()/float64(b.N), "wall-s/op")
	b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
}

// fillClusters writes n simulated clusters with their configs, grants and
// sync markers, 128 puts a transaction, 16 transactions at a time.
func fillClusters(b *testing.B, c *clientv3.Client, n int) {
	type kv struct{ k, v string }
	work := make(chan []kv, 64)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	for range 16 {
		wg.Go(func() {
			for batch := range work {
				ops := make([]clientv3.Op, len(batch))
				for i, e := range batch {
					ops[i] = clientv3.OpPut(e.k, e.v)
				}
				if _, err := c.Txn(context.Background()).Then(ops...).Commit(); err != nil {
					mu.Lock()
					first = err
					mu.Unlock()
				}
			}
		})
	}
	services := make([]string, 100)
	for i := range services {
		services[i] = fmt.Sprintf("svc-%d", i)
	}
	var batch []kv
	add := func(k string, v any) {
		buf, err := json.Marshal(v)
		if err != nil {
			b.Fatal(err)
		}
		if batch = append(batch, kv{k, string(buf)}); len(batch) == 128 {
			work <- batch
			batch = nil
		}
	}
	for i := range n {
		cfg := clustermesh.ClusterConfig{Name: clustermesh.ClusterName(fmt.Sprintf("cluster-%d", i+1)), ID: clustermesh.ClusterID(i + 1),
			PodCIDRs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16)}}
		st, err := sim.Generate(cfg, 100, 10, services)
		if err != nil {
			b.Fatal(err)
		}
		for j := range st.Nodes {
			add(st.Nodes[j].Key(), &st.Nodes[j])
		}
		for j := range st.Identities {
			add(st.Identities[j].Key(), &st.Identities[j])
		}
		for j := range st.IPs {
			add(st.IPs[j].Key(), &st.IPs[j])
		}
		for j := range st.Services {
			add(st.Services[j].Key(), &st.Services[j])
		}
		counts := map[clustermesh.Kind]int{clustermesh.KindNodes: len(st.Nodes), clustermesh.KindIdentities: len(st.Identities),
			clustermesh.KindIPs: len(st.IPs), clustermesh.KindServices: len(st.Services)}
		for _, k := range clustermesh.Kinds {
			add(clustermesh.SyncedKey(cfg.Name, k), clustermesh.SyncMarker{Entries: counts[k]})
		}
		add(cfg.Key(), &cfg)
		g := cfg.Grant()
		add(g.Key(), &g)
	}
	if len(batch) > 0 {
		work <- batch
	}
	close(work)
	wg.Wait()
	if first != nil {
		b.Fatal(first)
	}
}

// cpuTime returns the user and system CPU time the process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
