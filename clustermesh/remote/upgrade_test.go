package remote_test

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/publish"
	"github.com/braidmesh/braid/clustermesh/remote"
	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/kvstore/memory"
)

// invariant checks every state a consumer goes through: the service must
// never be deleted and must always hold every stable backend.
type invariant struct {
	name   string
	stable map[netip.Addr]bool

	mu     sync.Mutex
	seen   int // states checked
	broken []string
	last   map[netip.Addr]bool
}

func (iv *invariant) check(backends []clustermesh.Backend, deleted bool) {
	iv.mu.Lock()
	defer iv.mu.Unlock()
	iv.seen++
	if deleted {
		iv.broken = append(iv.broken, iv.name+": service deleted")
		return
	}
	have := make(map[netip.Addr]bool, len(backends))
	for _, b := range backends {
		have[b.IP] = true
	}
	for ip := range iv.stable {
		if !have[ip] {
			iv.broken = append(iv.broken, fmt.Sprintf("%s: state %d lacks backend %s (has %d)", iv.name, iv.seen, ip, len(backends)))
			return
		}
	}
	iv.last = have
}

func (iv *invariant) has(ip netip.Addr) func() error {
	return func() error {
		iv.mu.Lock()
		defer iv.mu.Unlock()
		if !iv.last[ip] {
			return fmt.Errorf("%s has not seen backend %s yet", iv.name, ip)
		}
		return nil
	}
}

func (iv *invariant) verify(t *testing.T) {
	t.Helper()
	iv.mu.Lock()
	defer iv.mu.Unlock()
	for _, b := range iv.broken {
		t.Error(b)
	}
	if iv.seen == 0 {
		t.Errorf("%s checked no state", iv.name)
	}
}

// oldConsumer follows the single-value layout as consumers before the
// chunked layout do: a watch of the services prefix, DecodeService.
func oldConsumer(ctx context.Context, s kvstore.Store, owner clustermesh.ClusterConfig, key string, iv *invariant) {
	for ev := range s.Watch(ctx, clustermesh.KindPrefix(clustermesh.KindServices, owner.Name)) {
		if ev.Key != key {
			continue
		}
		switch ev.Kind {
		case kvstore.EventUpsert:
			svc, err := clustermesh.DecodeService(&owner, ev.Key, ev.Value)
			if err != nil {
				iv.check(nil, true)
				continue
			}
			iv.check(svc.Backends, false)
		case kvstore.EventDelete:
			iv.check(nil, true)
		}
	}
}

// TestRollingUpgradeKeepsBackends upgrades a cluster's publisher from the
// single-value layout to both layouts and then to the chunked one, while
// backends change, with an old-layout consumer and a new Watcher
// following it: at no state either consumer went through was the service
// missing a backend that stayed throughout.
func TestRollingUpgradeKeepsBackends(t *testing.T) {
	ctx := t.Context()
	store := memory.New()
	defer store.Close()
	east := cluster("east", 1)
	putGrant(t, store, east)
	putGrant(t, store, cluster("west", 2))

	svc := &clustermesh.Service{Cluster: east.Name, Namespace: "default", Name: "web", Global: true, Shared: true,
		Affinity: clustermesh.AffinityNone, Ports: []clustermesh.ServicePort{{Name: "http", Port: 80, Protocol: clustermesh.TCP}}}
	stable := map[netip.Addr]bool{}
	for i := range 250 {
		ip := netip.AddrFrom4([4]byte{10, 1, byte(i / 200), byte(i%200 + 1)})
		stable[ip] = true
		svc.Backends = append(svc.Backends, clustermesh.Backend{IP: ip, Ports: []clustermesh.BackendPort{{Name: "http", Port: 8080}}, Ready: true, Serving: true})
	}
	node := &clustermesh.Node{Name: "n0", Cluster: east.Name, IPs: []netip.Addr{netip.MustParseAddr("192.168.1.1")}}
	run := func(layout publish.ServiceLayout) (*publish.Publisher, func()) {
		p, err := publish.New(publish.Config{Cluster: east, LeaseTTL: 10 * time.Second, ServiceLayout: layout}, store, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		for kind, recs := range map[clustermesh.Kind][]publish.Record{clustermesh.KindNodes: {node}, clustermesh.KindIdentities: nil,
			clustermesh.KindIPs: nil, clustermesh.KindServices: {svc}} {
			if err := p.Replace(kind, recs); err != nil {
				t.Fatal(err)
			}
		}
		pctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- p.Run(pctx) }()
		return p, func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("publisher (%s): %v", layout, err)
			}
		}
	}
	// churn adds a backend that is not stable and waits for both
	// consumers (those given) to see it.
	extra := 0
	churn := func(p *publish.Publisher, ivs ...*invariant) {
		t.Helper()
		extra++
		ip := netip.AddrFrom4([4]byte{10, 1, 200, byte(extra)})
		svc.Backends = append(svc.Backends, clustermesh.Backend{IP: ip, Ports: []clustermesh.BackendPort{{Name: "http", Port: 8080}}, Ready: true})
		if len(svc.Backends) > 252 {
			svc.Backends = append(svc.Backends[:250], svc.Backends[251:]...) // the oldest extra goes
		}
		if err := p.Upsert(svc); err != nil {
			t.Fatal(err)
		}
		for _, iv := range ivs {
			testenv.Eventually(t, 20*time.Second, iv.has(ip))
		}
	}

	// Before: an old publisher and an old consumer.
	oldPub, stopOld := run(publish.LayoutSingle)
	oldIV := &invariant{name: "old-layout consumer", stable: stable}
	octx, stopOldConsumer := context.WithCancel(ctx)
	oldDone := make(chan struct{})
	go func() { defer close(oldDone); oldConsumer(octx, store, east, svc.Key(), oldIV) }()
	testenv.Eventually(t, 20*time.Second, oldIV.has(svc.Backends[0].IP))

	// A new consumer joins the mesh.
	newIV := &invariant{name: "new Watcher", stable: stable}
	w := runWatcher(t, ctx, store, "west")
	changes := w.Subscribe(ctx)
	go func() {
		for ch := range changes {
			if ch.Cluster != east.Name || ch.Kind != clustermesh.KindServices {
				continue
			}
			rec, _ := ch.Record.(clustermesh.Service)
			newIV.check(rec.Backends, ch.Type == remote.Delete)
		}
	}()
	churn(oldPub, oldIV, newIV)

	// The operator is upgraded: both layouts, then churn.
	stopOld()
	both, stopBoth := run(publish.LayoutBoth)
	testenv.Eventually(t, 20*time.Second, func() error {
		for _, st := range w.Status() {
			if st.Name == east.Name && st.Entries[clustermesh.KindServicesV2] == 4 {
				return nil
			}
		}
		return fmt.Errorf("east's chunked layout (header and 3 chunks) not seen yet: %+v", w.Status())
	})
	for range 3 {
		churn(both, oldIV, newIV)
	}

	// Every consumer is upgraded: the old one leaves, the publisher drops
	// the single-value layout, backends keep changing.
	stopOldConsumer()
	<-oldDone
	stopBoth()
	chunked, stopChunked := run(publish.LayoutChunked)
	defer stopChunked()
	testenv.Eventually(t, 20*time.Second, func() error {
		if _, err := store.Get(ctx, svc.Key()); err == nil {
			return fmt.Errorf("single-value key %s still there", svc.Key())
		}
		return nil
	})
	for range 3 {
		churn(chunked, newIV)
	}
	oldIV.verify(t)
	newIV.verify(t)
}
