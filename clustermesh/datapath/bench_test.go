package datapath

import (
	"context"
	"net/netip"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/braidmesh/braid/bpf"
	"github.com/braidmesh/braid/clustermesh"
)

// benchDesired is 100k ipcache entries and 50k backends (5k services of 10).
func benchDesired() Desired {
	var d Desired
	d.ClusterIDs = map[clustermesh.ClusterName]clustermesh.ClusterID{"east": 1, "west": 2}
	for i := 0; i < 100_000; i++ {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		d.IPCache = append(d.IPCache, clustermesh.IPEntry{Prefix: netip.PrefixFrom(a, 32), Cluster: "west", Identity: 2<<16 | clustermesh.NumericIdentity(i%60000+1), HostIP: netip.AddrFrom4([4]byte{192, 0, 2, byte(i % 200)})})
	}
	for s := 0; s < 5_000; s++ {
		svc := Service{Affinity: clustermesh.AffinityLocal, Frontends: []Frontend{{netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 96, byte(s >> 8), byte(s)}), 80), clustermesh.TCP}}}
		for b := 0; b < 10; b++ {
			i := s*10 + b
			cl := clustermesh.ClusterName("east")
			if b >= 5 {
				cl = "west"
			}
			svc.Backends = append(svc.Backends, Backend{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{11, byte(i >> 16), byte(i >> 8), byte(i)}), 8080), Cluster: cl, Node: "n", Zone: "z", Healthy: true})
		}
		d.Services = append(d.Services, svc)
	}
	return d
}

// BenchmarkReconcileVsRaw reconciles benchDesired into empty maps and
// compares with BatchUpdate of the very entries the reconcile wrote, in the
// order it wrote them (ipcache sorted by address, see ipcacheOrder), into
// fresh maps. Reported: reconcile-ms, raw-ms, raw/reconcile (goal >= 0.5),
// and raw-unsorted-ms: the raw ipcache write in Go map order instead, what
// a writer that does not sort pays.
func BenchmarkReconcileVsRaw(b *testing.B) {
	want := benchDesired()
	var recon, raw, unsorted time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		objs := loadObjs(b)
		r, _ := New(Config{Topology: Topology{Node: "n", Zone: "z", Cluster: "east", ClusterID: 1}}, MapsOf(objs), nil, nil)
		runtime.GC() // start each reconcile with the same heap
		b.StartTimer()
		start := time.Now()
		if err := r.Reconcile(context.Background(), want); err != nil {
			b.Fatal(err)
		}
		recon += time.Since(start)
		b.StopTimer()
		if w := r.Writes(); w < 100_000+50_000 {
			b.Fatalf("reconcile wrote %d entries", w)
		}
		// The same entries, as raw batches into fresh maps.
		ipc, _ := objs.IPCache.Dump()
		svcs, _ := objs.Services.Dump()
		slots, _ := objs.Slots.Dump()
		bes, _ := objs.Backends.Dump()
		fresh := loadObjs(b)
		runtime.GC()
		ipSorted := timeRaw(b, fresh.IPCache, ipc, ipcacheOrder)
		rest := timeRaw(b, fresh.Backends, bes, nil) + timeRaw(b, fresh.Slots, slots, nil) + timeRaw(b, fresh.Services, svcs, nil)
		raw += ipSorted + rest
		unsorted += timeRaw(b, loadObjs(b).IPCache, ipc, nil) + rest
	}
	b.ReportMetric(float64(recon.Milliseconds())/float64(b.N), "reconcile-ms")
	b.ReportMetric(float64(raw.Milliseconds())/float64(b.N), "raw-ms")
	b.ReportMetric(float64(unsorted.Milliseconds())/float64(b.N), "raw-unsorted-ms")
	b.ReportMetric(float64(raw)/float64(recon), "raw/reconcile")
}

// timeRaw times one BatchUpdate of entries, in order when order is set.
func timeRaw[K comparable, V any](b *testing.B, m *bpf.Map[K, V], entries map[K]V, order func(a, b K) int) time.Duration {
	ks := make([]K, 0, len(entries))
	for k := range entries {
		ks = append(ks, k)
	}
	if order != nil {
		slices.SortFunc(ks, order)
	}
	vs := make([]V, 0, len(entries))
	for _, k := range ks {
		vs = append(vs, entries[k])
	}
	start := time.Now()
	if _, err := m.BatchUpdate(ks, vs); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

// BenchmarkReconcileUnchanged is the periodic resync: benchDesired again
// over maps that already hold it (dump, diff, no writes).
func BenchmarkReconcileUnchanged(b *testing.B) {
	want := benchDesired()
	objs := loadObjs(b)
	r, _ := New(Config{Topology: Topology{Node: "n", Zone: "z", Cluster: "east", ClusterID: 1}}, MapsOf(objs), nil, nil)
	if err := r.Reconcile(context.Background(), want); err != nil {
		b.Fatal(err)
	}
	before := r.Writes()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := r.Reconcile(context.Background(), want); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if w := r.Writes() - before; w != 0 {
		b.Fatalf("unchanged reconciles wrote %d entries", w)
	}
}
