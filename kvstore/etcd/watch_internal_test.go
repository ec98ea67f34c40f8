package etcd

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/kvstore/etcd/etcdtest"
)

// flakyWatcher ends every watch with "no leader" after a few responses, as
// a member that loses its leader does, and starts every other watch a few
// revisions early, so that the store must drop repeats.
type flakyWatcher struct {
	clientv3.Watcher
	calls atomic.Int64
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
		n := 0
		for resp := range in {
			select {
			case out <- resp:
			case <-ctx.Done():
				return
			}
			if n++; n == 2 {
				select {
				case out <- clientv3.WatchResponse{Canceled: true, CancelReason: "etcdserver: no leader"}:
				case <-ctx.Done():
				}
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
	client.Watcher = &flakyWatcher{Watcher: client.Watcher}
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
	if errs == 0 {
		t.Fatal("no EventError although the watch was ended repeatedly")
	}
	t.Logf("%d puts delivered in order across %d watch errors", puts, errs)
}
