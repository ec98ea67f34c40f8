package remote

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/braidmesh/braid/clustermesh"
)

type metrics struct {
	entries        *prometheus.GaugeVec
	invalid        *prometheus.CounterVec
	failures       *prometheus.CounterVec
	invalidConfigs prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		entries: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "braid", Subsystem: "remote", Name: "entries",
			Help: "Entries mirrored from each remote cluster, by kind.",
		}, []string{"cluster", "kind"}),
		invalid: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "braid", Subsystem: "remote", Name: "invalid_entries_total",
			Help: "Entries rejected by validation, by remote cluster and kind.",
		}, []string{"cluster", "kind"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "braid", Subsystem: "remote", Name: "watch_failures_total",
			Help: "Watch failures by remote cluster.",
		}, []string{"cluster"}),
		invalidConfigs: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "braid", Subsystem: "remote", Name: "invalid_cluster_configs_total",
			Help: "Cluster configs rejected by validation.",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.entries, m.invalid, m.failures, m.invalidConfigs} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register remote metrics: %w", err)
			}
		}
	}
	return m, nil
}

// forget drops a departed cluster's series.
func (m *metrics) forget(name clustermesh.ClusterName) {
	m.entries.DeletePartialMatch(prometheus.Labels{"cluster": string(name)})
	m.failures.DeleteLabelValues(string(name))
}
