package meshsim

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh"
)

// TestMatchOps: each change is matched with the first observation of its
// target showing what it wanted, after it started and before a later
// change wanted the same again; an unseen change is superseded when a
// later change of the same service (or its cluster's leave) followed,
// missing otherwise; a consumer never judges its own cluster's changes.
func TestMatchOps(t *testing.T) {
	ms := func(n int) int64 { return int64(n) * int64(time.Millisecond) }
	ops := []op{
		{kind: opFlap, cluster: "a", service: "default/s", want: 10, start: ms(0)},    // seen at 5
		{kind: opFlap, cluster: "a", service: "default/s", want: 11, start: ms(1)},    // coalesced into the next: superseded
		{kind: opFlap, cluster: "a", service: "default/s", want: 10, start: ms(2)},    // seen at 7, not at 5 (before it started)
		{kind: opScaleUp, cluster: "b", service: "default/t", want: 20, start: ms(3)}, // never seen, nothing later: missing
		{kind: opFlap, cluster: "c", service: "default/u", want: 30, start: ms(4)},    // unseen, then c left: superseded
		{kind: opLeave, cluster: "c", want: wantGone, start: ms(6)},                   // seen at 9
	}
	consumers := []consumerInfo{{cluster: "x"}, {cluster: "a"}}
	o := newObservations()
	o.add(0, event{E: evService, Cluster: "a", Service: "default/s", Digest: 10, T: ms(5)})
	o.add(0, event{E: evService, Cluster: "a", Service: "default/s", Digest: 10, T: ms(7)})
	o.add(0, event{E: evGone, Cluster: "c", T: ms(9)})
	o.add(1, event{E: evGone, Cluster: "c", T: ms(10)})
	m := matchOps(ops, consumers, o)
	if m.seen != 3 || m.superseded != 4 || m.missing != 2 {
		// Consumer 0: ops 2 and 5 seen; 0, 1 and 4 superseded; 3
		// missing. Consumer 1 (cluster a) skips ops 0-2: op 5 seen, 4
		// superseded, 3 missing.
		t.Fatalf("seen %d, superseded %d, missing %d; want 3, 4, 2", m.seen, m.superseded, m.missing)
	}
	got := m.latency[opFlap]
	if len(got) != 1 || got[0] != 3*time.Millisecond {
		t.Errorf("flap latencies %v, want [3ms]", got)
	}
	if l := m.latency[opLeave]; len(l) != 2 || l[0] != 3*time.Millisecond || l[1] != 4*time.Millisecond {
		t.Errorf("leave latencies %v, want [3ms 4ms]", l)
	}
	if len(m.endpoints) != 1 {
		t.Errorf("%d endpoint latencies, want 1", len(m.endpoints))
	}
}

func TestMatchRawCountsUndelivered(t *testing.T) {
	o := newObservations()
	o.add(0, event{E: evRaw, Raw: "1", T: 30})
	l, missing := matchRaw(map[string]int64{"1": 10, "2": 20}, []int{0, 1}, o)
	if len(l) != 1 || l[0] != 20 || missing != 3 {
		t.Errorf("latencies %v, missing %d; want [20ns], 3", l, missing)
	}
}

func TestDigestIgnoresOrder(t *testing.T) {
	a := newTestBackends()
	swapped := []clustermesh.Backend{a[1], a[0]}
	if digest(a) != digest(swapped) {
		t.Error("digest depends on the backends' order")
	}
	changed := newTestBackends()
	changed[1].Ready = !changed[1].Ready
	if digest(a) == digest(changed) {
		t.Error("digest ignores readiness")
	}
}

func newTestBackends() []clustermesh.Backend {
	return []clustermesh.Backend{
		{IP: netip.MustParseAddr("10.0.0.1"), Ports: []clustermesh.BackendPort{{Name: "http", Port: 8080}}, Ready: true, Serving: true},
		{IP: netip.MustParseAddr("10.0.0.2"), Ports: []clustermesh.BackendPort{{Name: "http", Port: 8080}}, Ready: true, Serving: true},
	}
}

// TestMatchOpsKeepsTheSlowest: the report's slowest endpoint changes are
// the maxSlowest slowest, slowest first, each with the join or leave that
// started last before it.
func TestMatchOpsKeepsTheSlowest(t *testing.T) {
	ms := func(n int) int64 { return int64(n) * int64(time.Millisecond) }
	var ops []op
	o := newObservations()
	for i := range 8 {
		if i == 4 {
			ops = append(ops, op{kind: opJoin, cluster: "j", want: wantJoined, start: ms(100 * i)})
		}
		svc := "default/s" + string(rune('a'+i))
		ops = append(ops, op{kind: opFlap, cluster: "a", service: svc, want: 10, start: ms(100 * i)})
		// Latencies 1, 7, 2, 6, 3, 5, 4, 8 ms.
		lat := []int{1, 7, 2, 6, 3, 5, 4, 8}[i]
		o.add(0, event{E: evService, Cluster: "a", Service: svc, Digest: 10, T: ms(100*i + lat)})
	}
	m := matchOps(ops, []consumerInfo{{cluster: "x"}}, o)
	var got []time.Duration
	for _, s := range m.slowest {
		got = append(got, s.latency)
	}
	want := []time.Duration{8 * time.Millisecond, 7 * time.Millisecond, 6 * time.Millisecond, 5 * time.Millisecond, 4 * time.Millisecond}
	if !slices.Equal(got, want) {
		t.Fatalf("slowest %v, want %v", got, want)
	}
	for _, s := range m.slowest {
		afterJoin := s.op.start >= ms(400)
		if afterJoin != (s.lastChurn != nil) || (afterJoin && s.lastChurn.cluster != "j") {
			t.Errorf("change at %v: last join or leave %+v", time.Duration(s.op.start), s.lastChurn)
		}
	}
}
