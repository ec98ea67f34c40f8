package publish_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/publish"
	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/kvstore/memory"
)

func cluster(name string, id int, pod string) clustermesh.ClusterConfig {
	return clustermesh.ClusterConfig{
		Name:     clustermesh.ClusterName(name),
		ID:       clustermesh.ClusterID(id),
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix(pod)},
	}
}

func nodes(c clustermesh.ClusterConfig, n int, zone string) []publish.Record {
	var out []publish.Record
	for i := range n {
		out = append(out, &clustermesh.Node{
			Name: fmt.Sprintf("node-%d", i), Cluster: c.Name, Zone: zone,
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{192, 168, byte(c.ID), byte(i + 1)})},
		})
	}
	return out
}

// recorder counts the events a watch on the whole mesh sees.
type recorder struct {
	events  chan kvstore.Event
	markers int // settle's marker nodes so far
}

func record(ctx context.Context, t *testing.T, s kvstore.Store) *recorder {
	r := &recorder{events: make(chan kvstore.Event, 10000)}
	ch := s.Watch(ctx, clustermesh.Root)
	for ev := range ch {
		if ev.Kind == kvstore.EventListDone {
			break
		}
	}
	go func() {
		for ev := range ch {
			r.events <- ev
		}
	}()
	return r
}

// settle returns the events the store saw for everything p was asked
// before the call, in order, leaving out its own marker events.
//
// The sync point is a later marker event: settle upserts a marker node and
// waits for its write, then a second one. p plans the second only after
// the pass that wrote the first has begun, so it writes it in a later pass
// than anything asked before settle, and passes do not overlap: every
// earlier write is in the stream before the second marker.
func (r *recorder) settle(t *testing.T, p *publish.Publisher, c clustermesh.ClusterConfig) []kvstore.Event {
	t.Helper()
	var out []kvstore.Event
	for range 2 {
		r.markers++
		m := &clustermesh.Node{Name: fmt.Sprintf("%s%d", settlePrefix, r.markers), Cluster: c.Name,
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{192, 168, 250, byte(r.markers)})}}
		if err := p.Upsert(m); err != nil {
			t.Fatal(err)
		}
		timeout := time.After(10 * time.Second)
	wait:
		for {
			select {
			case ev := <-r.events:
				if ev.Key == m.Key() && ev.Kind == kvstore.EventUpsert {
					break wait
				}
				if !strings.Contains(ev.Key, "/"+settlePrefix) {
					out = append(out, ev)
				}
			case <-timeout:
				t.Fatalf("marker %s not written after 10s; events so far %v", m.Key(), out)
			}
		}
	}
	return out
}

// settlePrefix names settle's marker nodes.
const settlePrefix = "settle-"

func start(t *testing.T, ctx context.Context, p *publish.Publisher) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
}

func synced(p *publish.Publisher, kinds ...clustermesh.Kind) func() error {
	return func() error {
		st := p.Status()
		for _, k := range kinds {
			if !st.Synced[k] {
				return fmt.Errorf("kind %s not synced: %+v", k, st)
			}
		}
		return nil
	}
}

func TestPublishWritesOnlyWhatChanged(t *testing.T) {
	ctx := t.Context()
	store := memory.New()
	defer store.Close()
	east := cluster("east", 1, "10.1.0.0/16")
	rec := record(ctx, t, store)

	p, err := publish.New(publish.Config{Cluster: east, LeaseTTL: 5 * time.Second}, store, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Replace(clustermesh.KindNodes, nodes(east, 3, "z1")); err != nil {
		t.Fatal(err)
	}
	stop := start(t, ctx, p)
	defer stop()
	testenv.Eventually(t, 5*time.Second, synced(p, clustermesh.KindNodes))

	evs := rec.settle(t, p, east)
	// cluster config + 3 nodes + 1 marker
	if len(evs) != 5 {
		t.Fatalf("first publish: got %d events, want 5: %v", len(evs), evs)
	}
	marker := evs[len(evs)-1]
	if marker.Key != clustermesh.SyncedKey("east", clustermesh.KindNodes) {
		t.Fatalf("last write is %s, want the sync marker after every node", marker.Key)
	}

	// Same state again: nothing written.
	if err := p.Replace(clustermesh.KindNodes, nodes(east, 3, "z1")); err != nil {
		t.Fatal(err)
	}
	if evs := rec.settle(t, p, east); len(evs) != 0 {
		t.Fatalf("unchanged Replace wrote %d keys: %v", len(evs), evs)
	}

	// One node changes, one goes away.
	ns := nodes(east, 2, "z1")
	ns[1].(*clustermesh.Node).Zone = "z2"
	if err := p.Replace(clustermesh.KindNodes, ns); err != nil {
		t.Fatal(err)
	}
	evs = rec.settle(t, p, east)
	var puts, dels []string
	for _, ev := range evs {
		switch ev.Kind {
		case kvstore.EventUpsert:
			puts = append(puts, ev.Key)
		case kvstore.EventDelete:
			dels = append(dels, ev.Key)
		}
	}
	if len(puts) != 1 || !strings.HasSuffix(puts[0], "/node-1") || len(dels) != 1 || !strings.HasSuffix(dels[0], "/node-2") {
		t.Fatalf("got puts %v deletes %v, want put node-1 and delete node-2", puts, dels)
	}
}

func TestPublishRefusesKeysOutsideItsPrefix(t *testing.T) {
	store := memory.New()
	defer store.Close()
	p, err := publish.New(publish.Config{Cluster: cluster("east", 1, "10.1.0.0/16")}, store, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = p.Upsert(&clustermesh.Node{Name: "n", Cluster: "west"})
	if err == nil || !strings.Contains(err.Error(), "outside this cluster's prefix") {
		t.Fatalf("Upsert of west's node by east: err = %v, want refusal naming the prefix", err)
	}
	err = p.Replace(clustermesh.KindServices, []publish.Record{&clustermesh.Node{Name: "n", Cluster: "east"}})
	if err == nil {
		t.Fatal("Replace accepted a node as a service")
	}
}

func TestRestartAdoptsLeaseAndWritesNothing(t *testing.T) {
	ctx := t.Context()
	store := memory.New()
	defer store.Close()
	east := cluster("east", 1, "10.1.0.0/16")
	cfg := publish.Config{Cluster: east, LeaseTTL: 5 * time.Second}

	p1, _ := publish.New(cfg, store, nil, nil)
	_ = p1.Replace(clustermesh.KindNodes, nodes(east, 5, "z1"))
	_ = p1.Replace(clustermesh.KindServices, nil)
	stop := start(t, ctx, p1)
	testenv.Eventually(t, 5*time.Second, synced(p1, clustermesh.KindNodes, clustermesh.KindServices))
	stop()

	rec := record(ctx, t, store)
	p2, _ := publish.New(cfg, store, nil, nil)
	_ = p2.Replace(clustermesh.KindNodes, nodes(east, 4, "z1"))
	stop = start(t, ctx, p2)
	defer stop()
	testenv.Eventually(t, 5*time.Second, synced(p2, clustermesh.KindNodes))
	evs := rec.settle(t, p2, east)
	if len(evs) != 1 || evs[0].Kind != kvstore.EventDelete || !strings.HasSuffix(evs[0].Key, "/node-4") {
		t.Fatalf("restart with one node fewer: got %v, want only the delete of node-4", evs)
	}
	// Services were not given to p2 yet: the old (empty) set stays, and
	// nothing of that kind is touched until Replace says what is desired.
	if p2.Status().Synced[clustermesh.KindServices] {
		t.Fatal("services marked synced before any desired set was given")
	}
}

func TestLostLeaseIsReplacedAndEverythingRewritten(t *testing.T) {
	ctx := t.Context()
	store := memory.New()
	defer store.Close()
	east := cluster("east", 1, "10.1.0.0/16")
	p, _ := publish.New(publish.Config{Cluster: east, LeaseTTL: 3 * time.Second}, store, nil, nil)
	_ = p.Replace(clustermesh.KindNodes, nodes(east, 2, "z1"))
	stop := start(t, ctx, p)
	defer stop()
	testenv.Eventually(t, 5*time.Second, synced(p, clustermesh.KindNodes))

	kv, err := store.Get(ctx, clustermesh.ClusterKey("east"))
	if err != nil {
		t.Fatal(err)
	}
	if err := store.RevokeLease(ctx, kv.Lease); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		kvs, _, err := store.List(ctx, clustermesh.Root)
		if err != nil {
			return err
		}
		if len(kvs) != 4 { // config, 2 nodes, marker
			return fmt.Errorf("%d keys after lease loss, want 4", len(kvs))
		}
		for _, kv2 := range kvs {
			if kv2.Lease == kv.Lease || kv2.Lease == 0 {
				return fmt.Errorf("%s still on the old lease", kv2.Key)
			}
		}
		return nil
	})
}

func TestRegistrationConflictsNameBothClusters(t *testing.T) {
	ctx := t.Context()
	store := memory.New()
	defer store.Close()
	a, _ := publish.New(publish.Config{Cluster: cluster("east", 1, "10.1.0.0/16")}, store, nil, nil)
	stop := start(t, ctx, a)
	defer stop()
	testenv.Eventually(t, 5*time.Second, func() error {
		if !a.Status().Registered {
			return errors.New("east not registered")
		}
		return nil
	})

	cases := []struct {
		cfg  clustermesh.ClusterConfig
		want []string
	}{
		{cluster("west", 2, "10.1.128.0/17"), []string{`"west"`, `"east"`, "10.1.128.0/17", "10.1.0.0/16"}},
		{cluster("west", 1, "10.2.0.0/16"), []string{`"west"`, `"east"`, "cluster ID 1 taken"}},
		{cluster("east", 7, "10.3.0.0/16"), []string{`"east"`, "name taken"}},
	}
	for _, tc := range cases {
		b, _ := publish.New(publish.Config{Cluster: tc.cfg}, store, nil, nil)
		err := b.Run(ctx)
		var re *clustermesh.RegistrationError
		if !errors.As(err, &re) {
			t.Fatalf("%s/%d: Run = %v, want a RegistrationError", tc.cfg.Name, tc.cfg.ID, err)
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s/%d: error %q does not name %s", tc.cfg.Name, tc.cfg.ID, err, w)
			}
		}
	}
}

// racingStore lets a competitor register between a publisher's check and
// its write, the window two clusters joining at once share.
type racingStore struct {
	kvstore.Store
	key   string
	race  func()
	raced bool
}

func (s *racingStore) Put(ctx context.Context, key string, value []byte, lease kvstore.LeaseID) error {
	if key == s.key && !s.raced {
		s.raced = true
		s.race()
	}
	return s.Store.Put(ctx, key, value, lease)
}

func TestSimultaneousOverlappingRegistrationsLeaveOne(t *testing.T) {
	ctx := t.Context()
	mem := memory.New()
	defer mem.Close()
	west := cluster("west", 2, "10.1.128.0/17")
	store := &racingStore{Store: mem, key: clustermesh.ClusterKey("east"), race: func() {
		val, _ := json.Marshal(&west)
		if err := mem.Put(ctx, west.Key(), val, 0); err != nil {
			t.Error(err)
		}
	}}
	east, _ := publish.New(publish.Config{Cluster: cluster("east", 1, "10.1.0.0/16")}, store, nil, nil)
	err := east.Run(ctx)
	var re *clustermesh.RegistrationError
	if !errors.As(err, &re) || re.Other != "west" || re.Reason != clustermesh.ReasonCIDROverlap {
		t.Fatalf("Run = %v, want east to yield to west, which registered first", err)
	}
	if _, err := mem.Get(ctx, clustermesh.ClusterKey("east")); !errors.Is(err, kvstore.ErrNotFound) {
		t.Fatalf("east's config still registered after losing the race: %v", err)
	}
	if _, err := mem.Get(ctx, west.Key()); err != nil {
		t.Fatalf("west's registration was touched: %v", err)
	}
}

// faultyStore fails the first Put of key.
type faultyStore struct {
	kvstore.Store
	key    string
	mu     sync.Mutex
	failed int
}

func (s *faultyStore) Put(ctx context.Context, key string, val []byte, lease kvstore.LeaseID) error {
	s.mu.Lock()
	fail := key == s.key && s.failed == 0
	if fail {
		s.failed++
	}
	s.mu.Unlock()
	if fail {
		return errors.New("injected put fault")
	}
	return s.Store.Put(ctx, key, val, lease)
}

// TestFailedWriteIsRetriedWithoutAChange checks that a write that fails is
// retried by the publish loop's backoff, with no further desired change,
// and that the loop reports the failure in its status and metrics.
func TestFailedWriteIsRetriedWithoutAChange(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	mem := memory.New()
	defer mem.Close()
	c := cluster("east", 1, "10.1.0.0/16")
	recs := nodes(c, 1, "z")
	store := &faultyStore{Store: mem, key: recs[0].Key()}
	reg := prometheus.NewRegistry()
	p, err := publish.New(publish.Config{Cluster: c}, store, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Replace(clustermesh.KindNodes, recs); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	testenv.Eventually(t, 10*time.Second, func() error {
		if _, err := mem.Get(ctx, recs[0].Key()); err != nil {
			return fmt.Errorf("node not written after the fault: %w; loop %+v", err, p.LoopStatus())
		}
		return nil
	})
	store.mu.Lock()
	failed := store.failed
	store.mu.Unlock()
	if failed != 1 {
		t.Fatalf("%d faults injected, want 1", failed)
	}
	if st := p.Status(); st.Failures != 1 || st.LastError != "" {
		t.Errorf("publish status %+v: want one failure, over", st)
	}
	if got := counterOf(t, reg, "braid_reconcile_failures_total", "publish"); got != 1 {
		t.Errorf(`braid_reconcile_failures_total{loop="publish"} = %v, want 1`, got)
	}
	if st := p.LoopStatus(); st.Rounds < 2 || st.LastFailure.IsZero() {
		t.Errorf("loop status %+v: want a failed round and its retry", st)
	}
}

// counterOf returns the value of the counter name{loop=loop} in reg.
func counterOf(t *testing.T, reg *prometheus.Registry, name, loop string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if mf.GetName() == name && len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == loop {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no %s{loop=%q}", name, loop)
	return 0
}

// slowBroker answers every lease renewal only after delay, as a broker
// does while it re-authenticates every password client after its users
// changed; a renewal whose context ends first fails with the context's
// error and renews nothing.
type slowBroker struct {
	kvstore.Store
	delay   time.Duration
	renewed chan struct{} // one value per renewal that succeeded
}

func (s *slowBroker) KeepAlive(ctx context.Context, id kvstore.LeaseID) error {
	t := time.NewTimer(s.delay)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return fmt.Errorf("keep lease %x alive: %w", id, ctx.Err())
	case <-t.C:
	}
	if err := s.Store.KeepAlive(ctx, id); err != nil {
		return err
	}
	select {
	case s.renewed <- struct{}{}:
	default:
	}
	return nil
}

// TestSlowRenewalKeepsTheLease checks that renewals slower than a third
// of the TTL (the renewal interval) but well within it keep the lease: the
// publisher waits for them instead of giving up and starting over until
// the lease expires.
func TestSlowRenewalKeepsTheLease(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	mem := memory.New()
	defer mem.Close()
	const ttl = 4 * time.Second
	store := &slowBroker{Store: mem, delay: ttl * 35 / 100, renewed: make(chan struct{}, 1)}
	east := cluster("east", 1, "10.1.0.0/16")
	p, err := publish.New(publish.Config{Cluster: east, LeaseTTL: ttl}, store, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = p.Replace(clustermesh.KindNodes, nodes(east, 1, "z1"))
	stop := start(t, ctx, p)
	defer stop()
	testenv.Eventually(t, 10*time.Second, synced(p, clustermesh.KindNodes))
	first, err := mem.Get(ctx, clustermesh.ClusterKey("east"))
	if err != nil {
		t.Fatal(err)
	}
	// Three slow renewals in a row outlast the first lease's TTL.
	for i := range 3 {
		select {
		case <-store.renewed:
		case <-time.After(30 * time.Second):
			t.Fatalf("renewal %d never succeeded; publish status %+v", i+1, p.Status())
		}
	}
	kv, err := mem.Get(ctx, clustermesh.ClusterKey("east"))
	if err != nil {
		t.Fatalf("cluster config gone after slow renewals: %v", err)
	}
	if kv.Lease != first.Lease {
		t.Errorf("lease replaced (%x, was %x): slow renewals lost it", kv.Lease, first.Lease)
	}
	if st := p.Status(); st.Failures != 0 {
		t.Errorf("publish status %+v: want no failure", st)
	}
	if st := p.LoopStatus(); st.ConsecutiveFailures != 0 || !st.LastFailure.IsZero() {
		t.Errorf("publish loop status %+v: want no failed round", st)
	}
}
