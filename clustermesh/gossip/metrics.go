package gossip

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	members *prometheus.GaugeVec
	sent    *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		members: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "braid", Subsystem: "gossip", Name: "members",
			Help: "Mesh nodes by gossip state as this node sees them."}, []string{"state"}),
		sent: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "braid", Subsystem: "gossip", Name: "sent_bytes",
			Help: "Bytes of gossip this node sent since it started, by kind (packet: UDP, stream: TCP)."}, []string{"kind"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.members, m.sent} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register gossip metrics: %w", err)
		}
	}
	return m, nil
}
