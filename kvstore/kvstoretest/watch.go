package kvstoretest

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/braidmesh/braid/kvstore"
)

func testWatchListThenChanges(t *testing.T, h *harness) {
	ctx := testCtx(t)
	for _, k := range []string{"a", "b", "c"} {
		mustPut(t, h.Store, h.key(k), "1", 0)
	}
	w := watch(t, h.Store, h.prefix)
	m := newModel(h.prefix)
	consume(t, w, m, listed)
	checkModel(t, h.Store, m)

	mustPut(t, h.Store, h.key("d"), "1", 0)
	mustPut(t, h.Store, h.key("a"), "2", 0)
	if err := h.Store.Delete(ctx, h.key("b")); err != nil {
		t.Fatal(err)
	}
	if err := h.Store.Delete(ctx, h.key("absent")); err != nil {
		t.Fatal(err)
	}
	if ok, err := h.Store.CreateIfAbsent(ctx, h.key("c"), []byte("no"), 0); err != nil || ok {
		t.Fatalf("CreateIfAbsent(existing) = %v, %v", ok, err)
	}
	mustPut(t, h.Store, h.key("e"), "1", 0)

	want := []struct {
		kind       kvstore.EventKind
		key, value string
	}{
		{kvstore.EventUpsert, "d", "1"},
		{kvstore.EventUpsert, "a", "2"},
		{kvstore.EventDelete, "b", ""},
		{kvstore.EventUpsert, "e", "1"},
	}
	last := m.rev
	for _, w1 := range want {
		ev := next(t, w, w1.kind)
		if ev.Key != h.key(w1.key) || string(ev.Value) != w1.value {
			t.Fatalf("event %v %q=%q, want %v %q=%q", ev.Kind, ev.Key, ev.Value, w1.kind, h.key(w1.key), w1.value)
		}
		if ev.Revision <= last {
			t.Fatalf("event %v %q at revision %d, not after %d", ev.Kind, ev.Key, ev.Revision, last)
		}
		last = ev.Revision
	}
	kv, err := h.Store.Get(ctx, h.key("e"))
	if err != nil || kv.ModRevision != last {
		t.Fatalf("Get(e) = %+v, %v; want mod revision %d as in its event", kv, err, last)
	}
}

func testWatchPrefixIsolation(t *testing.T, h *harness) {
	mustPut(t, h.Store, h.key("a/0"), "in", 0)
	mustPut(t, h.Store, h.key("ab/0"), "out", 0)
	mustPut(t, h.Store, h.key("a"), "out", 0)
	w := watch(t, h.Store, h.key("a/"))
	ev := next(t, w, kvstore.EventUpsert)
	if ev.Key != h.key("a/0") {
		t.Fatalf("listed %q, want only %q", ev.Key, h.key("a/0"))
	}
	next(t, w, kvstore.EventListDone)
	mustPut(t, h.Store, h.key("ab/1"), "out", 0)
	mustPut(t, h.Store, h.key("a"), "out2", 0)
	mustPut(t, h.Store, h.key("b/1"), "out", 0)
	mustPut(t, h.Store, h.key("a/1"), "in", 0)
	if ev := next(t, w, kvstore.EventUpsert); ev.Key != h.key("a/1") {
		t.Fatalf("event for %q, want only %q", ev.Key, h.key("a/1"))
	}
}

func testWatchLeaseExpiry(t *testing.T, h *harness) {
	ctx := testCtx(t)
	w := watch(t, h.Store, h.prefix)
	next(t, w, kvstore.EventListDone)
	id, err := h.Store.GrantLease(ctx, h.LeaseTTL)
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, h.Store, h.key("k"), "v", id)
	if ev := next(t, w, kvstore.EventUpsert); ev.Key != h.key("k") {
		t.Fatalf("upsert of %q, want %q", ev.Key, h.key("k"))
	}
	if ev := next(t, w, kvstore.EventDelete); ev.Key != h.key("k") {
		t.Fatalf("delete of %q, want %q", ev.Key, h.key("k"))
	}
}

func testWatchLeaseRevoke(t *testing.T, h *harness) {
	ctx := testCtx(t)
	w := watch(t, h.Store, h.prefix)
	m := newModel(h.prefix)
	consume(t, w, m, listed)
	id, err := h.Store.GrantLease(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	keys := []string{h.key("a"), h.key("b"), h.key("c")}
	for _, k := range keys {
		mustPut(t, h.Store, k, "v", id)
	}
	mustPut(t, h.Store, h.key("stays"), "v", 0)
	consume(t, w, m, func(m *model) bool { return len(m.kv) == 4 })
	if err := h.Store.RevokeLease(ctx, id); err != nil {
		t.Fatal(err)
	}
	var deleted []string
	for range keys {
		ev := next(t, w, kvstore.EventDelete)
		if err := m.apply(ev); err != nil {
			t.Fatal(err)
		}
		deleted = append(deleted, ev.Key)
	}
	slices.Sort(deleted)
	if !slices.Equal(deleted, keys) {
		t.Fatalf("deleted %v, want %v", deleted, keys)
	}
	checkModel(t, h.Store, m)
}

// testWatchManyPuts checks that a watch over many concurrent writes delivers
// every change once, in revision order.
func testWatchManyPuts(t *testing.T, h *harness) {
	const writers, puts = 4, 250
	w := watch(t, h.Store, h.prefix)
	m := newModel(h.prefix)
	consume(t, w, m, listed)

	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for i := range writers {
		wg.Go(func() {
			ctx := testCtx(t)
			for j := range puts {
				k := h.key(fmt.Sprintf("w%d/%02d", i, j%25))
				if err := h.Store.Put(ctx, k, fmt.Appendf(nil, "%d", j), 0); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	consume(t, w, m, func(m *model) bool { return m.changes >= writers*puts })
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Put: %v", err)
	}
	if m.changes != writers*puts {
		t.Fatalf("%d changes delivered, want %d", m.changes, writers*puts)
	}
	checkModel(t, h.Store, m)
}

// testWatchSlowConsumer checks that a watch nobody reads stalls neither
// writers nor other watches, and loses nothing.
func testWatchSlowConsumer(t *testing.T, h *harness) {
	const puts = 300
	slow := watch(t, h.Store, h.prefix)
	next(t, slow, kvstore.EventListDone)
	fast := watch(t, h.Store, h.prefix)
	mf := newModel(h.prefix)
	consume(t, fast, mf, listed)

	done := make(chan error, 1)
	go func() {
		ctx := testCtx(t)
		for i := range puts {
			if err := h.Store.Put(ctx, h.key(fmt.Sprint(i%50)), fmt.Appendf(nil, "%d", i), 0); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	consume(t, fast, mf, func(m *model) bool { return m.changes == puts })
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(timeout):
		t.Fatal("writes stalled by a watch nobody reads")
	}
	ms := newModel(h.prefix)
	ms.listing = false
	consume(t, slow, ms, func(m *model) bool { return m.changes == puts })
	if ms.restarts != 0 {
		t.Fatalf("slow watch restarted %d times without a compaction", ms.restarts)
	}
	if !maps.Equal(ms.kv, mf.kv) {
		t.Fatalf("slow and fast watches disagree:\nslow %v\nfast %v", sorted(ms.kv), sorted(mf.kv))
	}
}

// testWatchCompaction makes a watch resume from a compacted revision and
// checks the EventRestart + re-list recovery.
func testWatchCompaction(t *testing.T, h *harness) {
	ctx := testCtx(t)
	for _, k := range []string{"a", "b", "gone"} {
		mustPut(t, h.Store, h.key(k), "0", 0)
	}
	w := watch(t, h.Store, h.prefix)
	m := newModel(h.prefix)
	consume(t, w, m, listed)

	// Cut the watch off: by partition if the harness can, else by not
	// reading it.
	heal := func() {}
	if h.Partition != nil {
		heal = h.Partition(t)
	}
	mustPut(t, h.Peer, h.key("a"), "1", 0)
	mustPut(t, h.Peer, h.key("c"), "1", 0)
	if err := h.Peer.Delete(ctx, h.key("gone")); err != nil {
		t.Fatal(err)
	}
	mustPut(t, h.Peer, h.key("a"), "2", 0)
	mustPut(t, h.Peer, h.key("d"), "1", 0)
	_, rev, err := h.Peer.List(ctx, h.prefix)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Compact(ctx, rev); err != nil {
		t.Fatalf("Compact(%d): %v", rev, err)
	}
	heal()

	wantState := matches(t, h.Peer, h.prefix)
	consume(t, w, m, func(m *model) bool { return m.restarts > 0 && wantState(m) })
	checkModel(t, h.Peer, m)

	// The watch goes on after the recovery.
	mustPut(t, h.Store, h.key("after"), "1", 0)
	consume(t, w, m, matches(t, h.Store, h.prefix))
}

// testWatchRestart restarts the server under a watch while a writer keeps
// writing, and checks that no change is lost or repeated.
func testWatchRestart(t *testing.T, h *harness) {
	if h.Restart == nil {
		t.Skip("harness cannot restart the store's server")
	}
	w := watch(t, h.Store, h.prefix)
	m := newModel(h.prefix)
	consume(t, w, m, listed)

	const puts = 200
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range puts {
			putRetry(t, h.Store, h.key(fmt.Sprintf("k%03d", i)), "v")
		}
	}()
	consume(t, w, m, func(m *model) bool { return m.changes >= puts/4 })
	h.Restart(t)
	<-done
	consume(t, w, m, func(m *model) bool { return len(m.kv) == puts })
	checkModel(t, h.Store, m)
	if m.restarts != 0 {
		t.Fatalf("watch restarted %d times across a server restart without compaction", m.restarts)
	}
}

// testWatchPartition cuts the store off while a peer writes, and checks that
// the watch catches up without loss or repeats once the partition heals.
func testWatchPartition(t *testing.T, h *harness) {
	if h.Partition == nil {
		t.Skip("harness cannot partition the store")
	}
	w := watch(t, h.Store, h.prefix)
	m := newModel(h.prefix)
	consume(t, w, m, listed)
	for i := range 20 {
		mustPut(t, h.Store, h.key(fmt.Sprintf("before%02d", i)), "v", 0)
	}
	heal := h.Partition(t)
	for i := range 50 {
		mustPut(t, h.Peer, h.key(fmt.Sprintf("during%02d", i)), "v", 0)
	}
	if err := h.Peer.Delete(testCtx(t), h.key("before00")); err != nil {
		t.Fatal(err)
	}
	heal()
	for i := range 20 {
		putRetry(t, h.Store, h.key(fmt.Sprintf("after%02d", i)), "v")
	}
	consume(t, w, m, matches(t, h.Peer, h.prefix))
	if m.restarts != 0 {
		t.Fatalf("watch restarted %d times across a partition without compaction", m.restarts)
	}
}

// putRetry writes key, retrying while the store is unreachable.
func putRetry(t *testing.T, s kvstore.Store, key, value string) {
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		err := s.Put(ctx, key, []byte(value), 0)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("Put(%q): %v", key, err)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func testWatchCancel(t *testing.T, h *harness) {
	ctx, cancel := context.WithCancel(testCtx(t))
	w := h.Store.Watch(ctx, h.prefix)
	next(t, w, kvstore.EventListDone)
	for i := range 10 { // left unread
		mustPut(t, h.Store, h.key(fmt.Sprint(i)), "v", 0)
	}
	cancel()
	waitClosed(t, w)
}

// testManyWatches opens many watches at once, as an agent following every
// kind of object of 250 clusters does.
func testManyWatches(t *testing.T, h *harness) {
	n := h.Watches
	prefix := func(i int) string { return h.key(fmt.Sprintf("c%03d/kind%d/", i/4, i%4)) }
	start := time.Now()
	ws := make([]<-chan kvstore.Event, n)
	for i := range n {
		ws[i] = watch(t, h.Store, prefix(i))
	}
	for i := range n {
		next(t, ws[i], kvstore.EventListDone)
	}
	t.Logf("%d watches listed in %v", n, time.Since(start))

	start = time.Now()
	var wg sync.WaitGroup
	const writers = 8
	for j := range writers {
		wg.Go(func() {
			for i := j; i < n; i += writers {
				putRetry(t, h.Store, prefix(i)+"k", fmt.Sprint(i))
			}
		})
	}
	for i := range n {
		ev := next(t, ws[i], kvstore.EventUpsert)
		if ev.Key != prefix(i)+"k" || string(ev.Value) != fmt.Sprint(i) {
			t.Fatalf("watch %d got %q=%q, want %q=%d", i, ev.Key, ev.Value, prefix(i)+"k", i)
		}
	}
	wg.Wait()
	t.Logf("%d puts seen by their watches in %v", n, time.Since(start))
}
