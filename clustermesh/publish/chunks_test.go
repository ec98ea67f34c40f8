package publish_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/publish"
	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/kvstore/memory"
)

func bigService(c clustermesh.ClusterConfig, n int) *clustermesh.Service {
	s := &clustermesh.Service{Cluster: c.Name, Namespace: "default", Name: "web", Global: true, Shared: true,
		Affinity: clustermesh.AffinityNone, Ports: []clustermesh.ServicePort{{Name: "http", Port: 80, Protocol: clustermesh.TCP}}}
	for i := range n {
		s.Backends = append(s.Backends, clustermesh.Backend{IP: netip.AddrFrom4([4]byte{10, 1, byte(i / 200), byte(i%200 + 1)}),
			Ports: []clustermesh.BackendPort{{Name: "http", Port: 8080}}, Ready: true, Serving: true})
	}
	return s
}

// TestChunkedLayoutWritesOneChunkPerBackendChange: a flap, an addition
// and a removal of one backend each rewrite exactly one chunk; the
// chunked layout writes no single-value key nor its marker.
func TestChunkedLayoutWritesOneChunkPerBackendChange(t *testing.T) {
	ctx := t.Context()
	store := memory.New()
	defer store.Close()
	east := cluster("east", 1, "10.1.0.0/16")
	rec := record(ctx, t, store)
	p, err := publish.New(publish.Config{Cluster: east, LeaseTTL: 5 * time.Second, ServiceLayout: publish.LayoutChunked}, store, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	svc := bigService(east, 250)
	if err := p.Replace(clustermesh.KindServices, []publish.Record{svc}); err != nil {
		t.Fatal(err)
	}
	if err := p.Replace(clustermesh.KindNodes, nil); err != nil {
		t.Fatal(err)
	}
	defer start(t, ctx, p)()
	testenv.Eventually(t, 10*time.Second, synced(p, clustermesh.KindServicesV2))
	evs := rec.settle(t, p, east)
	chunks := 0
	for _, ev := range evs {
		pk, err := clustermesh.ParseKey(ev.Key)
		if err != nil {
			t.Fatal(err)
		}
		if pk.Kind == clustermesh.KindServices || (pk.Synced && pk.Name == string(clustermesh.KindServices)) {
			t.Fatalf("chunked layout wrote %s", ev.Key)
		}
		if pk.Kind == clustermesh.KindServicesV2 {
			if _, c, _ := clustermesh.SplitServicesV2Name(pk.Name); c != "" {
				chunks++
			}
		}
	}
	if chunks != 3 {
		t.Fatalf("250 backends written as %d chunks, want 3", chunks)
	}

	steps := []struct {
		name   string
		change func()
	}{
		{"flap", func() { svc.Backends[17].Ready = false }},
		// Changed in place, in the caller's slice: the chunk is encoded
		// again, not taken from the encodings kept.
		{"port in place", func() { svc.Backends[5].Ports[0].Port = 9090 }},
		{"add", func() {
			svc.Backends = append(svc.Backends, clustermesh.Backend{IP: netip.MustParseAddr("10.1.9.9"), Ports: []clustermesh.BackendPort{{Name: "http", Port: 8080}}})
		}},
		{"remove", func() { svc.Backends = svc.Backends[1:] }},
	}
	for _, st := range steps {
		st.change()
		if err := p.Upsert(svc); err != nil {
			t.Fatal(err)
		}
		evs := rec.settle(t, p, east)
		if len(evs) != 1 || evs[0].Kind != kvstore.EventUpsert || !isChunk(evs[0].Key) || len(evs[0].Value) > 2048 {
			t.Fatalf("%s: wrote %v, want one chunk of at most 2 KiB", st.name, keysOf(evs))
		}
	}
}

func isChunk(key string) bool {
	pk, err := clustermesh.ParseKey(key)
	if err != nil || pk.Kind != clustermesh.KindServicesV2 {
		return false
	}
	_, c, ok := clustermesh.SplitServicesV2Name(pk.Name)
	return ok && c != ""
}

func keysOf(evs []kvstore.Event) []string {
	var out []string
	for _, ev := range evs {
		out = append(out, ev.Kind.String()+" "+ev.Key)
	}
	return out
}

// TestLayoutBothSkipsOversizedSingleValue: in the migration layout a
// service too large for the single-value layout is written chunked only.
func TestLayoutBothSkipsOversizedSingleValue(t *testing.T) {
	ctx := t.Context()
	store := memory.New()
	defer store.Close()
	east := cluster("east", 1, "10.1.0.0/16")
	p, err := publish.New(publish.Config{Cluster: east, LeaseTTL: 5 * time.Second}, store, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	small, big := bigService(east, 10), bigService(east, publish.LegacyMaxBackends+1)
	big.Name = "big"
	if err := p.Replace(clustermesh.KindServices, []publish.Record{small, big}); err != nil {
		t.Fatal(err)
	}
	defer start(t, ctx, p)()
	testenv.Eventually(t, 10*time.Second, synced(p, clustermesh.KindServices, clustermesh.KindServicesV2))
	for key, want := range map[string]bool{small.Key(): true, big.Key(): false,
		clustermesh.KindPrefix(clustermesh.KindServicesV2, east.Name) + "default/big": true} {
		_, err := store.Get(ctx, key)
		if got := err == nil; got != want {
			t.Errorf("key %s present = %v, want %v (err %v)", key, got, want, err)
		}
	}
}

// BenchmarkUpsertOneBackendChange: Upsert (encoding included, no store
// write) of a 5,000-backend service after one backend flapped, in the
// chunked layout.
func BenchmarkUpsertOneBackendChange(b *testing.B) {
	east := cluster("east", 1, "10.1.0.0/16")
	p, err := publish.New(publish.Config{Cluster: east, ServiceLayout: publish.LayoutChunked}, memory.New(), nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	svc := bigService(east, 5000)
	if err := p.Upsert(svc); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		j := (i * 37) % len(svc.Backends)
		svc.Backends[j].Ready = !svc.Backends[j].Ready
		if err := p.Upsert(svc); err != nil {
			b.Fatal(err)
		}
	}
}

// oldBrokerStore refuses writes under the services.v2 prefix, as a broker
// whose roles predate the chunked layout does.
type oldBrokerStore struct{ kvstore.Store }

func (s oldBrokerStore) Put(ctx context.Context, key string, val []byte, lease kvstore.LeaseID) error {
	if strings.HasPrefix(key, clustermesh.Root+string(clustermesh.KindServicesV2)+"/") {
		return fmt.Errorf("put %s: %w", key, kvstore.ErrPermissionDenied)
	}
	return s.Store.Put(ctx, key, val, lease)
}

// TestChunkedLayoutOnOldBrokerNamesTheFix: a publisher writing chunks
// through a broker that does not grant the prefix stops with an error
// that says what to do.
func TestChunkedLayoutOnOldBrokerNamesTheFix(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	east := cluster("east", 1, "10.1.0.0/16")
	p, err := publish.New(publish.Config{Cluster: east, LeaseTTL: 5 * time.Second}, oldBrokerStore{mem}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Replace(clustermesh.KindServices, []publish.Record{bigService(east, 10)}); err != nil {
		t.Fatal(err)
	}
	err = p.Run(t.Context())
	if !errors.Is(err, kvstore.ErrPermissionDenied) || !strings.Contains(err.Error(), "restart the broker") || !strings.Contains(err.Error(), "--service-layout=single") {
		t.Fatalf("Run: %v, want a permission error naming the broker upgrade and --service-layout=single", err)
	}
}
