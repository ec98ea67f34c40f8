package reconcile

import (
	"context"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// Defaults of Config's backoff bounds.
const (
	DefaultMinBackoff = 100 * time.Millisecond
	DefaultMaxBackoff = 10 * time.Second
)

// Backoff is an exponential backoff with jitter: each delay doubles up to
// max and is drawn from ±50 % around it. Not safe for concurrent use.
type Backoff struct {
	b backoff.ExponentialBackOff
}

// NewBackoff returns a Backoff whose first delay is about min and whose
// delays stop growing at max. Zero values mean DefaultMinBackoff and
// DefaultMaxBackoff.
func NewBackoff(min, max time.Duration) *Backoff {
	if min <= 0 {
		min = DefaultMinBackoff
	}
	if max <= 0 {
		max = DefaultMaxBackoff
	}
	max = maxDuration(min, max)
	b := &Backoff{b: backoff.ExponentialBackOff{
		InitialInterval:     min,
		RandomizationFactor: 0.5,
		Multiplier:          2,
		MaxInterval:         max,
	}}
	b.b.Reset()
	return b
}

func maxDuration(a, b time.Duration) time.Duration {
	if a > b {
		return a
	}
	return b
}

// Next returns the delay before the next attempt and grows the following.
func (b *Backoff) Next() time.Duration { return b.b.NextBackOff() }

// Reset makes the next delay the first again; call it after a success.
func (b *Backoff) Reset() { b.b.Reset() }

// Wait waits for d or for ctx to end, and reports whether d elapsed.
func Wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
