package memory

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/braidmesh/braid/kvstore"
)

// watcher is one Watch. Writers append to queue under s.mu (and w.mu) without
// ever blocking; the watch goroutine drains it into the consumer's channel.
type watcher struct {
	prefix string
	wake   chan struct{} // capacity 1: "queue is not empty"

	mu    sync.Mutex
	queue []queued
}

type queued struct {
	ev kvstore.Event
	// change is set for events from the history (not from a list), which a
	// compaction past their revision invalidates.
	change bool
}

// Watch implements kvstore.Store.
func (s *Store) Watch(ctx context.Context, prefix string) <-chan kvstore.Event {
	out := make(chan kvstore.Event)
	if ctx.Err() != nil {
		close(out)
		return out
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		close(out)
		return out
	}
	w := &watcher{prefix: prefix, wake: make(chan struct{}, 1)}
	w.queue = s.snapshotLocked(prefix, nil)
	w.signal()
	s.watchers[w] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()

	go s.serve(ctx, w, out)
	return out
}

// snapshotLocked appends the list of prefix and its EventListDone to q.
func (s *Store) snapshotLocked(prefix string, q []queued) []queued {
	for _, kv := range s.listLocked(prefix) {
		q = append(q, queued{ev: kvstore.Event{
			Kind: kvstore.EventUpsert, Key: kv.Key, Value: kv.Value, Revision: kv.ModRevision,
		}})
	}
	return append(q, queued{ev: kvstore.Event{Kind: kvstore.EventListDone, Revision: s.rev}})
}

func (s *Store) serve(ctx context.Context, w *watcher, out chan<- kvstore.Event) {
	defer s.wg.Done()
	defer close(out)
	defer func() {
		s.mu.Lock()
		delete(s.watchers, w)
		s.mu.Unlock()
	}()
	for {
		ev, ok := w.pop()
		if !ok {
			select {
			case <-w.wake:
				continue
			case <-ctx.Done():
				return
			case <-s.done:
				return
			}
		}
		select {
		case out <- ev:
		case <-ctx.Done():
			return
		case <-s.done:
			return
		}
	}
}

func (w *watcher) pop() (kvstore.Event, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.queue) == 0 {
		return kvstore.Event{}, false
	}
	ev := w.queue[0].ev
	ev.Value = slices.Clone(ev.Value) // the consumer may keep or modify it
	w.queue[0] = queued{}
	w.queue = w.queue[1:]
	if len(w.queue) == 0 {
		w.queue = nil // let the backing array go
	}
	return ev, true
}

func (w *watcher) signal() {
	select {
	case w.wake <- struct{}{}:
	default: // a wake-up is already pending
	}
}

// notifyLocked queues ev on every watcher whose prefix covers ev.Key.
func (s *Store) notifyLocked(ev kvstore.Event) {
	for w := range s.watchers {
		if !strings.HasPrefix(ev.Key, w.prefix) {
			continue
		}
		w.mu.Lock()
		w.queue = append(w.queue, queued{ev: ev, change: true})
		w.mu.Unlock()
		w.signal()
	}
}

// Compact discards the history before rev, like etcd's compaction. It is a
// test hook: a watch that has not yet delivered a change older than rev can
// no longer resume and instead delivers kvstore.EventRestart, a full re-list
// at the current revision and kvstore.EventListDone. Compacting to a future
// revision is an error; compacting to an already compacted one does nothing.
func (s *Store) Compact(rev int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("compact to revision %d: %w", rev, kvstore.ErrClosed)
	}
	if rev > s.rev {
		return fmt.Errorf("compact to revision %d: future revision, current is %d", rev, s.rev)
	}
	if rev <= s.compactRev {
		return nil
	}
	s.compactRev = rev
	for w := range s.watchers {
		w.mu.Lock()
		lost := false
		for _, q := range w.queue {
			if q.change && q.ev.Revision < rev {
				lost = true
				break
			}
		}
		if lost {
			q := []queued{{ev: kvstore.Event{Kind: kvstore.EventRestart, Revision: s.rev}}}
			w.queue = s.snapshotLocked(w.prefix, q)
		}
		w.mu.Unlock()
		if lost {
			w.signal()
		}
	}
	return nil
}
