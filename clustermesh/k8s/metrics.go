package k8s

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the Source's own; its controllers' rounds are counted by
// the reconcile loop metrics (loop="kube_to_mesh", "mesh_to_kube").
type metrics struct {
	writes *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "braid_k8s_writes_total", Help: "Writes to the Kubernetes API, by resource and operation.",
		}, []string{"resource", "op"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.writes} {
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
