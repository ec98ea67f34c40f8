package remote

import (
	"context"
	"net/netip"
	"testing"

	"github.com/braidmesh/braid/clustermesh"
)

// TestRestartMarksStaleAndDeletesOnlyWhatIsGone drives one kind's watch
// state machine through a re-list, as after a compaction.
func TestRestartMarksStaleAndDeletesOnlyWhatIsGone(t *testing.T) {
	w, _ := New(Config{Self: "a"}, nil, nil, nil)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	changes := w.Subscribe(ctx)
	c := newCluster(ctx, w, clustermesh.ClusterConfig{Name: "b", ID: 2})
	k1 := clustermesh.KindPrefix(clustermesh.KindNodes, "b") + "n1"
	k2 := clustermesh.KindPrefix(clustermesh.KindNodes, "b") + "n2"
	node := func(name string) clustermesh.Node {
		return clustermesh.Node{Name: name, Cluster: "b", IPs: []netip.Addr{netip.MustParseAddr("192.0.2.1")}}
	}
	c.upsert(clustermesh.KindNodes, k1, 1, node("n1"))
	c.upsert(clustermesh.KindNodes, k2, 2, node("n2"))
	c.listDone(clustermesh.KindNodes)
	for range 2 {
		<-changes
	}

	// Restart: both marked stale; only k1 is listed again (same value).
	c.tables[clustermesh.KindNodes].markStale()
	c.upsert(clustermesh.KindNodes, k1, 1, node("n1"))
	c.listDone(clustermesh.KindNodes)

	ch := <-changes
	if ch.Type != Delete || ch.Key != k2 {
		t.Fatalf("after re-list: %v %s, want only the delete of k2", ch.Type, ch.Key)
	}
	select {
	case ch := <-changes:
		t.Fatalf("unexpected change %v %s", ch.Type, ch.Key)
	default:
	}
	if n := len(c.snapshot().Nodes); n != 1 {
		t.Fatalf("%d nodes after re-list, want 1", n)
	}
}
