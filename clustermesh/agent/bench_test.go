package agent_test

import (
	"context"
	"net/netip"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/braidmesh/braid/bpf"
	"github.com/braidmesh/braid/bpf/bpftest"
	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/agent"
	"github.com/braidmesh/braid/kvstore/etcd"
	"github.com/braidmesh/braid/kvstore/etcd/etcdtest"
)

// BenchmarkChangeToBPFMap times a change published by one cluster until
// another cluster's agent has it in its BPF backend map, beside a raw etcd
// put → watch event in the same run. Run as root:
//
//	go test -run XXX -bench ChangeToBPFMap -benchtime 500x ./clustermesh/agent/
func BenchmarkChangeToBPFMap(b *testing.B) {
	bpftest.RequireRoot(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	westStore, eastStore := twoClusterStores(b, ctx)
	east := cluster("east", 1, "10.201.1.0/24", "172.21.0.0/16")
	west := cluster("west", 2, "10.201.2.0/24", "172.22.0.0/16")
	pubEast := runPublisher(b, ctx, east, eastStore)
	pubWest := runPublisher(b, ctx, west, westStore)
	backend := netip.MustParseAddr("10.201.2.2")
	_ = pubEast.Upsert(webService(east, "172.21.0.10", netip.MustParseAddr("10.201.1.2"), "e1", "za", true))
	_ = pubWest.Upsert(webService(west, "172.22.0.10", backend, "w1", "zb", true))

	pins := bpftest.PinDir(b)
	a, err := agent.New(agent.Config{Cluster: "east", Node: "e1", Zone: "za", BPF: bpf.Config{PinDir: pins}}, eastStore, nil)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	// Open the agent's pinned maps once it has created them.
	for deadline := time.Now().Add(10 * time.Second); len(a.Snapshot().Maps) == 0; {
		select {
		case err := <-done:
			done <- err // for the deferred wait
			b.Fatalf("agent: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b.Fatalf("agent never reconciled: %+v", a.Snapshot())
		}
	}
	objs, err := bpf.Load(bpf.Config{PinDir: pins})
	if err != nil {
		b.Fatal(err)
	}
	defer objs.Close()
	hasPort := func(port uint16) bool {
		m, err := objs.Backends.Dump()
		if err != nil {
			b.Fatal(err)
		}
		for _, v := range m {
			if v.Port == bpf.Port(port) {
				return true
			}
		}
		return false
	}
	waitPort := func(port uint16) time.Duration {
		start := time.Now()
		for !hasPort(port) {
			if time.Since(start) > 10*time.Second {
				b.Fatalf("port %d not in the backend map after 10s; agent %+v", port, a.Snapshot())
			}
			time.Sleep(500 * time.Microsecond)
		}
		return time.Since(start)
	}
	waitPort(bpftest.BackendPort)

	raw := westStore.Client()
	rawKey := clustermesh.KindPrefix(clustermesh.KindServices, "west") + "bench/raw"
	rawEvents := eastStore.Client().Watch(ctx, rawKey)
	var braid, base []time.Duration
	b.ResetTimer()
	for i := range b.N {
		port := uint16(20000 + i%40000)
		svc := webService(west, "172.22.0.10", backend, "w1", "zb", true)
		svc.Backends[0].Ports[0].Port = port
		start := time.Now()
		if err := pubWest.Upsert(svc); err != nil {
			b.Fatal(err)
		}
		waitPort(port)
		braid = append(braid, time.Since(start))

		start = time.Now()
		if _, err := raw.Put(ctx, rawKey, strconv.Itoa(i)); err != nil {
			b.Fatal(err)
		}
		select {
		case <-rawEvents:
		case <-time.After(10 * time.Second):
			b.Fatal("no raw watch event")
		}
		base = append(base, time.Since(start))
	}
	b.StopTimer()
	pct := func(d []time.Duration, p int) float64 {
		s := slices.Clone(d)
		slices.Sort(s)
		return float64(s[(len(s)-1)*p/100].Microseconds()) / 1000
	}
	b.ReportMetric(pct(braid, 50), "bpf-p50-ms")
	b.ReportMetric(pct(braid, 99), "bpf-p99-ms")
	b.ReportMetric(pct(base, 50), "raw-p50-ms")
	b.ReportMetric(pct(base, 99), "raw-p99-ms")
}

// twoClusterStores starts a real etcd for b and connects west's and east's
// stores to it until ctx is done.
func twoClusterStores(b *testing.B, ctx context.Context) (west, east *etcd.Store) {
	srv := etcdtest.Start(b)
	connect := func() *etcd.Store {
		s, err := etcd.New(ctx, etcd.Config{Endpoints: srv.Endpoints()})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { s.Close() })
		return s
	}
	return connect(), connect()
}
