package etcd

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/reconcile"
)

// silenceFactor times Config.ProgressInterval is how long a watch may go
// without any response before it is watched again.
const silenceFactor = 12

// Watch retry backoff bounds (reconcile.Backoff: doubling, with jitter).
const (
	minRetryDelay = 50 * time.Millisecond
	maxRetryDelay = 5 * time.Second
)

// errWatchClosed reports a watch channel that the client closed without
// saying why.
var errWatchClosed = errors.New("etcd closed the watch")

// Watch implements kvstore.Store. It lists prefix with one range read (pages
// of 10,000 keys) and then follows it with an etcd watch from the list's
// revision + 1. All watches of a Store share one gRPC watch stream, so
// thousands of prefixes cost one connection; a watch refused for the
// stream's stale token (a JWT that expired, or any change to users and
// roles since it was issued) is made again at once on a new stream, without
// an error event.
//
// The etcd client resumes a watch after a lost connection by itself. When the
// server ends the watch (no leader: WithRequireLeader makes a partitioned
// member do so; permission denied; ...) the channel carries EventError and
// the watch resumes from the last delivered revision + 1 after a backoff,
// without repeating or skipping events. When that revision has been
// compacted, it carries EventRestart, a full re-list and EventListDone.
// Progress notifications prove the watch is live and never move where it
// resumes. The etcd client's own resume after a lost connection does start
// after the last response it received, progress notifications included: a
// connection lost between a notification that ran ahead of events (see
// follow) and those events would lose them inside the client, unseen here.
//
// Events are handed to the consumer by one goroutine per watch; while the
// consumer does not read, the etcd client buffers that watch's responses, so
// other watches and writers do not stall. Watch after Close returns a closed
// channel.
func (s *Store) Watch(ctx context.Context, prefix string) <-chan kvstore.Event {
	out := make(chan kvstore.Event, 16)
	s.mu.Lock()
	if s.closed || ctx.Err() != nil {
		s.mu.Unlock()
		close(out)
		return out
	}
	s.wg.Add(1)
	s.mu.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.ctx, cancel)
	w := &watch{s: s, prefix: prefix, out: out}
	go func() {
		defer s.wg.Done()
		defer close(out)
		defer cancel()
		defer stop()
		w.run(ctx)
	}()
	return out
}

type watch struct {
	s      *Store
	prefix string
	out    chan<- kvstore.Event
	// rev is the highest revision a list or an event delivered: the watch
	// resumes from it, and events at or below it are repeats. Progress
	// notifications never move it (see follow).
	rev int64
	// received is set by follow when etcd answered without an error.
	received bool
	// partial is set while upserts of an unfinished list have been sent: a
	// new list must then start with EventRestart, so the consumer drops
	// keys deleted in between.
	partial bool
}

func (w *watch) run(ctx context.Context) {
	bo := reconcile.NewBackoff(minRetryDelay, maxRetryDelay)
	listed := false
	// renewed is set while the last watch was refused for a stale token
	// and nothing has been received since.
	renewed := false
	for ctx.Err() == nil {
		if !listed {
			if err := w.list(ctx); err != nil {
				if ctx.Err() != nil || !w.send(ctx, errorEvent(w.s, "list "+w.prefix, err)) {
					return
				}
				if !reconcile.Wait(ctx, bo.Next()) {
					return
				}
				continue
			}
			listed = true
			bo.Reset()
		}

		err := w.follow(ctx, bo)
		if w.received {
			renewed, w.received = false, false
		}
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, rpctypes.ErrCompacted):
			// The history from w.rev+1 is gone: start over. No backoff, the
			// re-list is the recovery.
			w.s.log.Debug("watch resumes from a compacted revision, listing again",
				"prefix", w.prefix, "revision", w.rev+1)
			if !w.send(ctx, kvstore.Event{Kind: kvstore.EventRestart, Revision: w.rev}) {
				return
			}
			listed = false
		case staleToken(err) && !renewed:
			// Refused for the token of the stream it was put on, not for
			// the user's rights: watch again at once on a new stream,
			// with a fresh token, as the client does for other calls.
			renewed = true
			w.s.log.Debug("watch refused for a stale token, resuming on a new stream", "prefix", w.prefix, "revision", w.rev+1)
		default:
			w.s.log.Debug("watch ended, resuming", "prefix", w.prefix, "revision", w.rev+1, "err", err)
			if !w.send(ctx, errorEvent(w.s, "watch "+w.prefix, err)) {
				return
			}
			if !reconcile.Wait(ctx, bo.Next()) {
				return
			}
		}
	}
}

// list delivers every key under the prefix and EventListDone.
func (w *watch) list(ctx context.Context) error {
	if !w.restartPartial(ctx) {
		return ctx.Err()
	}
	rev, err := w.s.list(ctx, w.prefix, func(kv *mvccpb.KeyValue) bool {
		w.partial = true
		return w.send(ctx, kvstore.Event{
			Kind: kvstore.EventUpsert, Key: string(kv.Key), Value: kv.Value, Revision: kv.ModRevision,
		})
	}, func() bool { return w.restartPartial(ctx) })
	if err != nil {
		return err
	}
	w.rev = rev
	w.partial = false
	w.send(ctx, kvstore.Event{Kind: kvstore.EventListDone, Revision: rev})
	return nil
}

// restartPartial sends EventRestart if an unfinished list sent upserts.
func (w *watch) restartPartial(ctx context.Context) bool {
	if !w.partial {
		return true
	}
	w.partial = false
	return w.send(ctx, kvstore.Event{Kind: kvstore.EventRestart, Revision: w.rev})
}

// follow watches from after w.rev until the watch ends, and returns why.
func (w *watch) follow(ctx context.Context, bo *reconcile.Backoff) error {
	// WithRequireLeader: a member cut off from its cluster ends the watch
	// (ErrNoLeader) instead of leaving it silently stale.
	gen := w.s.streams.acquire()
	defer w.s.streams.release(gen)
	wctx, cancel := context.WithCancel(streamContext(ctx, gen))
	defer cancel()
	// With progress requested, a watch silent for many intervals is
	// watched again: after a lost connection the client resumes beyond
	// etcd's revision, and etcd confirms no progress on it until some
	// write moves the revision.
	var silent atomic.Bool
	limit := silenceFactor * w.s.progressInterval
	var watchdog *time.Timer
	if limit > 0 {
		watchdog = time.AfterFunc(limit, func() { silent.Store(true); cancel() })
		defer watchdog.Stop()
	}
	// Start at w.rev, not w.rev+1: etcd answers progress requests only
	// when no watch on the stream starts beyond its current revision, so a
	// quiet prefix would never confirm progress. Events at w.rev are
	// repeats, dropped below.
	wch := w.s.client.Watch(wctx, w.prefix,
		clientv3.WithPrefix(), clientv3.WithRev(w.rev), clientv3.WithProgressNotify())
	for resp := range wch {
		if watchdog != nil {
			watchdog.Reset(limit)
		}
		if resp.CompactRevision != 0 {
			return rpctypes.ErrCompacted
		}
		if err := resp.Err(); err != nil {
			if staleToken(err) {
				w.s.streams.retire(gen)
			}
			return err
		}
		w.received = true
		if resp.IsProgressNotify() {
			// Proof the watch is live, not of where it is: with etcd 3.7,
			// a progress notification on a stream carrying ~130 busy
			// watches reached a watch before events at lower revisions did
			// (braid sim, 200 slow consumers on two cores: 208 such events
			// in one run). Dropping those as repeats, or resuming after the
			// notified revision, lost them for good, so the resume point
			// moves only with what was delivered.
			if !w.send(ctx, kvstore.Event{Kind: kvstore.EventProgress, Revision: resp.Header.Revision}) {
				return ctx.Err()
			}
			continue
		}
		// etcd never splits one revision's events across responses, so
		// anything at or below the revision delivered before this response
		// is a repeat.
		base := w.rev
		for _, ev := range resp.Events {
			rev := ev.Kv.ModRevision
			if rev <= base {
				continue
			}
			e := kvstore.Event{Kind: kvstore.EventUpsert, Key: string(ev.Kv.Key), Value: ev.Kv.Value, Revision: rev}
			if ev.Type == mvccpb.DELETE {
				e.Kind, e.Value = kvstore.EventDelete, nil
			}
			if !w.send(ctx, e) {
				return ctx.Err()
			}
			w.rev = rev
		}
		bo.Reset()
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if silent.Load() {
		return fmt.Errorf("no progress from etcd for %v: %w", limit, errWatchClosed)
	}
	return errWatchClosed
}

// requestProgress asks etcd every interval for a progress notification on
// every watch of the store until Close. Watches share a gRPC stream per
// generation (see watchStreams), whose key is the outgoing metadata of
// streamContext; one request covers a stream's watches, and etcd answers
// only once every watch on it is synced.
func (s *Store) requestProgress(interval time.Duration) {
	defer s.wg.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			for _, gen := range s.streams.active() {
				if err := s.client.RequestProgress(streamContext(s.ctx, gen)); err != nil && s.ctx.Err() == nil {
					s.log.Debug("request watch progress", "err", err)
				}
			}
		case <-s.ctx.Done():
			return
		}
	}
}

func (w *watch) send(ctx context.Context, ev kvstore.Event) bool {
	select {
	case w.out <- ev:
		return true
	case <-ctx.Done():
		return false
	}
}

func errorEvent(s *Store, op string, err error) kvstore.Event {
	return kvstore.Event{Kind: kvstore.EventError, Err: s.translate(op, err)}
}
