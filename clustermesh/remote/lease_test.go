package remote_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh/remote"
	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/kvstore/memory"
)

// TestLeaseRemainingCountsDown: a consumer that reads leases shows how
// long a cluster's lease has left; once its operator stops renewing it,
// the time left falls until the cluster leaves.
func TestLeaseRemainingCountsDown(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	s := memory.New()
	defer s.Close()
	const ttl = 3 * time.Second
	pctx, stopB := context.WithCancel(ctx)
	publishCluster(t, pctx, s, cluster("b", 2), 1, ttl)
	w, err := remote.New(remote.Config{Self: "a", LeaseCheckInterval: 20 * time.Millisecond}, s, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	defer func() { cancel(); <-done }()
	testenv.Eventually(t, 10*time.Second, syncedWith(w, 1, "b"))

	left := func() (float64, error) {
		for _, st := range w.Status() {
			if st.Name == "b" && !st.Gone {
				if st.LeaseRemaining == nil {
					return 0, fmt.Errorf("b's lease not read yet")
				}
				return *st.LeaseRemaining, nil
			}
		}
		return 0, fmt.Errorf("b not watched")
	}
	var first float64
	testenv.Eventually(t, 10*time.Second, func() (err error) { first, err = left(); return err })
	if first <= 0 || first > ttl.Seconds() {
		t.Fatalf("lease left %vs, want in (0, %v]", first, ttl.Seconds())
	}

	stopB() // nothing renews the lease any more
	before, err := left()
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		now, err := left()
		if err != nil {
			return err
		}
		if now >= before {
			return fmt.Errorf("lease left %vs, not below %vs yet", now, before)
		}
		return nil
	})
	testenv.Eventually(t, 10*time.Second, func() error {
		for _, st := range w.Status() {
			if st.Name == "b" && st.Gone {
				return nil
			}
		}
		return fmt.Errorf("b has not left")
	})
}
