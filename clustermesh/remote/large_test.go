package remote_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/publish"
	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/kvstore/etcd"
	"github.com/braidmesh/braid/kvstore/etcd/etcdtest"
)

// TestFiftyThousandBackendsThroughEtcd publishes a service of 50,000
// backends (ten times what one etcd value holds in the single-value
// layout) in the default layout through a real etcd, and checks that a
// remote Watcher's snapshot holds all of them, then follows a one-backend
// change and a scale-down to 30,000.
func TestFiftyThousandBackendsThroughEtcd(t *testing.T) {
	ctx := t.Context()
	eastStore, westStore, east := eastAndWestOnEtcd(t)

	const n = 50_000
	svc := &clustermesh.Service{Cluster: east.Name, Namespace: "default", Name: "huge", Global: true, Shared: true,
		Affinity: clustermesh.AffinityNone, Ports: []clustermesh.ServicePort{{Name: "http", Port: 80, Protocol: clustermesh.TCP}}}
	for i := range n {
		svc.Backends = append(svc.Backends, clustermesh.Backend{IP: netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}),
			Ports: []clustermesh.BackendPort{{Name: "http", Port: 8080}}, Node: fmt.Sprintf("n%d", i%100), Ready: true, Serving: true})
	}
	p, stop := runServicePublisher(t, eastStore, east, publish.LayoutBoth, svc)
	defer stop()

	w := runWatcher(t, ctx, westStore, "west")
	// backends returns a check that the consumer's snapshot holds the
	// service with want backends, every one passing ok.
	backends := func(want int, ok func(clustermesh.Backend) bool) func() error {
		return func() error {
			cs := w.Snapshot().Clusters[east.Name]
			if cs == nil || !cs.Synced {
				return fmt.Errorf("east not synced at the consumer yet")
			}
			got, found := cs.Services[svc.NamespacedName()]
			if !found {
				return fmt.Errorf("service %s not at the consumer yet", svc.NamespacedName())
			}
			if len(got.Backends) != want {
				return fmt.Errorf("service %s has %d backends at the consumer, want %d", svc.NamespacedName(), len(got.Backends), want)
			}
			for _, b := range got.Backends {
				if !ok(b) {
					return fmt.Errorf("backend %s at the consumer: %+v", b.IP, b)
				}
			}
			return nil
		}
	}
	testenv.Eventually(t, 3*time.Minute, backends(n, func(b clustermesh.Backend) bool { return b.Ready }))
	// Too large for the single-value layout: written chunked only.
	if _, err := eastStore.Get(ctx, svc.Key()); err == nil {
		t.Errorf("single-value key %s written for %d backends", svc.Key(), n)
	}

	flipped := svc.Backends[31_337].IP
	svc.Backends[31_337].Ready = false
	if err := p.Upsert(svc); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, time.Minute, backends(n, func(b clustermesh.Backend) bool { return b.Ready == (b.IP != flipped) }))

	svc.Backends = svc.Backends[:30_000]
	svc.Backends[0].Zone = "z" // and one backend changes with it
	if err := p.Upsert(svc); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, time.Minute, backends(30_000, func(b clustermesh.Backend) bool {
		return b.Ready && (b.Zone == "z") == (b.IP == svc.Backends[0].IP)
	}))
}

// eastAndWestOnEtcd starts an etcd and returns a store for cluster east
// (ID 1) and one for west (ID 2), both granted.
func eastAndWestOnEtcd(t *testing.T) (eastStore, westStore *etcd.Store, east clustermesh.ClusterConfig) {
	t.Helper()
	srv := etcdtest.Start(t, etcdtest.WithoutFsync())
	connect := func() *etcd.Store {
		s, err := etcd.New(t.Context(), etcd.Config{Endpoints: srv.Endpoints()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	eastStore, westStore = connect(), connect()
	east = cluster("east", 1)
	putGrant(t, eastStore, east)
	putGrant(t, eastStore, cluster("west", 2))
	return eastStore, westStore, east
}

// runServicePublisher runs a publisher of c's services, in layout, with
// no entries of the other kinds; stop ends it.
func runServicePublisher(t *testing.T, store kvstore.Store, c clustermesh.ClusterConfig, layout publish.ServiceLayout, services ...publish.Record) (p *publish.Publisher, stop func()) {
	t.Helper()
	p, err := publish.New(publish.Config{Cluster: c, LeaseTTL: 30 * time.Second, ServiceLayout: layout}, store, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []clustermesh.Kind{clustermesh.KindNodes, clustermesh.KindIdentities, clustermesh.KindIPs} {
		if err := p.Replace(k, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Replace(clustermesh.KindServices, services); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	return p, func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("publisher: %v", err)
		}
	}
}
