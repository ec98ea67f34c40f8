package etcd_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/kvstore/etcd/etcdtest"
)

// BenchmarkPutToWatchEvent measures the time from a Put to its event on a
// watch of the same store (one writer, 1 KiB values, embedded etcd with
// fsync). It reports the latency's p50 and p99; it is the raw-etcd baseline
// for the layers built on kvstore.
func BenchmarkPutToWatchEvent(b *testing.B) {
	srv := etcdtest.Start(b)
	s := newStore(b, srv.Endpoints())
	ctx, cancel := context.WithCancel(b.Context())
	defer cancel()
	w := s.Watch(ctx, "bench/")
	if ev := <-w; ev.Kind != kvstore.EventListDone {
		b.Fatalf("first event %+v, want list-done", ev)
	}
	value := make([]byte, 1024)
	lat := make([]time.Duration, 0, b.N)
	for i := 0; b.Loop(); i++ {
		start := time.Now()
		if err := s.Put(ctx, "bench/k", value, 0); err != nil {
			b.Fatal(err)
		}
		for ev := range w {
			if ev.Kind == kvstore.EventUpsert {
				break
			}
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	reportPercentiles(b, lat)
}

func reportPercentiles(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	q := func(p float64) float64 {
		return float64(lat[int(p*float64(len(lat)-1))]) / float64(time.Millisecond)
	}
	b.ReportMetric(q(0.50), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
}
