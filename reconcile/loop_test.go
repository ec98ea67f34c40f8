package reconcile_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/braidmesh/braid/reconcile"
)

// round is one call of a loop's Func, as the test sees it.
type round struct {
	resync bool
	reply  chan error // the test's answer: the round's result
}

// harness runs a Loop whose rounds block until the test answers them, so
// every step is a deterministic sync point.
type harness struct {
	loop   *reconcile.Loop
	reg    *prometheus.Registry
	rounds chan round
	done   chan error
}

func start(t *testing.T, cfg reconcile.Config) *harness {
	t.Helper()
	h := &harness{reg: prometheus.NewRegistry(), rounds: make(chan round), done: make(chan error, 1)}
	var err error
	h.loop, err = reconcile.New(cfg, func(ctx context.Context, resync bool) error {
		r := round{resync: resync, reply: make(chan error)}
		select {
		case h.rounds <- r:
		case <-ctx.Done():
			return ctx.Err()
		}
		select {
		case err := <-r.reply:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}, nil, h.reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	go func() { h.done <- h.loop.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-h.done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return h
}

// next waits for the loop's next round.
func (h *harness) next(t *testing.T) round {
	t.Helper()
	select {
	case r := <-h.rounds:
		return r
	case err := <-h.done:
		t.Fatalf("Run returned %v, want another round", err)
	case <-time.After(30 * time.Second):
		t.Fatal("no round within 30s")
	}
	return round{}
}

func TestTriggersCoalesce(t *testing.T) {
	h := start(t, reconcile.Config{Name: "test"})
	first := h.next(t) // Run starts with a round
	if first.resync {
		t.Error("first round is a resync")
	}
	// Triggers during a round: exactly one more round.
	for range 5 {
		h.loop.Trigger()
	}
	first.reply <- nil
	second := h.next(t)
	second.reply <- nil
	// Were a third round pending, it would come before the marker's:
	// Trigger holds at most one.
	h.loop.Trigger()
	marker := h.next(t)
	marker.reply <- nil
	if st := h.loop.Status(); st.Rounds < 2 || st.ConsecutiveFailures != 0 || st.LastSuccess.IsZero() {
		t.Errorf("status %+v, want successes", st)
	}
}

func TestFailureIsRetriedWithoutTrigger(t *testing.T) {
	h := start(t, reconcile.Config{Name: "peers", MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond})
	fault := errors.New("injected fault")
	r := h.next(t)
	for i := 1; i <= 3; i++ {
		r.reply <- fault
		// Nothing triggers: only the backoff's retry starts this round,
		// and the failure is recorded before it starts.
		r = h.next(t)
		st := h.loop.Status()
		if st.ConsecutiveFailures != i || st.LastError != fault.Error() {
			t.Fatalf("after %d failures: status %+v", i, st)
		}
		if p := st.Problem(); !strings.Contains(p, "peers") || !strings.Contains(p, "injected fault") {
			t.Errorf("problem %q names neither the loop nor the error", p)
		}
	}
	r.reply <- nil
	// A marker round proves the success was recorded.
	h.loop.Trigger()
	m := h.next(t)
	st := h.loop.Status()
	m.reply <- nil
	if st.ConsecutiveFailures != 0 || st.LastError != "" {
		t.Errorf("after recovery: status %+v", st)
	}
	if got := counterValue(t, h.reg, "braid_reconcile_failures_total", "peers"); got != 3 {
		t.Errorf("failures_total = %v, want 3", got)
	}
}

func TestResyncRoundsAreFlaggedUntilTheySucceed(t *testing.T) {
	h := start(t, reconcile.Config{Name: "resync", Resync: time.Millisecond, MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond})
	h.next(t).reply <- nil
	r := h.next(t) // no trigger: only the resync ticker starts rounds now
	if !r.resync {
		t.Fatal("round started by the ticker is not a resync")
	}
	r.reply <- errors.New("resync failed")
	if r := h.next(t); !r.resync {
		t.Error("retry of a failed resync is not a resync")
	} else {
		r.reply <- nil
	}
}

func TestPermanentErrorEndsRun(t *testing.T) {
	reg := prometheus.NewRegistry()
	refused := errors.New("refused")
	l, err := reconcile.New(reconcile.Config{Name: "perm"}, func(context.Context, bool) error {
		return reconcile.Permanent(refused)
	}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Run(t.Context()); err != refused {
		t.Fatalf("Run = %v, want the permanent error unwrapped", err)
	}
	if st := l.Status(); st.ConsecutiveFailures != 1 {
		t.Errorf("status %+v, want the failure recorded", st)
	}
}

func TestMinIntervalSpacesRounds(t *testing.T) {
	const gap = 20 * time.Millisecond
	var mu sync.Mutex
	var starts []time.Time
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	l, err := reconcile.New(reconcile.Config{Name: "spaced", MinInterval: gap}, func(context.Context, bool) error {
		mu.Lock()
		defer mu.Unlock()
		starts = append(starts, time.Now())
		if len(starts) == 3 {
			cancel()
		}
		return nil
	}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- l.Run(ctx) }()
	go func() {
		for ctx.Err() == nil {
			l.Trigger()
			time.Sleep(time.Millisecond)
		}
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Correctness, not speed: rounds may come later, never sooner.
	for i := 1; i < len(starts); i++ {
		if d := starts[i].Sub(starts[i-1]); d < gap {
			t.Errorf("rounds %d and %d %v apart, want at least %v", i-1, i, d, gap)
		}
	}
}

func TestLoopsShareARegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	for _, name := range []string{"a", "b"} {
		if _, err := reconcile.NewTracker(name, reg); err != nil {
			t.Fatalf("tracker %s: %v", name, err)
		}
	}
	if _, err := reconcile.NewTracker("", reg); err == nil {
		t.Error("empty name accepted")
	}
	n, err := testutil.GatherAndCount(reg, "braid_reconcile_failures_total")
	if err != nil || n != 2 {
		t.Errorf("failures_total series = %d, %v; want one per loop", n, err)
	}
}

func TestBackoffGrowsWithJitterAndResets(t *testing.T) {
	b := reconcile.NewBackoff(100*time.Millisecond, 800*time.Millisecond)
	bounds := [][2]time.Duration{{50, 150}, {100, 300}, {200, 600}, {400, 1200}, {400, 1200}}
	for i, bd := range bounds {
		d := b.Next()
		if d < bd[0]*time.Millisecond || d > bd[1]*time.Millisecond+1 {
			t.Errorf("delay %d = %v, want within [%dms, %dms]", i, d, bd[0], bd[1])
		}
	}
	b.Reset()
	if d := b.Next(); d > 150*time.Millisecond+1 {
		t.Errorf("after Reset: %v, want the first delay again", d)
	}
}

func counterValue(t *testing.T, reg *prometheus.Registry, name, loop string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "loop" && lp.GetValue() == loop {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s{loop=%q}", name, loop)
	return 0
}

func TestPaceSpacesRoundsByTheirDuration(t *testing.T) {
	const pace = 2
	var mu sync.Mutex
	var starts []time.Time
	var took []time.Duration
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	l, err := reconcile.New(reconcile.Config{Name: "paced", Pace: pace}, func(context.Context, bool) error {
		start := time.Now()
		time.Sleep(10 * time.Millisecond) // a round's work
		mu.Lock()
		defer mu.Unlock()
		starts = append(starts, start)
		took = append(took, time.Since(start))
		if len(starts) == 4 {
			cancel()
		}
		return nil
	}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- l.Run(ctx) }()
	go func() {
		for ctx.Err() == nil {
			l.Trigger()
			time.Sleep(time.Millisecond)
		}
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Correctness, not speed: rounds may come later, never sooner. The
	// loop measures a round a little longer than the round itself does.
	for i := 1; i < len(starts); i++ {
		if d, want := starts[i].Sub(starts[i-1]), (1+pace)*took[i-1]; d < want {
			t.Errorf("rounds %d and %d %v apart, want at least %v (1+Pace times %v)", i-1, i, d, want, took[i-1])
		}
	}
}
