package k8s

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"
)

func newTestController(t *testing.T, interval time.Duration) *controller[string] {
	t.Helper()
	c, err := newController("test", interval, func(context.Context, string) error { return nil }, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.q.ShutDown)
	return c
}

// TestAddSyncsALoneEventAtOnce checks the controller's rate: an event for
// a key not synced within the interval is queued at once; another event
// for a key whose sync started within it waits (the interval here is an
// hour, so "waits" cannot turn into "queued" during the test), and other
// keys are not held back by it.
func TestAddSyncsALoneEventAtOnce(t *testing.T) {
	c := newTestController(t, time.Hour)
	c.add("a")
	if n := c.q.Len(); n != 1 {
		t.Fatalf("queue holds %d keys after a lone event, want 1 (queued at once)", n)
	}
	k, _ := c.q.Get()
	c.markStarted(k, time.Now())
	c.q.Done(k)
	c.add("a")
	if n := c.q.Len(); n != 0 {
		t.Fatalf("queue holds %d keys after a second event within the interval, want 0 (delayed)", n)
	}
	c.add("b")
	if n := c.q.Len(); n != 1 {
		t.Fatalf("queue holds %d keys after an event for another key, want 1", n)
	}
}

// TestMarkStartedPrunes checks that the sync start times of keys synced
// longer than the interval ago are dropped as the map grows, so deleted
// objects do not accumulate.
func TestMarkStartedPrunes(t *testing.T) {
	c := newTestController(t, time.Minute)
	old := time.Now().Add(-time.Hour)
	for i := range minPruneSize - 1 {
		c.markStarted(fmt.Sprint("old-", i), old)
	}
	c.markStarted("new", time.Now())
	if n := len(c.started); n != 1 {
		t.Fatalf("%d start times kept, want 1 (only the key synced within the interval)", n)
	}
	c.add("old-1")
	if n := c.q.Len(); n != 1 {
		t.Fatalf("queue holds %d keys after an event for a pruned key, want 1", n)
	}
}
