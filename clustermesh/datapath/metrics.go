package datapath

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are labelled by map name only (a fixed set), never by service or
// cluster. Run's duration, failures and last success are the reconcile
// loop's (braid_reconcile_*{loop="datapath"}).
type metrics struct {
	entries, capacity, pressure *prometheus.GaugeVec
	writes                      *prometheus.CounterVec
	errors                      *prometheus.CounterVec
	fallback                    prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	const ns, sub = "braid", "datapath"
	m := &metrics{
		entries: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "map_entries",
			Help: "Entries Braid keeps in each bpf map."}, []string{"map"}),
		capacity: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "map_capacity",
			Help: "Maximum entries of each bpf map."}, []string{"map"}),
		pressure: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "map_pressure_ratio",
			Help: "Entries divided by capacity of each bpf map."}, []string{"map"}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "map_writes_total",
			Help: "Entries written to bpf maps by reconciles, by operation."}, []string{"map", "op"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "reconcile_errors_total",
			Help: "Failed map operations during reconciles."}, []string{"map"}),
	}
	m.fallback = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "services_fallback",
		Help: "Service frontends (per address family) with no healthy backend, served from every ready one instead; each pick counts braid_datapath_packets_total{counter=\"fallback\"}."})
	if reg == nil {
		return m, nil
	}
	if err := reg.Register(m.fallback); err != nil {
		return nil, fmt.Errorf("register datapath metrics: %w", err)
	}
	for _, c := range []prometheus.Collector{m.entries, m.capacity, m.pressure, m.writes, m.errors} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register datapath metrics: %w", err)
		}
	}
	return m, nil
}

// MapStatus is one map's fill level after the last reconcile.
type MapStatus struct {
	Name     string  `json:"name"`
	Entries  int     `json:"entries"`
	Desired  int     `json:"desired"`
	Capacity int     `json:"capacity"`
	Pressure float64 `json:"pressure"`
}

// Status is a snapshot for the status page. It is a copy: safe to keep.
type Status struct {
	Maps        []MapStatus `json:"maps"`
	LastSuccess time.Time   `json:"lastSuccess"`
	LastError   string      `json:"lastError,omitempty"`
	// Fallback counts services none of whose ready backends is on a node
	// known alive: they are served from every ready backend.
	Fallback int `json:"fallback,omitempty"`
	// PolicyRevision is the Desired.PolicyRevision of the last reconcile
	// that succeeded with a policy (not KeepPolicy): what the maps enforce.
	PolicyRevision string `json:"policyRevision,omitempty"`
}

// Health is OK or Degraded with reasons.
type Health struct {
	OK      bool     `json:"ok"`
	Reasons []string `json:"reasons,omitempty"`
}

// Status returns the last reconcile's outcome. It never blocks on the
// kernel.
func (r *Reconciler) Status() Status {
	r.statusMu.Lock()
	defer r.statusMu.Unlock()
	s := r.status
	s.Maps = append([]MapStatus(nil), r.status.Maps...)
	return s
}

// Health is Degraded when the last reconcile failed or a map is fuller than
// Config.PressureThreshold (90 % by default), or when it wants more entries
// than the map holds.
func (r *Reconciler) Health() Health {
	s := r.Status()
	h := Health{OK: true}
	if s.LastError != "" {
		h.Reasons = append(h.Reasons, "last reconcile failed: "+s.LastError)
	}
	for _, m := range s.Maps {
		if m.Capacity > 0 && m.Desired > m.Capacity {
			h.Reasons = append(h.Reasons, fmt.Sprintf("map %s: %d entries wanted, capacity %d", m.Name, m.Desired, m.Capacity))
		} else if m.Pressure > r.cfg.PressureThreshold {
			h.Reasons = append(h.Reasons, fmt.Sprintf("map %s at %.0f%% of %d entries", m.Name, 100*m.Pressure, m.Capacity))
		}
	}
	h.OK = len(h.Reasons) == 0
	return h
}
