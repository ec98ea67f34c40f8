package meshsim

import (
	"cmp"
	"slices"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/cmd/braid/benchkit"
)

// obsKey names what a consumer observed: a service's backends, or a
// cluster joining or leaving (service empty).
type obsKey struct {
	consumer int // global consumer index
	cluster  clustermesh.ClusterName
	service  string
}

// obs is one observation: when, and what it showed.
type obs struct {
	t    int64
	want uint64
}

// observations is what every consumer reported, in the order each
// reported it.
type observations struct {
	byKey map[obsKey][]obs
	raw   map[int]map[string]int64 // consumer -> raw value -> time
}

func newObservations() *observations {
	return &observations{byKey: map[obsKey][]obs{}, raw: map[int]map[string]int64{}}
}

func (o *observations) add(consumer int, ev event) {
	switch ev.E {
	case evService:
		k := obsKey{consumer, ev.Cluster, ev.Service}
		o.byKey[k] = append(o.byKey[k], obs{ev.T, ev.Digest})
	case evJoined, evGone:
		want := wantJoined
		if ev.E == evGone {
			want = wantGone
		}
		k := obsKey{consumer, ev.Cluster, ""}
		o.byKey[k] = append(o.byKey[k], obs{ev.T, want})
	case evRaw:
		if o.raw[consumer] == nil {
			o.raw[consumer] = map[string]int64{}
		}
		if _, ok := o.raw[consumer][ev.Raw]; !ok {
			o.raw[consumer][ev.Raw] = ev.T
		}
	}
}

// consumerInfo is what matching needs of a consumer: its cluster, whose
// own changes it does not see.
type consumerInfo struct {
	cluster clustermesh.ClusterName
}

// matched is the outcome of matching ops with observations.
type matched struct {
	// latency by op kind, and all endpoint changes together.
	latency    map[string]benchkit.Latencies
	endpoints  benchkit.Latencies
	seen       int // (op, consumer) pairs observed
	superseded int // not observed, but a later change of the same target (or its cluster's leave) came first
	missing    int // not observed, no later change
	// missingOps are the first few missing ones, for the report.
	missingOps []op
	// slowest are the slowest endpoint changes, slowest first, each with
	// the join or leave that started last before it, for the report.
	slowest []slowChange
}

// slowChange is an endpoint change's propagation to one consumer.
type slowChange struct {
	op        op
	consumer  int
	latency   time.Duration
	lastChurn *op // the last join or leave started before op, if any
}

// maxSlowest is how many of the slowest endpoint changes the report names.
const maxSlowest = 5

// noteSlow keeps c if it is among the slowest maxSlowest so far.
func (m *matched) noteSlow(c slowChange) {
	if len(m.slowest) == maxSlowest && c.latency <= m.slowest[maxSlowest-1].latency {
		return
	}
	i, _ := slices.BinarySearchFunc(m.slowest, c.latency, func(s slowChange, d time.Duration) int { return cmp.Compare(d, s.latency) })
	m.slowest = slices.Insert(m.slowest, i, c)
	if len(m.slowest) > maxSlowest {
		m.slowest = m.slowest[:maxSlowest]
	}
}

// matchOps matches each op with the first observation, by each consumer
// not in the op's cluster, of the op's target showing what the op wanted,
// taken at or after the op started and before a later op wanted the same
// again. An op never observed is superseded when a later op changed the
// same target (the publisher may write both at once) or its cluster left,
// missing otherwise.
func matchOps(ops []op, consumers []consumerInfo, o *observations) matched {
	m := matched{latency: map[string]benchkit.Latencies{}}
	type target struct {
		cluster clustermesh.ClusterName
		service string
	}
	// later[i] is the start of the next op on the same target, or of the
	// next leave of the same cluster (a publisher stopped to leave may not
	// have written the last changes), whichever is first; again[i] of the
	// next one wanting the same. Zero if none.
	later, again := make([]int64, len(ops)), make([]int64, len(ops))
	lastOn := map[target]int{}
	lastWant := map[target]map[uint64]int{}
	nextLeave := map[clustermesh.ClusterName]int64{}
	for i := len(ops) - 1; i >= 0; i-- {
		t := target{ops[i].cluster, ops[i].service}
		if j, ok := lastOn[t]; ok {
			later[i] = ops[j].start
		}
		if l, ok := nextLeave[ops[i].cluster]; ok && ops[i].kind != opLeave && (later[i] == 0 || l < later[i]) {
			later[i] = l
		}
		if j, ok := lastWant[t][ops[i].want]; ok {
			again[i] = ops[j].start
		}
		lastOn[t] = i
		if lastWant[t] == nil {
			lastWant[t] = map[uint64]int{}
		}
		lastWant[t][ops[i].want] = i
		if ops[i].kind == opLeave {
			nextLeave[ops[i].cluster] = ops[i].start
		}
	}
	var lastChurn *op
	for i, op := range ops {
		if op.kind == opJoin || op.kind == opLeave {
			lastChurn = &ops[i]
		}
		for ci, c := range consumers {
			if c.cluster == op.cluster {
				continue
			}
			found := false
			for _, ob := range o.byKey[obsKey{ci, op.cluster, op.service}] {
				if ob.t < op.start || ob.want != op.want || (again[i] != 0 && ob.t >= again[i]) {
					continue
				}
				d := time.Duration(ob.t - op.start)
				m.latency[op.kind] = append(m.latency[op.kind], d)
				if op.service != "" {
					m.endpoints = append(m.endpoints, d)
					m.noteSlow(slowChange{op: op, consumer: ci, latency: d, lastChurn: lastChurn})
				}
				m.seen++
				found = true
				break
			}
			switch {
			case found:
			case later[i] != 0:
				m.superseded++
			default:
				m.missing++
				if len(m.missingOps) < 5 {
					m.missingOps = append(m.missingOps, op)
				}
			}
		}
	}
	return m
}

// matchRaw returns the raw baseline's latencies: each value put, to each
// raw consumer's watch delivering it, and how many were not delivered.
func matchRaw(puts map[string]int64, rawConsumers []int, o *observations) (benchkit.Latencies, int) {
	var l benchkit.Latencies
	missing := 0
	for _, ci := range rawConsumers {
		got := o.raw[ci]
		for v, start := range puts {
			t, ok := got[v]
			if !ok {
				missing++
				continue
			}
			l = append(l, time.Duration(t-start))
		}
	}
	return l, missing
}

// Endpoints is how many endpoint changes were observed, over all
// consumers.
func (m matched) Endpoints() int { return len(m.endpoints) }

// Missing is how many (change, consumer) pairs were never observed
// although no later change superseded them.
func (m matched) Missing() int { return m.missing }
