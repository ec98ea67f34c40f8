package agent

import (
	"cmp"
	"context"
	"fmt"
	"hash/fnv"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/braidmesh/braid/bpf"
	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/datapath"
	"github.com/braidmesh/braid/clustermesh/policy"
	"github.com/braidmesh/braid/clustermesh/remote"
	"github.com/braidmesh/braid/clustermesh/status"
)

// PolicySource supplies the local cluster's NetworkPolicies
// (k8s.PolicyWatcher in a cluster).
type PolicySource interface {
	// NetworkPolicies returns the policies and whether the list is
	// complete. It never blocks; the objects are shared.
	NetworkPolicies() ([]*networkingv1.NetworkPolicy, bool)
	// Run watches until ctx ends, calling changed (which must not block)
	// once synced and after every change.
	Run(ctx context.Context, changed func()) error
}

// DropsInterval is how often the agent reads the datapath's drop counters
// for status and /metrics.
const DropsInterval = 2 * time.Second

// PolicyIdentities returns every identity of the mesh as policy sees it,
// with the named ports of its pods (from their IP entries).
func PolicyIdentities(snap *remote.Snapshot) []policy.Identity {
	var out []policy.Identity
	for cname, cs := range snap.Clusters {
		ports := map[clustermesh.NumericIdentity][]clustermesh.NamedPort{}
		for _, e := range cs.IPs {
			for _, np := range e.NamedPorts {
				if !slices.Contains(ports[e.Identity], np) {
					ports[e.Identity] = append(ports[e.Identity], np)
				}
			}
		}
		for id, ident := range cs.Identities {
			out = append(out, policy.Identity{ID: id, Cluster: cname, Labels: ident.Labels, NamedPorts: ports[id]})
		}
	}
	slices.SortFunc(out, func(a, b policy.Identity) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// ApplyPolicy compiles pols against the mesh's identities into want's
// policy fields, keeping the address-block identities of prev.
func ApplyPolicy(want *datapath.Desired, snap *remote.Snapshot, local clustermesh.ClusterName, pols []*networkingv1.NetworkPolicy, prev []policy.Block) policy.Result {
	res := policy.Compile(policy.Input{Cluster: local, Policies: pols, Identities: PolicyIdentities(snap), Blocks: prev})
	want.Policy, want.Isolated = res.Rules, res.Isolated
	want.Prefixes = make([]datapath.LocalEntry, len(res.Blocks))
	for i, b := range res.Blocks {
		want.Prefixes[i] = datapath.LocalEntry{Prefix: b.Prefix, Identity: b.Identity}
	}
	return res
}

// PolicyRevision names a set of NetworkPolicies by their UIDs and
// resource versions: any change to the set changes it. The agent reports
// the revision it compiled and the one its datapath enforces
// (status.PolicyStatus), so a client that applied policies can wait for
// them to be enforced.
func PolicyRevision(pols []*networkingv1.NetworkPolicy) string {
	lines := make([]string, len(pols))
	for i, p := range pols {
		lines[i] = p.Namespace + "/" + p.Name + " " + string(p.UID) + " " + p.ResourceVersion + "\n"
	}
	slices.Sort(lines)
	h := fnv.New64a()
	for _, l := range lines {
		h.Write([]byte(l))
	}
	return strconv.FormatUint(h.Sum64(), 16)
}

// policyState is the last compiled policy, for status and metrics.
type policyState struct {
	synced   bool
	policies int
	revision string
	result   policy.Result
	// labels of the selected identities
	labels map[clustermesh.NumericIdentity]map[string]string
	// clusters by ID, to name the cluster of a dropped packet's identities
	clusters map[clustermesh.ClusterID]clustermesh.ClusterName
}

// drops is what the drops loop last read from the datapath.
type drops struct {
	counts map[bpf.DropKey]uint64
	recent []bpf.DropEvent
	// mono is CLOCK_MONOTONIC (the events' clock) when they were read.
	mono uint64
}

// dropReader is the part of *bpf.Objects the drops loop reads.
type dropReader interface {
	RecentDrops() ([]bpf.DropEvent, error)
}

func monotonicNow() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return uint64(ts.Nano())
}

// readDrops reads the datapath's drop counters and ring.
func readDrops(counts *bpf.DropMap, ring dropReader) (drops, error) {
	c, err := counts.Dump()
	if err != nil {
		return drops{}, fmt.Errorf("read policy drops: %w", err)
	}
	r, err := ring.RecentDrops()
	if err != nil {
		return drops{}, fmt.Errorf("read recent drops: %w", err)
	}
	return drops{counts: c, recent: r, mono: monotonicNow()}, nil
}

func dirName(d uint8) string {
	if d == bpf.PolicyEgress {
		return "egress"
	}
	return "ingress"
}

func reasonName(r uint8) string {
	if r == bpf.DropReasonDefaultDeny {
		return "default_deny"
	}
	return "policy"
}

// perPolicy attributes drop counts to the policies isolating each
// identity in the drop's direction; default-deny drops (and drops of an
// identity no longer selected) go to policy "".
func perPolicy(ps *policyState, d drops) []status.PolicyDrops {
	type key struct{ policy, dir, reason string }
	sum := map[key]uint64{}
	for k, n := range d.counts {
		sel := ps.result.Selected[clustermesh.NumericIdentity(k.Identity)]
		names := sel.Ingress
		if k.Dir == bpf.PolicyEgress {
			names = sel.Egress
		}
		if k.Reason != bpf.DropReasonPolicy || len(names) == 0 {
			names = []string{""}
		}
		for _, p := range names {
			sum[key{p, dirName(k.Dir), reasonName(k.Reason)}] += n
		}
	}
	out := make([]status.PolicyDrops, 0, len(sum))
	for k, n := range sum {
		out = append(out, status.PolicyDrops{Policy: k.policy, Direction: k.dir, Reason: k.reason, Packets: n})
	}
	slices.SortFunc(out, func(a, b status.PolicyDrops) int {
		return cmp.Or(cmp.Compare(a.Policy, b.Policy), cmp.Compare(a.Direction, b.Direction), cmp.Compare(a.Reason, b.Reason))
	})
	return out
}

// policyStatus renders ps and d for the status page.
func policyStatus(ps *policyState, d drops) *status.PolicyStatus {
	st := &status.PolicyStatus{Synced: ps.synced, Policies: ps.policies, Rules: len(ps.result.Rules), Revision: ps.revision, Drops: perPolicy(ps, d)}
	dropped := map[clustermesh.NumericIdentity]uint64{}
	for k, n := range d.counts {
		dropped[clustermesh.NumericIdentity(k.Identity)] += n
	}
	for _, id := range slices.Sorted(maps.Keys(ps.result.Selected)) {
		sel := ps.result.Selected[id]
		lbls := ps.labels[id]
		st.Identities = append(st.Identities, status.PolicyIdentity{Identity: id, Namespace: lbls[clustermesh.LabelNamespace],
			Labels: lbls, Ingress: sel.Ingress, Egress: sel.Egress, Dropped: dropped[id]})
	}
	for _, e := range d.recent {
		src, dst := clustermesh.NumericIdentity(e.SrcIdentity), clustermesh.NumericIdentity(e.DstIdentity)
		pd := status.PolicyDrop{Direction: dirName(e.Dir), Reason: reasonName(e.Reason), Source: src, Destination: dst,
			SourceCluster: ps.clusters[src.Cluster()], DestinationCluster: ps.clusters[dst.Cluster()],
			Protocol: protoName(e.Proto)}
		if d.mono > e.TimeNs {
			pd.AgeSeconds = time.Duration(d.mono - e.TimeNs).Seconds()
		}
		from, to := bpf.WordsAddr(e.Family, e.Saddr), bpf.WordsAddr(e.Family, e.Daddr)
		pd.From = from.String()
		pd.To = netip.AddrPortFrom(to, bpf.Port(e.Dport)).String()
		st.RecentDrops = append(st.RecentDrops, pd)
	}
	return st
}

func protoName(p uint8) string {
	switch p {
	case 6:
		return "TCP"
	case 17:
		return "UDP"
	case 132:
		return "SCTP"
	}
	return fmt.Sprint(p)
}

// dropCollector exports the drop counters per policy as
// braid_policy_drops_total.
type dropCollector struct {
	a    *Agent
	desc *prometheus.Desc
}

func newDropCollector(a *Agent) *dropCollector {
	return &dropCollector{a: a, desc: prometheus.NewDesc("braid_policy_drops_total",
		"Packets dropped by NetworkPolicy on this node, by policy (empty: the cluster's default deny), direction and reason. A drop counts against every policy isolating the pod in that direction.",
		[]string{"policy", "direction", "reason"}, nil)}
}

func (c *dropCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *dropCollector) Collect(ch chan<- prometheus.Metric) {
	c.a.mu.Lock()
	ps, d := c.a.policy, c.a.drops
	c.a.mu.Unlock()
	if ps == nil {
		return
	}
	for _, pd := range perPolicy(ps, d) {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(pd.Packets), pd.Policy, pd.Direction, pd.Reason)
	}
}
