package agent

import (
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/kvstore/memory"
)

// The node status is written under the cluster's nodestatus prefix, bound
// to a lease, in a form the broker's page accepts; the lease is reused.
func TestNodeStatusIsPublishedLeaseBound(t *testing.T) {
	store := memory.New()
	a, err := New(Config{Cluster: "east", Node: "n1"}, store, nil)
	if err != nil {
		t.Fatal(err)
	}
	a.setProblem("tunnel", errString("handshake with west/n1 failing"))
	ctx := t.Context()
	key := clustermesh.NodeStatusKey("east", "n1")
	var lease kvstore.LeaseID
	for range 2 {
		if err := a.writeNodeStatus(ctx, store, key, &lease, 30*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	kv, err := store.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if kv.Lease == 0 || kv.Lease != lease {
		t.Errorf("status bound to lease %d, want the agent's lease %d", kv.Lease, lease)
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
	if err := store.RevokeLease(ctx, lease); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Get(ctx, key); err == nil {
		t.Error("status survives its lease")
	}
}

type errString string

func (e errString) Error() string { return string(e) }
