package kvstoretest

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/kvstore"
)

// Harness is one store under test and the hooks the suite needs to drive it.
type Harness struct {
	// Store is the store under test. The suite closes it when the subtest
	// ends.
	Store kvstore.Store
	// Compact discards the store's history before rev, as etcd compaction
	// does. Required.
	Compact func(ctx context.Context, rev int64) error
	// Restart stops the server behind Store and starts it again with the
	// same data while Store stays open; nil if the backend has no server.
	Restart func(t *testing.T)
	// Partition cuts Store off from its server until heal is called, while
	// Peer stays connected. nil if unsupported: the compaction subtest then
	// stalls a watch by not reading it, and the backend must hold the
	// unread changes such that Compact restarts the watch (as
	// kvstore/memory does).
	Partition func(t *testing.T) (heal func())
	// Peer is a second store on the same data, unaffected by Partition;
	// nil means Store. The suite does not close it.
	Peer kvstore.Store
	// LeaseTTL is the TTL of the leases the suite grants and expects to
	// expire; zero means one second (etcd's usual minimum).
	LeaseTTL time.Duration
	// Watches is the number of concurrent watches the many-watches subtest
	// opens; zero means 1000.
	Watches int
}

// timeout bounds every wait in the suite; the backends are expected to be
// much faster.
const timeout = 20 * time.Second

// Run runs the conformance suite; newHarness is called once per subtest.
func Run(t *testing.T, newHarness func(t *testing.T) Harness) {
	h := func(t *testing.T) *harness {
		t.Helper()
		hh := newHarness(t)
		if hh.Store == nil || hh.Compact == nil {
			t.Fatal("kvstoretest: Harness.Store and Harness.Compact are required")
		}
		if hh.Peer == nil {
			hh.Peer = hh.Store
		}
		if hh.LeaseTTL == 0 {
			hh.LeaseTTL = time.Second
		}
		if hh.Watches == 0 {
			hh.Watches = 1000
		}
		t.Cleanup(func() { hh.Store.Close() })
		return &harness{Harness: hh, prefix: "kvstoretest/" + t.Name() + "/"}
	}
	// Sequential: it counts the process's goroutines.
	t.Run("NoGoroutineLeak", func(t *testing.T) { testNoGoroutineLeak(t, h(t)) })

	tests := []struct {
		name string
		fn   func(*testing.T, *harness)
	}{
		{"GetNotFound", testGetNotFound},
		{"PutGet", testPutGet},
		{"List", testList},
		{"Delete", testDelete},
		{"CreateIfAbsent", testCreateIfAbsent},
		{"CreateIfAbsentRace", testCreateIfAbsentRace},
		{"CanceledContext", testCanceledContext},
		{"LeaseExpiry", testLeaseExpiry},
		{"LeaseKeepAlive", testLeaseKeepAlive},
		{"LeaseRevoke", testLeaseRevoke},
		{"LeaseUnknown", testLeaseUnknown},
		{"LeaseTTL", testLeaseTTL},
		{"WatchListThenChanges", testWatchListThenChanges},
		{"WatchPrefixIsolation", testWatchPrefixIsolation},
		{"WatchLeaseExpiry", testWatchLeaseExpiry},
		{"WatchLeaseRevoke", testWatchLeaseRevoke},
		{"WatchManyPuts", testWatchManyPuts},
		{"WatchSlowConsumer", testWatchSlowConsumer},
		{"WatchCompaction", testWatchCompaction},
		{"WatchRestart", testWatchRestart},
		{"WatchPartition", testWatchPartition},
		{"WatchCancel", testWatchCancel},
		{"ManyWatches", testManyWatches},
		{"Close", testClose},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, h(t))
		})
	}
}

type harness struct {
	Harness
	prefix string // unique to the subtest
}

func (h *harness) key(s string) string { return h.prefix + s }

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	t.Cleanup(cancel)
	return ctx
}

func mustPut(t *testing.T, s kvstore.Store, key, value string, lease kvstore.LeaseID) {
	t.Helper()
	if err := s.Put(testCtx(t), key, []byte(value), lease); err != nil {
		t.Fatalf("Put(%q): %v", key, err)
	}
}

func testGetNotFound(t *testing.T, h *harness) {
	_, err := h.Store.Get(testCtx(t), h.key("absent"))
	if !errors.Is(err, kvstore.ErrNotFound) {
		t.Fatalf("Get(absent) error = %v, want ErrNotFound", err)
	}
}

func testPutGet(t *testing.T, h *harness) {
	ctx := testCtx(t)
	k := h.key("k")
	mustPut(t, h.Store, k, "v1", 0)
	kv1, err := h.Store.Get(ctx, k)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if kv1.Key != k || string(kv1.Value) != "v1" || kv1.Lease != 0 {
		t.Fatalf("Get = %+v, want key %q value v1 no lease", kv1, k)
	}
	if kv1.CreateRevision == 0 || kv1.ModRevision != kv1.CreateRevision {
		t.Fatalf("new key revisions: create %d mod %d, want equal and non-zero", kv1.CreateRevision, kv1.ModRevision)
	}
	mustPut(t, h.Store, k, "v2", 0)
	kv2, err := h.Store.Get(ctx, k)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if string(kv2.Value) != "v2" || kv2.CreateRevision != kv1.CreateRevision || kv2.ModRevision <= kv1.ModRevision {
		t.Fatalf("after update Get = %+v, want value v2, create %d, mod > %d", kv2, kv1.CreateRevision, kv1.ModRevision)
	}
	// Empty and binary values round-trip.
	mustPut(t, h.Store, h.key("empty"), "", 0)
	if kv, err := h.Store.Get(ctx, h.key("empty")); err != nil || len(kv.Value) != 0 {
		t.Fatalf("Get(empty) = %+v, %v; want empty value", kv, err)
	}
	bin := string([]byte{0, 1, 0xff, '\n'})
	mustPut(t, h.Store, h.key("bin"), bin, 0)
	if kv, err := h.Store.Get(ctx, h.key("bin")); err != nil || string(kv.Value) != bin {
		t.Fatalf("Get(bin) = %q, %v; want %q", kv.Value, err, bin)
	}
}

func testList(t *testing.T, h *harness) {
	ctx := testCtx(t)
	for _, k := range []string{"a/2", "a/0", "ab/1", "a/1", "b", "a", "a/sub/x"} {
		mustPut(t, h.Store, h.key(k), "v-"+k, 0)
	}
	kvs, rev, err := h.Store.List(ctx, h.key("a/"))
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	var got []string
	var maxMod int64
	for _, kv := range kvs {
		got = append(got, strings.TrimPrefix(kv.Key, h.prefix))
		if string(kv.Value) != "v-"+strings.TrimPrefix(kv.Key, h.prefix) {
			t.Errorf("List: %s = %q", kv.Key, kv.Value)
		}
		maxMod = max(maxMod, kv.ModRevision)
	}
	if want := "a/0 a/1 a/2 a/sub/x"; strings.Join(got, " ") != want {
		t.Fatalf("List(a/) keys = %v, want %s (sorted, not ab/1 or a)", got, want)
	}
	if rev < maxMod {
		t.Fatalf("List revision %d < entry mod revision %d", rev, maxMod)
	}
	kvs, rev2, err := h.Store.List(ctx, h.key("none/"))
	if err != nil || len(kvs) != 0 || rev2 < rev {
		t.Fatalf("List(none/) = %v, %d, %v; want empty at revision >= %d", kvs, rev2, err, rev)
	}
}

func testDelete(t *testing.T, h *harness) {
	ctx := testCtx(t)
	k := h.key("k")
	mustPut(t, h.Store, k, "v", 0)
	if err := h.Store.Delete(ctx, k); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := h.Store.Get(ctx, k); !errors.Is(err, kvstore.ErrNotFound) {
		t.Fatalf("Get after Delete error = %v, want ErrNotFound", err)
	}
	if err := h.Store.Delete(ctx, k); err != nil {
		t.Fatalf("Delete(absent) = %v, want nil", err)
	}
	// A re-created key starts a new life.
	mustPut(t, h.Store, k, "again", 0)
	kv, err := h.Store.Get(ctx, k)
	if err != nil || kv.CreateRevision != kv.ModRevision {
		t.Fatalf("re-created key = %+v, %v; want create == mod revision", kv, err)
	}
}

func testCreateIfAbsent(t *testing.T, h *harness) {
	ctx := testCtx(t)
	k := h.key("k")
	ok, err := h.Store.CreateIfAbsent(ctx, k, []byte("first"), 0)
	if err != nil || !ok {
		t.Fatalf("CreateIfAbsent(new) = %v, %v; want true", ok, err)
	}
	ok, err = h.Store.CreateIfAbsent(ctx, k, []byte("second"), 0)
	if err != nil || ok {
		t.Fatalf("CreateIfAbsent(existing) = %v, %v; want false", ok, err)
	}
	if kv, err := h.Store.Get(ctx, k); err != nil || string(kv.Value) != "first" {
		t.Fatalf("Get = %q, %v; want first", kv.Value, err)
	}
	if err := h.Store.Delete(ctx, k); err != nil {
		t.Fatal(err)
	}
	ok, err = h.Store.CreateIfAbsent(ctx, k, []byte("third"), 0)
	if err != nil || !ok {
		t.Fatalf("CreateIfAbsent(after delete) = %v, %v; want true", ok, err)
	}
	// With a lease.
	id, err := h.Store.GrantLease(ctx, 30*time.Second)
	if err != nil {
		t.Fatalf("GrantLease: %v", err)
	}
	ok, err = h.Store.CreateIfAbsent(ctx, h.key("leased"), []byte("v"), id)
	if err != nil || !ok {
		t.Fatalf("CreateIfAbsent(leased) = %v, %v; want true", ok, err)
	}
	if kv, err := h.Store.Get(ctx, h.key("leased")); err != nil || kv.Lease != id {
		t.Fatalf("Get(leased) = %+v, %v; want lease %d", kv, err, id)
	}
	if err := h.Store.RevokeLease(ctx, id); err != nil {
		t.Fatalf("RevokeLease: %v", err)
	}
}

func testCreateIfAbsentRace(t *testing.T, h *harness) {
	ctx := testCtx(t)
	const n = 16
	for round := range 3 {
		k := h.key(fmt.Sprintf("race-%d", round))
		var wg sync.WaitGroup
		won := make([]bool, n)
		errs := make([]error, n)
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				won[i], errs[i] = h.Store.CreateIfAbsent(ctx, k, fmt.Appendf(nil, "%d", i), 0)
			})
		}
		close(start)
		wg.Wait()
		winner := -1
		for i := range n {
			if errs[i] != nil {
				t.Fatalf("CreateIfAbsent #%d: %v", i, errs[i])
			}
			if won[i] {
				if winner >= 0 {
					t.Fatalf("both #%d and #%d created %s", winner, i, k)
				}
				winner = i
			}
		}
		if winner < 0 {
			t.Fatalf("no goroutine created %s", k)
		}
		if kv, err := h.Store.Get(ctx, k); err != nil || string(kv.Value) != fmt.Sprint(winner) {
			t.Fatalf("Get = %q, %v; want the winner's %d", kv.Value, err, winner)
		}
	}
}

func testCanceledContext(t *testing.T, h *harness) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	k := h.key("k")
	check := func(op string, err error) {
		t.Helper()
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%s with canceled context: error = %v, want context.Canceled", op, err)
		}
	}
	_, err := h.Store.Get(ctx, k)
	check("Get", err)
	_, _, err = h.Store.List(ctx, k)
	check("List", err)
	check("Put", h.Store.Put(ctx, k, nil, 0))
	_, err = h.Store.CreateIfAbsent(ctx, k, nil, 0)
	check("CreateIfAbsent", err)
	check("Delete", h.Store.Delete(ctx, k))
	_, err = h.Store.GrantLease(ctx, time.Minute)
	check("GrantLease", err)
	waitClosed(t, h.Store.Watch(ctx, k))
}

func testClose(t *testing.T, h *harness) {
	ctx := testCtx(t)
	k := h.key("k")
	mustPut(t, h.Store, k, "v", 0)
	id, err := h.Store.GrantLease(ctx, 30*time.Second)
	if err != nil {
		t.Fatalf("GrantLease: %v", err)
	}
	w := h.Store.Watch(ctx, h.prefix)
	next(t, w, kvstore.EventUpsert)
	next(t, w, kvstore.EventListDone)

	if err := h.Store.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	waitClosed(t, w)
	if err := h.Store.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	check := func(op string, err error) {
		t.Helper()
		if !errors.Is(err, kvstore.ErrClosed) {
			t.Errorf("%s after Close: error = %v, want ErrClosed", op, err)
		}
	}
	_, err = h.Store.Get(ctx, k)
	check("Get", err)
	_, _, err = h.Store.List(ctx, h.prefix)
	check("List", err)
	check("Put", h.Store.Put(ctx, k, nil, 0))
	_, err = h.Store.CreateIfAbsent(ctx, h.key("new"), nil, 0)
	check("CreateIfAbsent", err)
	check("Delete", h.Store.Delete(ctx, k))
	_, err = h.Store.GrantLease(ctx, time.Minute)
	check("GrantLease", err)
	check("KeepAlive", h.Store.KeepAlive(ctx, id))
	check("RevokeLease", h.Store.RevokeLease(ctx, id))
	waitClosed(t, h.Store.Watch(ctx, h.prefix))
}

// testNoGoroutineLeak checks that watches, cancelled or not, leave no
// goroutine behind once the store is closed.
func testNoGoroutineLeak(t *testing.T, h *harness) {
	ctx := testCtx(t)
	mustPut(t, h.Store, h.key("warm"), "up", 0) // connections are up
	runtime.GC()
	base := runtime.NumGoroutine()

	wctx, cancel := context.WithCancel(ctx)
	var chans []<-chan kvstore.Event
	for i := range 20 {
		c := ctx
		if i%2 == 0 {
			c = wctx
		}
		w := h.Store.Watch(c, h.key(fmt.Sprintf("w%d/", i)))
		next(t, w, kvstore.EventListDone)
		chans = append(chans, w)
	}
	for i := range 20 {
		mustPut(t, h.Store, h.key(fmt.Sprintf("w%d/k", i)), "v", 0)
	}
	id, err := h.Store.GrantLease(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Store.KeepAlive(ctx, id); err != nil {
		t.Fatal(err)
	}
	cancel() // half of the watches end by context, half by Close
	if err := h.Store.Close(); err != nil {
		t.Fatal(err)
	}
	for _, w := range chans {
		waitClosed(t, w)
	}
	testenv.Eventually(t, timeout, func() error {
		if n := runtime.NumGoroutine(); n > base+2 {
			return fmt.Errorf("%d goroutines, %d before", n, base)
		}
		return nil
	})
}
