package publish

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	writes  *prometheus.CounterVec
	errors  prometheus.Counter
	entries *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "braid", Subsystem: "publish", Name: "writes_total",
			Help: "Writes to the kvstore by kind and operation (put, delete).",
		}, []string{"kind", "op"}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "braid", Subsystem: "publish", Name: "errors_total",
			Help: "Failed publish passes, lease renewals and sessions.",
		}),
		entries: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "braid", Subsystem: "publish", Name: "entries",
			Help: "Desired entries by kind.",
		}, []string{"kind"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.writes, m.errors, m.entries} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register publish metrics: %w", err)
			}
		}
	}
	return m, nil
}
