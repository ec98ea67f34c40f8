package reconcile

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Status is how a loop's rounds went. It is a copy: safe to keep.
type Status struct {
	// Name is the loop's name (Config.Name).
	Name string `json:"name"`
	// Rounds counts finished rounds, failed ones included.
	Rounds uint64 `json:"rounds"`
	// LastSuccess is when the last successful round ended; zero if none.
	LastSuccess time.Time `json:"lastSuccess,omitzero"`
	// LastError is the error of the last round if it failed, else empty.
	LastError string `json:"lastError,omitempty"`
	// LastFailure is when a round last failed; zero if none.
	LastFailure time.Time `json:"lastFailure,omitzero"`
	// ConsecutiveFailures counts the failed rounds since the last success.
	ConsecutiveFailures int `json:"consecutiveFailures"`
}

// Problem describes a failing loop for a status page's problem list, or
// returns "" when its last round succeeded.
func (s Status) Problem() string {
	if s.ConsecutiveFailures == 0 {
		return ""
	}
	return fmt.Sprintf("%s: %d failed rounds in a row, retrying: %s", s.Name, s.ConsecutiveFailures, s.LastError)
}

// Tracker records the rounds of one named controller in its Status and
// metrics. Every Loop has one; a controller that runs its own queue (a
// client-go workqueue) makes one with NewTracker and calls Done after each
// item, so it reports exactly like a Loop.
type Tracker struct {
	name string
	m    loopMetrics // zero when unregistered

	mu sync.Mutex
	st Status
}

// NewTracker returns a Tracker for the loop name, registering the loop
// metrics with reg (nil: none). Trackers of several loops share one
// registry; their series differ by the loop label.
func NewTracker(name string, reg prometheus.Registerer) (*Tracker, error) {
	if name == "" {
		return nil, errors.New("new reconcile tracker: empty loop name")
	}
	t := &Tracker{name: name, st: Status{Name: name}}
	if reg != nil {
		vecs, err := registerVecs(reg)
		if err != nil {
			return nil, fmt.Errorf("new reconcile tracker %s: %w", name, err)
		}
		t.m = vecs.with(name)
	}
	return t, nil
}

// Done records a round that started at start and ended now with err.
func (t *Tracker) Done(start time.Time, err error) {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.st.Rounds++
	if err != nil {
		t.st.LastError = err.Error()
		t.st.LastFailure = now
		t.st.ConsecutiveFailures++
	} else {
		t.st.LastError = ""
		t.st.LastSuccess = now
		t.st.ConsecutiveFailures = 0
	}
	if t.m.duration == nil {
		return
	}
	t.m.duration.Observe(now.Sub(start).Seconds())
	t.m.consecutive.Set(float64(t.st.ConsecutiveFailures))
	if err != nil {
		t.m.failures.Inc()
	} else {
		t.m.lastSuccess.Set(float64(now.UnixNano()) / 1e9)
	}
}

// Status returns the rounds' outcome so far. It never blocks on a round.
func (t *Tracker) Status() Status {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.st
}

// vecs are the metric families every loop of a registry shares.
type vecs struct {
	duration    *prometheus.HistogramVec
	failures    *prometheus.CounterVec
	consecutive *prometheus.GaugeVec
	lastSuccess *prometheus.GaugeVec
}

// loopMetrics are one loop's series.
type loopMetrics struct {
	duration    prometheus.Observer
	failures    prometheus.Counter
	consecutive prometheus.Gauge
	lastSuccess prometheus.Gauge
}

func (v vecs) with(name string) loopMetrics {
	m := loopMetrics{
		duration:    v.duration.WithLabelValues(name),
		failures:    v.failures.WithLabelValues(name),
		consecutive: v.consecutive.WithLabelValues(name),
		lastSuccess: v.lastSuccess.WithLabelValues(name),
	}
	m.failures.Add(0) // export the series before the first failure
	return m
}

const labelLoop = "loop"

// registerVecs registers the families with reg, or returns those already
// registered there by another loop.
func registerVecs(reg prometheus.Registerer) (vecs, error) {
	const ns, sub = "braid", "reconcile"
	v := vecs{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "duration_seconds",
			Help:    "Duration of reconcile rounds, by loop.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10)}, []string{labelLoop}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "failures_total",
			Help: "Failed reconcile rounds, by loop."}, []string{labelLoop}),
		consecutive: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "consecutive_failures",
			Help: "Failed reconcile rounds since the last success, by loop."}, []string{labelLoop}),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "last_success_timestamp_seconds",
			Help: "Unix time of the last successful reconcile round, by loop."}, []string{labelLoop}),
	}
	var err error
	if v.duration, err = register(reg, v.duration); err != nil {
		return vecs{}, err
	}
	if v.failures, err = register(reg, v.failures); err != nil {
		return vecs{}, err
	}
	if v.consecutive, err = register(reg, v.consecutive); err != nil {
		return vecs{}, err
	}
	if v.lastSuccess, err = register(reg, v.lastSuccess); err != nil {
		return vecs{}, err
	}
	return v, nil
}

func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	var zero C
	return zero, fmt.Errorf("register reconcile metrics: %w", err)
}
