package kvstoretest

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/kvstore"
)

func testLeaseExpiry(t *testing.T, h *harness) {
	ctx := testCtx(t)
	id, err := h.Store.GrantLease(ctx, h.LeaseTTL)
	if err != nil {
		t.Fatalf("GrantLease: %v", err)
	}
	k := h.key("leased")
	mustPut(t, h.Store, k, "v", id)
	mustPut(t, h.Store, h.key("plain"), "v", 0)
	kv, err := h.Store.Get(ctx, k)
	if err != nil || kv.Lease != id {
		t.Fatalf("Get = %+v, %v; want lease %d", kv, err, id)
	}
	start := time.Now()
	testenv.Eventually(t, timeout, func() error {
		_, err := h.Store.Get(ctx, k)
		if errors.Is(err, kvstore.ErrNotFound) {
			return nil
		}
		return fmt.Errorf("get: error = %v, want ErrNotFound", err)
	})
	if d := time.Since(start); d < h.LeaseTTL/2 {
		t.Errorf("leased key gone after %v, TTL %v", d, h.LeaseTTL)
	}
	if _, err := h.Store.Get(ctx, h.key("plain")); err != nil {
		t.Errorf("key without lease: %v", err)
	}
	if err := h.Store.Put(ctx, k, []byte("v"), id); !errors.Is(err, kvstore.ErrLeaseNotFound) {
		t.Errorf("Put with expired lease: error = %v, want ErrLeaseNotFound", err)
	}
	if _, err := h.Store.CreateIfAbsent(ctx, k, []byte("v"), id); !errors.Is(err, kvstore.ErrLeaseNotFound) {
		t.Errorf("CreateIfAbsent with expired lease: error = %v, want ErrLeaseNotFound", err)
	}
	if err := h.Store.KeepAlive(ctx, id); !errors.Is(err, kvstore.ErrLeaseNotFound) {
		t.Errorf("KeepAlive of expired lease: error = %v, want ErrLeaseNotFound", err)
	}
	if err := h.Store.RevokeLease(ctx, id); !errors.Is(err, kvstore.ErrLeaseNotFound) {
		t.Errorf("RevokeLease of expired lease: error = %v, want ErrLeaseNotFound", err)
	}
}

func testLeaseKeepAlive(t *testing.T, h *harness) {
	ctx := testCtx(t)
	id, err := h.Store.GrantLease(ctx, h.LeaseTTL)
	if err != nil {
		t.Fatalf("GrantLease: %v", err)
	}
	k := h.key("leased")
	mustPut(t, h.Store, k, "v", id)
	// Renew for three TTLs; the key must survive all of them.
	tick := time.NewTicker(h.LeaseTTL / 4)
	defer tick.Stop()
	for end := time.Now().Add(3 * h.LeaseTTL); time.Now().Before(end); <-tick.C {
		if err := h.Store.KeepAlive(ctx, id); err != nil {
			t.Fatalf("KeepAlive: %v", err)
		}
		if _, err := h.Store.Get(ctx, k); err != nil {
			t.Fatalf("Get while renewing: %v", err)
		}
	}
	// Then let it lapse.
	testenv.Eventually(t, timeout, func() error {
		_, err := h.Store.Get(ctx, k)
		if errors.Is(err, kvstore.ErrNotFound) {
			return nil
		}
		return fmt.Errorf("get: error = %v, want ErrNotFound", err)
	})
}

func testLeaseRevoke(t *testing.T, h *harness) {
	ctx := testCtx(t)
	id, err := h.Store.GrantLease(ctx, time.Minute)
	if err != nil {
		t.Fatalf("GrantLease: %v", err)
	}
	other, err := h.Store.GrantLease(ctx, time.Minute)
	if err != nil {
		t.Fatalf("GrantLease: %v", err)
	}
	if other == id || id == 0 || other == 0 {
		t.Fatalf("GrantLease returned %d and %d, want distinct non-zero IDs", id, other)
	}
	mustPut(t, h.Store, h.key("a"), "v", id)
	mustPut(t, h.Store, h.key("b"), "v", id)
	mustPut(t, h.Store, h.key("c"), "v", other)
	// Rebinding a key moves it off the lease.
	mustPut(t, h.Store, h.key("moved"), "v", id)
	mustPut(t, h.Store, h.key("moved"), "v2", other)
	if err := h.Store.RevokeLease(ctx, id); err != nil {
		t.Fatalf("RevokeLease: %v", err)
	}
	for _, k := range []string{"a", "b"} {
		if _, err := h.Store.Get(ctx, h.key(k)); !errors.Is(err, kvstore.ErrNotFound) {
			t.Errorf("Get(%s) after revoke: error = %v, want ErrNotFound", k, err)
		}
	}
	for _, k := range []string{"c", "moved"} {
		if _, err := h.Store.Get(ctx, h.key(k)); err != nil {
			t.Errorf("Get(%s) bound to another lease: %v", k, err)
		}
	}
	if err := h.Store.RevokeLease(ctx, id); !errors.Is(err, kvstore.ErrLeaseNotFound) {
		t.Errorf("second RevokeLease: error = %v, want ErrLeaseNotFound", err)
	}
	if err := h.Store.Put(ctx, h.key("a"), nil, id); !errors.Is(err, kvstore.ErrLeaseNotFound) {
		t.Errorf("Put with revoked lease: error = %v, want ErrLeaseNotFound", err)
	}
	if err := h.Store.RevokeLease(ctx, other); err != nil {
		t.Fatalf("RevokeLease(other): %v", err)
	}
}

func testLeaseUnknown(t *testing.T, h *harness) {
	ctx := testCtx(t)
	const unknown = kvstore.LeaseID(0x7e57_0000_dead)
	if err := h.Store.RevokeLease(ctx, unknown); !errors.Is(err, kvstore.ErrLeaseNotFound) {
		t.Errorf("RevokeLease(unknown): error = %v, want ErrLeaseNotFound", err)
	}
	if err := h.Store.KeepAlive(ctx, unknown); !errors.Is(err, kvstore.ErrLeaseNotFound) {
		t.Errorf("KeepAlive(unknown): error = %v, want ErrLeaseNotFound", err)
	}
	if err := h.Store.Put(ctx, h.key("k"), nil, unknown); !errors.Is(err, kvstore.ErrLeaseNotFound) {
		t.Errorf("Put(unknown lease): error = %v, want ErrLeaseNotFound", err)
	}
	if _, err := h.Store.CreateIfAbsent(ctx, h.key("k"), nil, unknown); !errors.Is(err, kvstore.ErrLeaseNotFound) {
		t.Errorf("CreateIfAbsent(unknown lease): error = %v, want ErrLeaseNotFound", err)
	}
	if _, err := h.Store.Get(ctx, h.key("k")); !errors.Is(err, kvstore.ErrNotFound) {
		t.Errorf("failed lease-bound writes left a key behind: %v", err)
	}
}

// testLeaseTTL: the time left counts down from the TTL, a keep-alive
// restores it, and an ended lease has none.
func testLeaseTTL(t *testing.T, h *harness) {
	ctx := testCtx(t)
	ttl := max(h.LeaseTTL, 3*time.Second) // etcd counts whole seconds
	id, err := h.Store.GrantLease(ctx, ttl)
	if err != nil {
		t.Fatalf("GrantLease: %v", err)
	}
	first, err := h.Store.LeaseTTL(ctx, id)
	if err != nil || first <= 0 || first > ttl {
		t.Fatalf("LeaseTTL = %v, %v; want in (0, %v]", first, err, ttl)
	}
	testenv.Eventually(t, timeout, func() error {
		left, err := h.Store.LeaseTTL(ctx, id)
		if err != nil {
			return err
		}
		if left >= first {
			return fmt.Errorf("LeaseTTL = %v, not below %v yet", left, first)
		}
		return nil
	})
	if err := h.Store.KeepAlive(ctx, id); err != nil {
		t.Fatalf("KeepAlive: %v", err)
	}
	if left, err := h.Store.LeaseTTL(ctx, id); err != nil || left < first {
		t.Errorf("LeaseTTL after KeepAlive = %v, %v; want at least %v", left, err, first)
	}
	if err := h.Store.RevokeLease(ctx, id); err != nil {
		t.Fatalf("RevokeLease: %v", err)
	}
	if _, err := h.Store.LeaseTTL(ctx, id); !errors.Is(err, kvstore.ErrLeaseNotFound) {
		t.Errorf("LeaseTTL of a revoked lease: error = %v, want ErrLeaseNotFound", err)
	}
}
