package remote

import (
	"context"
	"sync"
)

// subscription queues changes for one consumer without bound, so emit never
// blocks on a slow consumer.
type subscription struct {
	out chan Change

	mu     sync.Mutex
	queue  []Change
	signal chan struct{}
}

// maxSpareChanges bounds the queue array a subscription keeps for reuse
// (about 100 bytes a change), so a burst does not pin its memory.
const maxSpareChanges = 1 << 14

// Subscribe returns a channel carrying every change applied from now on, in
// the order the Watcher applied them. The channel is closed when ctx is
// done. Take a Snapshot after subscribing to get the state the changes
// apply to.
func (w *Watcher) Subscribe(ctx context.Context) <-chan Change {
	s := &subscription{out: make(chan Change, 64), signal: make(chan struct{}, 1)}
	w.subsMu.Lock()
	w.subs[s] = struct{}{}
	w.subsMu.Unlock()
	go func() {
		defer close(s.out)
		defer func() {
			w.subsMu.Lock()
			delete(w.subs, s)
			w.subsMu.Unlock()
		}()
		// spare is the array of the last batch delivered, handed back to
		// emit: a cold sync queues hundreds of thousands of changes, and
		// growing a fresh queue from nil for every batch was a large share
		// of the Watcher's garbage.
		var spare []Change
		for {
			s.mu.Lock()
			batch := s.queue
			s.queue = spare[:0]
			s.mu.Unlock()
			for _, ch := range batch {
				select {
				case s.out <- ch:
				case <-ctx.Done():
					return
				}
			}
			clear(batch) // drop the records
			spare = nil
			if cap(batch) <= maxSpareChanges {
				spare = batch
			}
			select {
			case <-s.signal:
			case <-ctx.Done():
				return
			}
		}
	}()
	return s.out
}

// notifier is one Notify registration.
type notifier struct{ f func() }

// Notify calls f after every change the Watcher applies, until ctx is
// done; Snapshot already includes the change when f runs. Nothing is
// queued: f is the consumer's wake-up (such as reconcile.Loop.Trigger,
// which coalesces), after which it reads Snapshot. f must not block: the
// Watcher's goroutines call it.
func (w *Watcher) Notify(ctx context.Context, f func()) {
	n := &notifier{f: f}
	w.subsMu.Lock()
	w.notifiers[n] = struct{}{}
	w.subsMu.Unlock()
	context.AfterFunc(ctx, func() {
		w.subsMu.Lock()
		delete(w.notifiers, n)
		w.subsMu.Unlock()
	})
}

// emit queues ch for every subscriber and wakes every notifier.
func (w *Watcher) emit(ch Change) {
	w.subsMu.Lock()
	defer w.subsMu.Unlock()
	for n := range w.notifiers {
		n.f()
	}
	for s := range w.subs {
		s.mu.Lock()
		s.queue = append(s.queue, ch)
		s.mu.Unlock()
		select {
		case s.signal <- struct{}{}:
		default:
		}
	}
}
