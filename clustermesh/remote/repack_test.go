package remote_test

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/publish"
	"github.com/braidmesh/braid/clustermesh/remote"
	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/kvstore"
)

// TestRestartRepackKeepsEveryBackend: a publisher that restarts starts
// with no chunk assignment and packs a service's backends anew, so
// backends move between chunks that are written one at a time. At no
// point may a consumer see the service with a backend missing or twice,
// nor count the intermediate states as invalid.
func TestRestartRepackKeepsEveryBackend(t *testing.T) {
	ctx := t.Context()
	eastStore, westStore, east := eastAndWestOnEtcd(t)

	svc := &clustermesh.Service{Cluster: east.Name, Namespace: "default", Name: "web", Global: true, Shared: true,
		Affinity: clustermesh.AffinityNone, Ports: []clustermesh.ServicePort{{Name: "http", Port: 80, Protocol: clustermesh.TCP}}}
	for i := range 250 {
		svc.Backends = append(svc.Backends, clustermesh.Backend{IP: netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}),
			Ports: []clustermesh.BackendPort{{Name: "http", Port: 8080}}, Node: fmt.Sprintf("n%d", i%10), Ready: true, Serving: true})
	}
	sentinel := func(name string) *clustermesh.Service {
		return &clustermesh.Service{Cluster: east.Name, Namespace: "default", Name: name, Global: true, Shared: true,
			Affinity: clustermesh.AffinityNone, Ports: []clustermesh.ServicePort{{Name: "http", Port: 80, Protocol: clustermesh.TCP}},
			Backends: []clustermesh.Backend{{IP: netip.MustParseAddr("10.1.9.9"), Ports: []clustermesh.BackendPort{{Name: "http", Port: 8080}}, Ready: true, Serving: true}}}
	}
	start := func(records ...publish.Record) (*publish.Publisher, func()) {
		return runServicePublisher(t, eastStore, east, publish.LayoutChunked, records...)
	}
	chunkKeys := func() []string {
		t.Helper()
		kvs, _, err := eastStore.List(ctx, clustermesh.KindPrefix(clustermesh.KindServicesV2, east.Name))
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		for _, kv := range kvs {
			keys = append(keys, kv.Key)
		}
		return keys
	}

	p1, stop1 := start(svc)
	w := runWatcher(t, ctx, westStore, "west")
	seen := func(name string, backends int) func() error {
		return func() error {
			cs := w.Snapshot().Clusters[east.Name]
			if cs == nil {
				return fmt.Errorf("east not at the consumer yet")
			}
			got, ok := cs.Services["default/"+name]
			if !ok || len(got.Backends) != backends {
				return fmt.Errorf("service %s: %d backends at the consumer (present %v), want %d", name, len(got.Backends), ok, backends)
			}
			return nil
		}
	}
	testenv.Eventually(t, time.Minute, seen("web", 250))
	// 60 backends of the first chunk go: it is left with 40, and the
	// assignment keeps the others where they are (3 chunks).
	svc.Backends = svc.Backends[60:]
	if err := p1.Upsert(svc); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, time.Minute, seen("web", 190))
	before := chunkKeys()
	stop1()

	changes := w.Subscribe(ctx)
	invalidBefore := eastInvalid(w)
	// The restarted publisher holds the same 190 backends. Once it has
	// written its first pass (its sync markers), it publishes a sentinel
	// service: services are one watch, so once the consumer has it, it has
	// applied every write of the restart.
	p2, stop2 := start(svc)
	defer stop2()
	testenv.Eventually(t, time.Minute, func() error {
		if !p2.Status().Synced[clustermesh.KindServicesV2] {
			return fmt.Errorf("restarted publisher not synced: %+v", p2.Status())
		}
		return nil
	})
	if err := p2.Upsert(sentinel("sentinel")); err != nil {
		t.Fatal(err)
	}
	for done := false; !done; {
		select {
		case ch := <-changes:
			s, ok := ch.Record.(clustermesh.Service)
			if !ok {
				continue
			}
			switch s.Name {
			case "web":
				if ch.Type != remote.Upsert || len(s.Backends) != 190 {
					t.Errorf("during the repack the consumer applied %v of web with %d backends, want 190", ch.Type, len(s.Backends))
				}
			case "sentinel":
				done = true
			}
		case <-time.After(time.Minute):
			t.Fatalf("the restarted publisher's sentinel service never reached the consumer; publisher %+v; keys %v; consumer %+v", p2.Status(), chunkKeys(), w.Status())
		}
	}
	after := chunkKeys()
	t.Logf("chunk keys before the restart %d, after %d", len(before), len(after))
	if err := seen("web", 190)(); err != nil {
		t.Error(err)
	}
	if n := eastInvalid(w); n != invalidBefore {
		t.Errorf("the consumer counted %d invalid entries of east during the repack", n-invalidBefore)
	}
}

func eastInvalid(w *remote.Watcher) int {
	for _, s := range w.Status() {
		if s.Name == "east" {
			return s.Invalid
		}
	}
	return 0
}

// TestScaleDownRepackIsAtomic: a large scale-down leaves chunks sparse and
// the publisher repacks them; consumers see the service go from its old
// backends to its new ones in one step, never a mix, a duplicate or an
// invalid entry.
func TestScaleDownRepackIsAtomic(t *testing.T) {
	ctx := t.Context()
	eastStore, westStore, east := eastAndWestOnEtcd(t)
	service := func(name string, backends int) *clustermesh.Service {
		s := &clustermesh.Service{Cluster: east.Name, Namespace: "default", Name: name, Global: true, Shared: true,
			Affinity: clustermesh.AffinityNone, Ports: []clustermesh.ServicePort{{Name: "http", Port: 80, Protocol: clustermesh.TCP}}}
		for i := range backends {
			s.Backends = append(s.Backends, clustermesh.Backend{IP: netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}),
				Ports: []clustermesh.BackendPort{{Name: "http", Port: 8080}}, Ready: true, Serving: true})
		}
		return s
	}
	p, stop := runServicePublisher(t, eastStore, east, publish.LayoutChunked, service("web", 1000))
	defer stop()
	w := runWatcher(t, ctx, westStore, "west")
	testenv.Eventually(t, time.Minute, func() error {
		cs := w.Snapshot().Clusters[east.Name]
		if cs == nil || len(cs.Services["default/web"].Backends) != 1000 {
			return fmt.Errorf("web not at the consumer with 1000 backends yet")
		}
		return nil
	})
	before, _, err := eastStore.List(ctx, clustermesh.KindPrefix(clustermesh.KindServicesV2, east.Name)+"default/web")
	if err != nil {
		t.Fatal(err)
	}

	changes := w.Subscribe(ctx)
	invalidBefore := eastInvalid(w)
	// Every seventh backend stays (143 of 1,000, in all ten chunks): ten
	// chunks where two would do, so the publisher repacks. The sentinel,
	// upserted last, marks the end of its writes.
	kept := service("web", 1000)
	kept.Backends = slices.DeleteFunc(kept.Backends, func(b clustermesh.Backend) bool { return b.IP.As4()[3]%7 != 0 })
	want := map[netip.Addr]bool{}
	for _, b := range kept.Backends {
		want[b.IP] = true
	}
	if err := p.Upsert(kept); err != nil {
		t.Fatal(err)
	}
	webKeys := func() ([]kvstore.KeyValue, error) {
		kvs, _, err := eastStore.List(ctx, clustermesh.KindPrefix(clustermesh.KindServicesV2, east.Name)+"default/web")
		return kvs, err
	}
	// web's header and two chunks, and nothing else of it, once the
	// publisher is done; services are one watch, so the consumer has
	// applied every write of the repack once it has the sentinel.
	testenv.Eventually(t, time.Minute, func() error {
		kvs, err := webKeys()
		if err != nil || len(kvs) != 3 {
			return fmt.Errorf("web has %d keys in etcd (%v), want 3", len(kvs), err)
		}
		return nil
	})
	if err := p.Upsert(service("sentinel", 1)); err != nil {
		t.Fatal(err)
	}
	last := 0
	for finished := false; !finished; {
		select {
		case ch := <-changes:
			s, ok := ch.Record.(clustermesh.Service)
			if !ok {
				continue
			}
			switch s.Name {
			case "web":
				// Backends that stay never leave; the others may leave in
				// steps, as they would one by one.
				have := map[netip.Addr]bool{}
				for _, b := range s.Backends {
					have[b.IP] = true
				}
				for ip := range want {
					if !have[ip] {
						t.Errorf("during the repack the consumer applied web without %s, which stays", ip)
						break
					}
				}
				if ch.Type != remote.Upsert {
					t.Errorf("during the repack the consumer applied %v of web", ch.Type)
				}
				last = len(s.Backends)
			case "sentinel":
				finished = true
			}
		case <-time.After(time.Minute):
			t.Fatalf("the sentinel service never reached the consumer; consumer %+v", w.Status())
		}
	}
	if last != len(kept.Backends) {
		t.Errorf("web ended with %d backends at the consumer, want %d", last, len(kept.Backends))
	}
	after, err := webKeys()
	if err != nil {
		t.Fatal(err)
	}
	// A header and 10 chunks before; a header and 2 chunks after, none of
	// them an old chunk's name: the chunks were repacked.
	old := map[string]bool{}
	for _, kv := range before {
		old[kv.Key] = true
	}
	if len(before) != 11 {
		t.Errorf("web had %d keys before the scale-down, want 11", len(before))
	}
	for _, kv := range after {
		if old[kv.Key] && kv.Key != clustermesh.KindPrefix(clustermesh.KindServicesV2, east.Name)+"default/web" {
			t.Errorf("repacked chunk %s reuses an old chunk's name", kv.Key)
		}
	}
	if n := eastInvalid(w); n != invalidBefore {
		t.Errorf("the consumer counted %d invalid entries of east during the repack", n-invalidBefore)
	}
}
