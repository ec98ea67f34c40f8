package remote_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/remote"
	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/kvstore/memory"
)

// meshFeed is a store whose two mesh watches (cluster configs, grants)
// carry what the test sends, and whose reads of the grants hang while the
// broker is down, as an etcd read does that was in flight when the broker
// went away: it waits for the broker's return or its context.
type meshFeed struct {
	kvstore.Store
	configs, grants chan kvstore.Event
	down            atomic.Bool
	grantReads      atomic.Int32
}

func (s *meshFeed) Watch(ctx context.Context, prefix string) <-chan kvstore.Event {
	switch prefix {
	case clustermesh.ClustersPrefix:
		return s.configs
	case clustermesh.GrantsPrefix:
		return s.grants
	}
	return s.Store.Watch(ctx, prefix)
}

func (s *meshFeed) List(ctx context.Context, prefix string) ([]kvstore.KeyValue, int64, error) {
	if prefix == clustermesh.GrantsPrefix {
		s.grantReads.Add(1)
		if s.down.Load() {
			<-ctx.Done()
			return nil, 0, fmt.Errorf("list %s: %w", prefix, ctx.Err())
		}
	}
	return s.Store.List(ctx, prefix)
}

// TestBrokerLostDuringAGrantReadIsReported: a grant change arrives, the
// broker goes away while the watcher reads the grants, and the config
// watch then fails. The read must give up within StaleAfter so that the
// failure is seen (an unbounded read held the watcher's loop, and the
// agent stayed healthy for as long as the broker was away). Progress
// notifications re-read the grants only after a failed read.
func TestBrokerLostDuringAGrantReadIsReported(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	// The grant feed is unbuffered: a send returns once the loop took the
	// event, so everything the previous grant event did is done.
	store := &meshFeed{Store: mem, configs: make(chan kvstore.Event, 16), grants: make(chan kvstore.Event)}
	w, err := remote.New(remote.Config{Self: "a", StaleAfter: 500 * time.Millisecond}, store, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		close(store.configs)
		close(store.grants)
		if err := <-done; err != nil {
			t.Errorf("watcher: %v", err)
		}
	}()
	sendGrant := func(ev kvstore.Event) {
		t.Helper()
		select {
		case store.grants <- ev:
		case <-time.After(30 * time.Second):
			t.Fatalf("watcher took no grant event for 30 s (sending %v): its loop is stuck", ev.Kind)
		}
	}

	store.configs <- kvstore.Event{Kind: kvstore.EventListDone, Revision: 1}
	sendGrant(kvstore.Event{Kind: kvstore.EventListDone, Revision: 1})
	sendGrant(kvstore.Event{Kind: kvstore.EventProgress, Revision: 1})
	sendGrant(kvstore.Event{Kind: kvstore.EventProgress, Revision: 1})
	reads := store.grantReads.Load()
	if reads != 1 {
		t.Fatalf("%d reads of the grants after the list and a progress notification, want 1 (the list's)", reads)
	}

	// A grant changes; the broker goes away during the read it causes;
	// then the config watch fails.
	store.down.Store(true)
	sendGrant(kvstore.Event{Kind: kvstore.EventUpsert, Key: clustermesh.GrantsPrefix + "b", Value: []byte("{}"), Revision: 2})
	unreachable := errors.New("etcd: connection refused")
	store.configs <- kvstore.Event{Kind: kvstore.EventError, Err: unreachable}
	testenv.Eventually(t, 30*time.Second, func() error {
		b := w.Broker()
		if b.FailingSince.IsZero() || b.LastError != unreachable.Error() {
			return fmt.Errorf("broker status %+v: want failing with the config watch's error", b)
		}
		return nil
	})

	// The broker is back: the next progress notification reads the
	// grants again, and the failure clears; later ones read nothing.
	store.down.Store(false)
	reads = store.grantReads.Load()
	sendGrant(kvstore.Event{Kind: kvstore.EventProgress, Revision: 3})
	sendGrant(kvstore.Event{Kind: kvstore.EventProgress, Revision: 3})
	if got := store.grantReads.Load(); got != reads+1 {
		t.Errorf("%d reads of the grants after the broker's return, want 1", got-reads)
	}
	if b := w.Broker(); !b.FailingSince.IsZero() || b.LastError != "" {
		t.Errorf("broker status %+v after its return: want no failure", b)
	}
	sendGrant(kvstore.Event{Kind: kvstore.EventProgress, Revision: 4})
	sendGrant(kvstore.Event{Kind: kvstore.EventProgress, Revision: 4})
	if got := store.grantReads.Load(); got != reads+1 {
		t.Errorf("progress notifications read the grants again (%d reads)", got-reads-1)
	}
}
