package k8s

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	duration    prometheus.Histogram
	errors      prometheus.Counter
	lastSuccess prometheus.Gauge
	writes      *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "braid_k8s_pass_duration_seconds", Help: "Duration of a Kubernetes source pass.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
		}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "braid_k8s_pass_errors_total", Help: "Kubernetes source passes that failed.",
		}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "braid_k8s_last_success_timestamp_seconds", Help: "When a Kubernetes source pass last succeeded.",
		}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "braid_k8s_writes_total", Help: "Writes to the Kubernetes API, by resource and operation.",
		}, []string{"resource", "op"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.duration, m.errors, m.lastSuccess, m.writes} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				continue
			}
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}
