package agent

import (
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/kvstore/memory"
)

// The node status is written under the cluster's nodestatus prefix, bound
// to a lease, in a form the broker's page accepts; the lease is reused,
// and withdrawing revokes it.
func TestNodeStatusIsPublishedLeaseBound(t *testing.T) {
	store := memory.New()
	a, err := New(Config{Cluster: "east", Node: "n1"}, store, nil)
	if err != nil {
		t.Fatal(err)
	}
	a.setProblem("tunnel", errString("handshake with west/n1 failing"))
	ctx := t.Context()
	p := a.newNodeStatusPublisher(store, 10*time.Second)
	for range 2 {
		if err := p.round(ctx, true); err != nil {
			t.Fatal(err)
		}
	}
	key := clustermesh.NodeStatusKey("east", "n1")
	kv, err := store.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if kv.Lease == 0 || kv.Lease != p.lease {
		t.Errorf("status bound to lease %d, want the publisher's lease %d", kv.Lease, p.lease)
	}
	if ttl, err := store.LeaseTTL(ctx, kv.Lease); err != nil || ttl > 30*time.Second || ttl < 20*time.Second {
		t.Errorf("lease TTL %v (%v), want three intervals (30s)", ttl, err)
	}
	s, err := clustermesh.DecodeNodeStatus(&clustermesh.ClusterConfig{Name: "east", ID: 1}, key, kv.Value)
	if err != nil {
		t.Fatalf("published status does not validate: %v", err)
	}
	if s.Node != "n1" || len(s.Problems) != 1 || s.Problems[0] != "tunnel: handshake with west/n1 failing" {
		t.Errorf("status %+v", s)
	}
	// Its watcher never ran: it knows no cluster yet, which is not
	// "every remote synced".
	if s.Synced {
		t.Errorf("status %+v: synced before the mesh was listed", s)
	}
	p.withdraw(ctx)
	if _, err := store.Get(ctx, key); err == nil {
		t.Error("status survives its withdrawal")
	}
}

// A round the mesh loop triggers writes only when the status says
// something new; a resync round always writes (tunnel counters, lease).
func TestNodeStatusTriggeredRoundWritesOnlyNews(t *testing.T) {
	store := memory.New()
	a, err := New(Config{Cluster: "east", Node: "n1"}, store, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	p := a.newNodeStatusPublisher(store, 10*time.Second)
	key := clustermesh.NodeStatusKey("east", "n1")
	rev := func() int64 {
		t.Helper()
		kv, err := store.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		return kv.ModRevision
	}
	if err := p.round(ctx, false); err != nil { // the loop's first round
		t.Fatal(err)
	}
	first := rev()
	if err := p.round(ctx, false); err != nil {
		t.Fatal(err)
	}
	if r := rev(); r != first {
		t.Errorf("a triggered round with nothing new wrote the status (revision %d, was %d)", r, first)
	}
	a.setProblem("tunnel", errString("handshake with west/n1 failing"))
	if err := p.round(ctx, false); err != nil {
		t.Fatal(err)
	}
	second := rev()
	if second == first {
		t.Error("a triggered round with a new problem did not write the status")
	}
	if err := p.round(ctx, true); err != nil {
		t.Fatal(err)
	}
	if rev() == second {
		t.Error("a resync round did not write the status")
	}
}

type errString string

func (e errString) Error() string { return string(e) }
