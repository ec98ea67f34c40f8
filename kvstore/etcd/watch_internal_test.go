package etcd

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/kvstore/etcd/etcdtest"
)

// flakyWatcher ends every watch with "no leader" once it has passed on
// maxEvents events, as a member that loses its leader does, and starts every
// other watch a few revisions early, so that the store must drop repeats. A
// response is cut after maxEvents events: each Put of the test is its own
// revision, so the cut falls between revisions, as etcd's own batches do,
// and a watch that catches up on all puts in one response still ends.
type flakyWatcher struct {
	clientv3.Watcher
	maxEvents int
	calls     atomic.Int64
}

func (f *flakyWatcher) Watch(ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
	if rev := clientv3.OpGet(key, opts...).Rev(); f.calls.Add(1)%2 == 0 && rev > 3 {
		opts = append(opts, clientv3.WithRev(rev-3))
	}
	ctx, cancel := context.WithCancel(ctx)
	in := f.Watcher.Watch(ctx, key, opts...)
	out := make(chan clientv3.WatchResponse)
	go func() {
		defer close(out)
		defer cancel()
		send := func(resp clientv3.WatchResponse) bool {
			select {
			case out <- resp:
				return true
			case <-ctx.Done():
				return false
			}
		}
		left := f.maxEvents
		for resp := range in {
			cut := len(resp.Events) >= left
			if cut {
				resp.Events = resp.Events[:left:left]
			}
			left -= len(resp.Events)
			if !send(resp) {
				return
			}
			if cut {
				send(clientv3.WatchResponse{Canceled: true, CancelReason: "etcdserver: no leader"})
				return
			}
		}
	}()
	return out
}

func TestWatchResumesAfterError(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	client, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	client.Watcher = &flakyWatcher{Watcher: client.Watcher, maxEvents: 7}
	s := NewFromClient(client)
	defer s.Close()

	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	w := s.Watch(ctx, "p/")
	if ev := <-w; ev.Kind != kvstore.EventListDone {
		t.Fatalf("first event %+v, want list-done", ev)
	}
	const puts = 200
	go func() {
		for i := range puts {
			if err := s.Put(ctx, fmt.Sprintf("p/%03d", i), nil, 0); err != nil {
				t.Errorf("Put: %v", err)
				return
			}
		}
	}()
	var last int64
	errs := 0
	for i := 0; i < puts; {
		var ev kvstore.Event
		select {
		case ev = <-w:
		case <-ctx.Done():
			t.Fatalf("got %d of %d puts", i, puts)
		}
		switch ev.Kind {
		case kvstore.EventError:
			errs++
			continue
		case kvstore.EventUpsert:
		default:
			t.Fatalf("event %+v, want upsert or error", ev)
		}
		if want := fmt.Sprintf("p/%03d", i); ev.Key != want || ev.Revision <= last {
			t.Fatalf("event %q at revision %d after %d, want %q after it", ev.Key, ev.Revision, last, want)
		}
		last = ev.Revision
		i++
	}
	// Each watch passes on at most 7 events, 3 of them repeats when it
	// started early: 200 puts take at least 200/7 watches.
	if errs < puts/7 {
		t.Fatalf("%d EventErrors, want at least %d: every watch was ended after 7 events", errs, puts/7)
	}
	t.Logf("%d puts delivered in order across %d watch errors", puts, errs)
}

// aheadWatcher makes etcd's first watch report progress too early, as a
// busy etcd 3.7 stream was seen to do: it holds back the responses carrying
// the first hold events, sends a progress notification at the revision of
// the last of them, and then either the held responses (the events arrive
// after the progress that claimed them) or, with endAfterProgress, a "no
// leader" end of the watch, so that the store must resume without them.
// Later watches pass through.
type aheadWatcher struct {
	clientv3.Watcher
	hold             int
	endAfterProgress bool
	calls            atomic.Int64
}

func (a *aheadWatcher) Watch(ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
	if a.calls.Add(1) > 1 {
		return a.Watcher.Watch(ctx, key, opts...)
	}
	ctx, cancel := context.WithCancel(ctx)
	in := a.Watcher.Watch(ctx, key, opts...)
	out := make(chan clientv3.WatchResponse)
	go func() {
		defer close(out)
		defer cancel()
		send := func(resp clientv3.WatchResponse) bool {
			select {
			case out <- resp:
				return true
			case <-ctx.Done():
				return false
			}
		}
		var held []clientv3.WatchResponse
		events := 0
		for events < a.hold {
			resp, ok := <-in
			if !ok {
				return
			}
			held = append(held, resp)
			events += len(resp.Events)
		}
		last := held[len(held)-1].Events
		progress := clientv3.WatchResponse{Header: &etcdserverpb.ResponseHeader{Revision: last[len(last)-1].Kv.ModRevision}}
		if !send(progress) {
			return
		}
		if a.endAfterProgress {
			send(clientv3.WatchResponse{Canceled: true, CancelReason: "etcdserver: no leader"})
			return
		}
		for _, resp := range held {
			if !send(resp) {
				return
			}
		}
		for resp := range in {
			if !send(resp) {
				return
			}
		}
	}()
	return out
}

// TestWatchDeliversEventsAProgressNotificationClaimed checks that a
// progress notification does not move where a watch is: events below its
// revision that arrive after it are delivered, not dropped as repeats, and
// a watch that ends right after it resumes from the last delivered event.
func TestWatchDeliversEventsAProgressNotificationClaimed(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	for _, end := range []bool{false, true} {
		t.Run(fmt.Sprintf("endAfterProgress=%v", end), func(t *testing.T) {
			client, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			client.Watcher = &aheadWatcher{Watcher: client.Watcher, hold: 5, endAfterProgress: end}
			s := NewFromClient(client)
			defer s.Close()

			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			prefix := fmt.Sprintf("ahead-%v/", end)
			w := s.Watch(ctx, prefix)
			if ev := <-w; ev.Kind != kvstore.EventListDone {
				t.Fatalf("first event %+v, want list-done", ev)
			}
			const puts = 10
			for i := range puts {
				if err := s.Put(ctx, fmt.Sprintf("%s%03d", prefix, i), nil, 0); err != nil {
					t.Fatalf("Put: %v", err)
				}
			}
			progress := 0
			for i := 0; i < puts; {
				var ev kvstore.Event
				select {
				case ev = <-w:
				case <-ctx.Done():
					t.Fatalf("got %d of %d puts, then nothing", i, puts)
				}
				switch ev.Kind {
				case kvstore.EventProgress:
					progress++
					continue
				case kvstore.EventError:
					continue
				case kvstore.EventUpsert:
				default:
					t.Fatalf("event %+v, want upsert, progress or error", ev)
				}
				if want := fmt.Sprintf("%s%03d", prefix, i); ev.Key != want {
					t.Fatalf("upsert of %q, want %q: the events before it were lost", ev.Key, want)
				}
				i++
			}
			if progress == 0 {
				t.Fatal("the early progress notification never reached the watch")
			}
		})
	}
}
