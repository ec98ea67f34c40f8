package k8s

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/util/workqueue"

	"github.com/braidmesh/braid/reconcile"
)

// Retry delays of a failing item.
const (
	minItemBackoff = 100 * time.Millisecond
	maxItemBackoff = 10 * time.Second
)

// controller is one direction of the Source: a client-go workqueue served
// by one worker. Handlers only add keys; the worker syncs each key from
// the informers' caches (a level, not an edge), requeues a failed key with
// the reconcile package's backoff (exponential, with jitter, per key) and
// records every sync in a reconcile.Tracker, so it reports on /metrics and
// in Status like every other loop.
type controller[K comparable] struct {
	name     string
	q        workqueue.TypedRateLimitingInterface[K]
	tracker  *reconcile.Tracker
	interval time.Duration // least time between two syncs of a key that add queues
	sync     func(context.Context, K) error
	log      *slog.Logger

	mu      sync.Mutex
	failing map[K]string // keys whose last sync failed, with its error
	lastErr string
	// started is when each recently synced key's last sync started;
	// entries older than interval are pruned as the map grows.
	started   map[K]time.Time
	pruneSize int // len(started) that triggers the next prune
}

// newController makes a controller and its queue; the queue's own
// goroutines start here, so the Source makes controllers in Run.
func newController[K comparable](name string, interval time.Duration, sync func(context.Context, K) error, log *slog.Logger, reg prometheus.Registerer) (*controller[K], error) {
	t, err := reconcile.NewTracker(name, reg)
	if err != nil {
		return nil, fmt.Errorf("new %s controller: %w", name, err)
	}
	return &controller[K]{
		name:      name,
		q:         workqueue.NewTypedRateLimitingQueue[K](newBackoffLimiter[K]()),
		tracker:   t,
		interval:  interval,
		sync:      sync,
		log:       log.With("controller", name),
		failing:   map[K]string{},
		started:   map[K]time.Time{},
		pruneSize: minPruneSize,
	}, nil
}

// minPruneSize is the smallest size of controller.started that is pruned.
const minPruneSize = 256

// add queues k for a sync that starts at least interval after k's last
// one: a lone event after a quiet spell is synced at once, a burst of
// events for k costs one sync per interval (the workqueue folds the
// events that arrive meanwhile into one). It never blocks.
func (c *controller[K]) add(k K) {
	c.mu.Lock()
	wait := c.interval - time.Since(c.started[k])
	c.mu.Unlock()
	if wait <= 0 {
		c.q.Add(k)
		return
	}
	c.q.AddAfter(k, wait)
}

// markStarted records that a sync of k starts now.
func (c *controller[K]) markStarted(k K, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.started[k] = now
	if len(c.started) < c.pruneSize {
		return
	}
	for key, t := range c.started {
		if now.Sub(t) >= c.interval {
			delete(c.started, key)
		}
	}
	c.pruneSize = max(minPruneSize, 2*len(c.started))
}

// addNow queues k at once.
func (c *controller[K]) addNow(k K) { c.q.Add(k) }

// run syncs keys until ctx is done, then shuts the queue down.
func (c *controller[K]) run(ctx context.Context) {
	stop := context.AfterFunc(ctx, c.q.ShutDown)
	defer stop()
	for c.next(ctx) {
	}
	c.q.ShutDown()
}

func (c *controller[K]) next(ctx context.Context) bool {
	k, shutdown := c.q.Get()
	if shutdown {
		return false
	}
	defer c.q.Done(k)
	if ctx.Err() != nil {
		return false
	}
	start := time.Now()
	c.markStarted(k, start)
	err := c.sync(ctx, k)
	if ctx.Err() != nil {
		return false
	}
	c.tracker.Done(start, err)
	c.mu.Lock()
	if err != nil {
		c.failing[k] = err.Error()
		c.lastErr = err.Error()
	} else {
		delete(c.failing, k)
	}
	c.mu.Unlock()
	if err != nil {
		c.log.Warn("sync failed, retrying", "key", k, "err", err, "retries", c.q.NumRequeues(k))
		c.q.AddRateLimited(k)
		return true
	}
	c.q.Forget(k)
	return true
}

// problem describes the keys being retried, or returns "".
func (c *controller[K]) problem() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch len(c.failing) {
	case 0:
		return ""
	case 1:
		for k, e := range c.failing {
			return fmt.Sprintf("%s: %v failing, retrying: %s", c.name, k, e)
		}
	}
	return fmt.Sprintf("%s: %d keys failing, retrying; last error: %s", c.name, len(c.failing), c.lastErr)
}

// backoffLimiter is a workqueue rate limiter giving each failing key its
// own reconcile.Backoff, so retries double with jitter per key.
type backoffLimiter[K comparable] struct {
	mu    sync.Mutex
	items map[K]*limited
}

type limited struct {
	bo    *reconcile.Backoff
	fails int
}

func newBackoffLimiter[K comparable]() *backoffLimiter[K] {
	return &backoffLimiter[K]{items: map[K]*limited{}}
}

func (l *backoffLimiter[K]) When(k K) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	it := l.items[k]
	if it == nil {
		it = &limited{bo: reconcile.NewBackoff(minItemBackoff, maxItemBackoff)}
		l.items[k] = it
	}
	it.fails++
	return it.bo.Next()
}

func (l *backoffLimiter[K]) Forget(k K) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.items, k)
}

func (l *backoffLimiter[K]) NumRequeues(k K) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if it := l.items[k]; it != nil {
		return it.fails
	}
	return 0
}

var _ workqueue.TypedRateLimiter[string] = (*backoffLimiter[string])(nil)
