package agent

import (
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/braidmesh/braid/bpf"
	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/policy"
	"github.com/braidmesh/braid/clustermesh/status"
)

// TestPolicyStatusAttributesDrops: a drop counts against every policy
// isolating its pod in its direction; default-deny drops against none.
func TestPolicyStatusAttributesDrops(t *testing.T) {
	db := clustermesh.NumericIdentity(1<<16 | 2)
	ps := &policyState{synced: true, policies: 2,
		result:   policy.Result{Selected: map[clustermesh.NumericIdentity]policy.Selection{db: {Ingress: []string{"a/p1", "a/p2"}, Egress: []string{"a/p2"}}}},
		labels:   map[clustermesh.NumericIdentity]map[string]string{db: {clustermesh.LabelNamespace: "a", "app": "db"}},
		clusters: map[clustermesh.ClusterID]clustermesh.ClusterName{1: "east", 2: "west"}}
	d := drops{counts: map[bpf.DropKey]uint64{
		{Identity: uint32(db), Dir: bpf.PolicyIngress, Reason: bpf.DropReasonPolicy}:     3,
		{Identity: uint32(db), Dir: bpf.PolicyEgress, Reason: bpf.DropReasonPolicy}:      1,
		{Identity: 1<<16 | 7, Dir: bpf.PolicyIngress, Reason: bpf.DropReasonDefaultDeny}: 5,
	}, recent: []bpf.DropEvent{{TimeNs: 1e9, SrcIdentity: 2<<16 | 1, DstIdentity: uint32(db), Dport: bpf.Port(8080), Proto: 6,
		Family: bpf.FamilyV4, Dir: bpf.PolicyIngress, Reason: bpf.DropReasonPolicy}}, mono: 3e9}
	st := policyStatus(ps, d)
	want := []status.PolicyDrops{
		{Policy: "", Direction: "ingress", Reason: "default_deny", Packets: 5},
		{Policy: "a/p1", Direction: "ingress", Reason: "policy", Packets: 3},
		{Policy: "a/p2", Direction: "egress", Reason: "policy", Packets: 1},
		{Policy: "a/p2", Direction: "ingress", Reason: "policy", Packets: 3},
	}
	if len(st.Drops) != len(want) {
		t.Fatalf("drops %+v, want %+v", st.Drops, want)
	}
	for i := range want {
		if st.Drops[i] != want[i] {
			t.Errorf("drops[%d] = %+v, want %+v", i, st.Drops[i], want[i])
		}
	}
	if len(st.Identities) != 1 || st.Identities[0].Dropped != 4 || st.Identities[0].Namespace != "a" || len(st.Identities[0].Ingress) != 2 {
		t.Errorf("identities %+v, want db with 4 drops and two ingress policies", st.Identities)
	}
	if len(st.RecentDrops) != 1 {
		t.Fatalf("recent drops %+v", st.RecentDrops)
	}
	r := st.RecentDrops[0]
	if r.SourceCluster != "west" || r.DestinationCluster != "east" || r.To != "0.0.0.0:8080" || r.Protocol != "TCP" || r.AgeSeconds != 2 {
		t.Errorf("recent drop %+v: want from west to east's :8080 over TCP, 2 s ago", r)
	}
}

// TestPolicyRevision: the revision names the set, not its order, and
// changes with any policy's version or with the set's members.
func TestPolicyRevision(t *testing.T) {
	pol := func(ns, name, uid, rv string) *networkingv1.NetworkPolicy {
		return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(uid), ResourceVersion: rv}}
	}
	a, b := pol("a", "p", "u1", "10"), pol("b", "p", "u2", "11")
	base := PolicyRevision([]*networkingv1.NetworkPolicy{a, b})
	if got := PolicyRevision([]*networkingv1.NetworkPolicy{b, a}); got != base {
		t.Errorf("revision depends on order: %s vs %s", got, base)
	}
	for name, set := range map[string][]*networkingv1.NetworkPolicy{
		"none":      nil,
		"one less":  {a},
		"edited":    {a, pol("b", "p", "u2", "12")},
		"recreated": {a, pol("b", "p", "u3", "11")},
	} {
		if got := PolicyRevision(set); got == base || got == "" {
			t.Errorf("%s: revision %q, want one other than %q", name, got, base)
		}
	}
}
