package relay

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	keys     prometheus.Gauge
	clusters prometheus.Gauge
	writes   *prometheus.CounterVec
	txns     prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		keys: prometheus.NewGauge(prometheus.GaugeOpts{Name: "braid_relay_keys",
			Help: "Keys in the relay's mirror."}),
		clusters: prometheus.NewGauge(prometheus.GaugeOpts{Name: "braid_relay_clusters",
			Help: "Clusters mirrored by the relay."}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "braid_relay_writes_total",
			Help: "Writes to the relay's mirror, by operation (put, delete, revoke)."}, []string{"op"}),
		txns: prometheus.NewCounter(prometheus.CounterOpts{Name: "braid_relay_transactions_total",
			Help: "Transactions the relay committed to its mirror (each carries a batch of writes)."}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.keys, m.clusters, m.writes, m.txns} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
