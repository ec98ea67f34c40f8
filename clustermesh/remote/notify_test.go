package remote_test

import (
	"context"
	"testing"
	"time"

	"github.com/braidmesh/braid/kvstore/memory"
)

// TestNotifyWakesAConsumerThatReadsSnapshots checks that a consumer woken
// only by Notify (a capacity-one wake-up, as reconcile.Loop's Trigger)
// and reading nothing but Snapshot sees every change: Snapshot includes a
// change when its notification fires.
func TestNotifyWakesAConsumerThatReadsSnapshots(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	s := memory.New()
	defer s.Close()
	w := runWatcher(t, ctx, s, "a")
	wake := make(chan struct{}, 1)
	w.Notify(ctx, func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	})
	publishCluster(t, ctx, s, cluster("b", 2), 4, 10*time.Second)
	synced := syncedWith(w, 4, "b")
	timeout := time.After(10 * time.Second)
	for {
		select {
		case <-wake:
		case <-timeout:
			t.Fatalf("no notification showed cluster b synced: %v", synced())
		}
		if synced() == nil {
			return
		}
	}
}
