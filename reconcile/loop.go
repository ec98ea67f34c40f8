package reconcile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Func makes the actual state equal to the desired state. resync is true
// for a periodic resync round (and for the retries of a failed one): the
// round should then also re-read state it normally trusts and prune
// leftovers. A nil error ends the backoff; an error is retried with
// backoff unless wrapped with Permanent.
type Func func(ctx context.Context, resync bool) error

// Config configures a Loop.
type Config struct {
	// Name labels the loop's metrics and Status: a fixed string per
	// controller ("datapath", "tunnel_peers"), never an object's name.
	Name string
	// Resync is how often a round runs without a trigger; zero disables.
	Resync time.Duration
	// MinInterval keeps rounds at least this far apart: a lone trigger
	// after a quiet spell runs at once, a burst costs one round per
	// MinInterval. Zero means no limit.
	MinInterval time.Duration
	// Pace, if positive, also spaces a burst's rounds by 1+Pace times the
	// duration of the round before, from its start: a loop whose rounds
	// recompute a large state (an agent's cold sync of hundreds of
	// clusters) then spends at most 1/(1+Pace) of the time in rounds
	// while the burst lasts, applying it in fewer, larger batches instead
	// of starving what produces the burst. A lone trigger after a quiet
	// spell still runs at once.
	Pace float64
	// MinBackoff and MaxBackoff bound the delay before retrying a failed
	// round; zero means DefaultMinBackoff and DefaultMaxBackoff.
	MinBackoff, MaxBackoff time.Duration
}

// Loop runs one controller's rounds. See the package doc.
type Loop struct {
	cfg     Config
	fn      Func
	log     *slog.Logger
	tracker *Tracker
	trigger chan struct{}
}

// New returns a Loop calling fn. It starts nothing. log and reg may be nil.
func New(cfg Config, fn Func, log *slog.Logger, reg prometheus.Registerer) (*Loop, error) {
	if fn == nil {
		return nil, fmt.Errorf("new reconcile loop %s: nil func", cfg.Name)
	}
	t, err := NewTracker(cfg.Name, reg)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Loop{cfg: cfg, fn: fn, log: log.With("loop", cfg.Name), tracker: t, trigger: make(chan struct{}, 1)}, nil
}

// Trigger asks for a round. It never blocks; triggers that arrive before
// the round starts are coalesced into it.
func (l *Loop) Trigger() {
	select {
	case l.trigger <- struct{}{}:
	default: // a round is already pending
	}
}

// Status returns how the loop's rounds went. It never blocks on a round.
func (l *Loop) Status() Status { return l.tracker.Status() }

// permanent marks an error that ends Run.
type permanent struct{ err error }

func (p *permanent) Error() string { return p.err.Error() }
func (p *permanent) Unwrap() error { return p.err }

// Permanent wraps err so that Run returns it instead of retrying. It
// returns nil for a nil err.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanent{err}
}

// Run runs a round at once, then on every Trigger, every Config.Resync and
// after each failure's backoff, until ctx is done (it returns nil) or a
// round returns a Permanent error (it returns the wrapped error). A
// trigger during a failure's backoff runs a round at once: the new desired
// state may succeed; the backoff keeps growing until a round succeeds.
func (l *Loop) Run(ctx context.Context) error {
	var resyncC <-chan time.Time
	if l.cfg.Resync > 0 {
		t := time.NewTicker(l.cfg.Resync)
		defer t.Stop()
		resyncC = t.C
	}
	bo := NewBackoff(l.cfg.MinBackoff, l.cfg.MaxBackoff)
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	var (
		retryC  <-chan time.Time
		resync  bool // a resync round is due (or failed and is retried)
		started time.Time
		took    time.Duration // the last round's duration, when Pace is set
	)
	for first := true; ; first = false {
		if !first {
			select {
			case <-ctx.Done():
				return nil
			case <-l.trigger:
			case <-resyncC:
				resync = true
			case <-retryC:
				retryC = nil
			}
			gap := max(l.cfg.MinInterval, time.Duration((1+l.cfg.Pace)*float64(took)))
			if wait := gap - time.Since(started); wait > 0 {
				if !Wait(ctx, wait) {
					return nil
				}
			}
			// The round reads the state as it is now, so it covers any
			// trigger that arrived meanwhile.
			select {
			case <-l.trigger:
			default:
			}
		}
		started = time.Now()
		err := l.fn(ctx, resync)
		if l.cfg.Pace > 0 {
			took = time.Since(started)
		}
		if ctx.Err() != nil {
			return nil
		}
		l.tracker.Done(started, err)
		var perm *permanent
		if errors.As(err, &perm) {
			return perm.err
		}
		if err == nil {
			resync = false
			bo.Reset()
			retry.Stop()
			retryC = nil
			continue
		}
		d := bo.Next()
		l.log.Warn("reconcile failed, retrying", "err", err, "retry_in", d.Round(time.Millisecond))
		retry.Reset(d) // since Go 1.23 no stale tick survives Reset
		retryC = retry.C
	}
}
