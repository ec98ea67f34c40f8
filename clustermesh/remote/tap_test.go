package remote_test

import (
	"context"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/remote"
	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/kvstore/memory"
)

// TestEntriesOrder checks the order Entries promises a relay: a cluster's
// grant, then its config, before its entries, a kind's marker after its entries,
// a mesh list-done, and the config's delete when the cluster leaves, after
// everything else of it.
func TestEntriesOrder(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	s := memory.New()
	defer s.Close()
	b := cluster("b", 2)
	publishCluster(t, ctx, s, b, 3, 30*time.Second)
	w, err := remote.New(remote.Config{}, s, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	entries := w.Entries(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = w.Run(ctx)
	}()
	defer func() { cancel(); <-done }()

	next := func() kvstore.Event {
		t.Helper()
		select {
		case ev := <-entries:
			return ev
		case <-time.After(30 * time.Second):
			t.Fatal("no entry within 30s")
		}
		return kvstore.Event{}
	}
	granted, announced, listDone := false, false, false
	entriesOf := map[clustermesh.Kind]int{}
	marked := map[clustermesh.Kind]bool{}
	for len(marked) < len(clustermesh.Kinds) || !listDone {
		ev := next()
		if ev.Kind == kvstore.EventListDone {
			if ev.Key == "" {
				listDone = true
			} else if ev.Key != clustermesh.ClusterKey("b") {
				// The markers' list: of b, with the kinds that had a
				// marker then (the publisher may not have written them yet).
				t.Fatalf("markers listed under %s, want b's config key", ev.Key)
			}
			continue
		}
		pk, err := clustermesh.ParseKey(ev.Key)
		if err != nil {
			t.Fatalf("entry %s: %v", ev.Key, err)
		}
		switch {
		case pk.Config:
			if ev.Kind != kvstore.EventUpsert {
				t.Fatalf("config %s: %v before the cluster left", ev.Key, ev.Kind)
			}
			if !granted {
				t.Fatalf("config %s before the grant: a mirror's consumer would see a cluster without a grant", ev.Key)
			}
			announced = true
		case pk.Grant:
			granted = true
		case pk.Synced:
			kind := clustermesh.Kind(pk.Name)
			if want := 3; kind != clustermesh.KindServicesV2 && entriesOf[kind] != want {
				t.Fatalf("marker of %s after %d entries, want %d", kind, entriesOf[kind], want)
			}
			marked[kind] = true
		default:
			if !announced {
				t.Fatalf("entry %s before the config", ev.Key)
			}
			if marked[pk.Kind] {
				t.Fatalf("initial entry %s after its kind's marker", ev.Key)
			}
			entriesOf[pk.Kind]++
		}
	}
	// b's grant goes: its config's delete ends its stream.
	if err := s.Delete(ctx, clustermesh.GrantKey("b")); err != nil {
		t.Fatal(err)
	}
	for {
		ev := next()
		if ev.Kind == kvstore.EventDelete && ev.Key == clustermesh.ClusterKey("b") {
			break
		}
		if ev.Kind == kvstore.EventDelete {
			t.Fatalf("delete of %s before the cluster's: the cluster's lease takes its keys", ev.Key)
		}
	}
}
