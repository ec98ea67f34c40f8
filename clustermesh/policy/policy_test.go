package policy_test

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/policy"
	"github.com/braidmesh/braid/clustermesh/policy/policytest"
)

// world returns the scenarios' identities.
func world() []policy.Identity {
	var out []policy.Identity
	for _, e := range policytest.Endpoints() {
		if e.Identity != 0 {
			out = append(out, policy.Identity{ID: e.Identity, Cluster: e.Cluster, Labels: policytest.IdentityLabels(e), NamedPorts: e.Ports})
		}
	}
	return out
}

const worldIdentity clustermesh.NumericIdentity = 2

// identityOf resolves an endpoint as the datapath's ipcache would: a pod's
// own identity, else the identity of the longest address block holding
// the address, else the world.
func identityOf(r policy.Result, e policytest.Endpoint) clustermesh.NumericIdentity {
	if e.Identity != 0 {
		return e.Identity
	}
	best, id := -1, worldIdentity
	for _, b := range r.Blocks {
		if b.Prefix.Contains(e.Addr) && b.Prefix.Bits() > best {
			best, id = b.Prefix.Bits(), b.Identity
		}
	}
	return id
}

// allows evaluates r as the datapath does, for one direction at local.
func allows(r policy.Result, d clustermesh.PolicyDirection, local, peer clustermesh.NumericIdentity, p policytest.Probe) bool {
	if !slices.Contains(r.Isolated, clustermesh.PolicyIsolation{Direction: d, Identity: local}) {
		return true
	}
	for _, rule := range r.Rules {
		if rule.Direction != d || rule.Local != local || (rule.Peer != peer && rule.Peer != clustermesh.AnyPeer) {
			continue
		}
		if rule.Protocol == "" {
			return true
		}
		if rule.Protocol != p.Protocol {
			continue
		}
		hi := max(rule.EndPort, rule.Port)
		if rule.Port == 0 || p.Port >= rule.Port && p.Port <= hi {
			return true
		}
	}
	return false
}

// verdict is whether a connection from src to dst passes: src's egress
// and dst's ingress, each enforced by cluster enforcer only for its own
// pods.
func verdict(r policy.Result, enforcer clustermesh.ClusterName, src, dst policytest.Endpoint, p policytest.Probe) bool {
	s, d := identityOf(r, src), identityOf(r, dst)
	if src.Cluster == enforcer && !allows(r, clustermesh.PolicyEgress, s, d, p) {
		return false
	}
	if dst.Cluster == enforcer && !allows(r, clustermesh.PolicyIngress, d, s, p) {
		return false
	}
	return true
}

// TestScenarios compiles every scenario and checks every cell of its
// verdict table.
func TestScenarios(t *testing.T) {
	scenarios := policytest.Scenarios()
	if len(scenarios) < 20 {
		t.Fatalf("%d scenarios, want at least 20", len(scenarios))
	}
	for _, sc := range scenarios {
		t.Run(sc.Name, func(t *testing.T) {
			want, err := sc.Verdicts()
			if err != nil {
				t.Fatal(err)
			}
			r := policy.Compile(policy.Input{Cluster: sc.Enforcer(), Policies: sc.Policies, Identities: world()})
			if len(r.Problems) > 0 {
				t.Errorf("problems: %v", r.Problems)
			}
			eps := policytest.Endpoints()
			cells := 0
			for _, src := range eps {
				for _, dst := range eps {
					if src.Name == dst.Name {
						continue
					}
					w, ok := want[[2]string{src.Name, dst.Name}]
					if !ok {
						t.Fatalf("table has no cell %s->%s", src.Name, dst.Name)
					}
					for i, p := range policytest.Probes {
						cells++
						if got := verdict(r, sc.Enforcer(), src, dst, p); got != w[i] {
							t.Errorf("%s -> %s %s: allowed=%v, want %v", src.Name, dst.Name, p, got, w[i])
						}
					}
				}
			}
			if cells != len(eps)*(len(eps)-1)*len(policytest.Probes) {
				t.Errorf("checked %d cells", cells)
			}
		})
	}
}

func TestSelectedListsPolicies(t *testing.T) {
	var sc policytest.Scenario
	for _, s := range policytest.Scenarios() {
		if s.Name == "two policies add up" {
			sc = s
		}
	}
	r := policy.Compile(policy.Input{Cluster: policytest.Local, Policies: sc.Policies, Identities: world()})
	db := policytest.Endpoints()[1].Identity
	if got := r.Selected[db]; fmt.Sprint(got.Ingress) != "[a/db-from-team-y a/db-from-web]" || len(got.Egress) != 0 {
		t.Errorf("selection of db = %+v, want both ingress policies", got)
	}
	if len(r.Selected) != 1 {
		t.Errorf("selected identities %v, want db only", r.Selected)
	}
}

func TestBlocksKeepTheirIdentity(t *testing.T) {
	p := func(name, cidr string) *networkingv1.NetworkPolicy {
		return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: name},
			Spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: cidr}}}}}}}
	}
	first := policy.Compile(policy.Input{Cluster: policytest.Local, Identities: world(), Policies: []*networkingv1.NetworkPolicy{p("one", "198.51.100.0/24")}})
	second := policy.Compile(policy.Input{Cluster: policytest.Local, Identities: world(), Blocks: first.Blocks,
		Policies: []*networkingv1.NetworkPolicy{p("one", "198.51.100.0/24"), p("zero", "10.0.0.0/8")}})
	id := func(r policy.Result, s string) clustermesh.NumericIdentity {
		for _, b := range r.Blocks {
			if b.Prefix == netip.MustParsePrefix(s) {
				return b.Identity
			}
		}
		return 0
	}
	if a, b := id(first, "198.51.100.0/24"), id(second, "198.51.100.0/24"); a == 0 || a != b {
		t.Errorf("198.51.100.0/24 had identity %d, then %d: want it kept", a, b)
	}
	if z := id(second, "10.0.0.0/8"); z == 0 || z == id(second, "198.51.100.0/24") || z < policy.FirstBlockIdentity {
		t.Errorf("10.0.0.0/8 got identity %d", z)
	}
}

func TestInvalidPartsAreReportedAndAllowNothing(t *testing.T) {
	bad := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "bad"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
				{PodSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: "Sometimes"}}}},
				{IPBlock: &networkingv1.IPBlock{CIDR: "not-a-cidr"}},
			}}}}}
	r := policy.Compile(policy.Input{Cluster: policytest.Local, Identities: world(), Policies: []*networkingv1.NetworkPolicy{bad}})
	if len(r.Problems) != 2 {
		t.Errorf("problems %q, want the selector and the CIDR", r.Problems)
	}
	db := policytest.Endpoints()[1].Identity
	if !slices.Contains(r.Isolated, clustermesh.PolicyIsolation{Direction: clustermesh.PolicyIngress, Identity: db}) || len(r.Rules) != 0 {
		t.Errorf("db isolated=%v rules=%v: want isolated with no rule", r.Isolated, r.Rules)
	}
}

// TestRemoteIdentitiesAreNeverSelected: a policy selects its own
// cluster's pods only, even when another cluster has the same namespace
// and labels.
func TestRemoteIdentitiesAreNeverSelected(t *testing.T) {
	deny := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "deny"}}
	r := policy.Compile(policy.Input{Cluster: policytest.Local, Identities: world(), Policies: []*networkingv1.NetworkPolicy{deny}})
	for _, iso := range r.Isolated {
		if iso.Identity.Cluster() != 1 {
			t.Errorf("remote identity %d isolated", iso.Identity)
		}
	}
	if len(r.Isolated) != 2 {
		t.Errorf("isolated %v, want east's a/web and a/db", r.Isolated)
	}
}

// TestSCTPPorts: SCTP ports, by number and by name, give SCTP rules only.
func TestSCTPPorts(t *testing.T) {
	sctp := corev1.ProtocolSCTP
	num, name := intstr.FromInt32(3868), intstr.FromString("diameter")
	p := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "sctp"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{{Protocol: &sctp, Port: &num}, {Protocol: &sctp, Port: &name}}}}}}
	ids := world()
	web := policytest.Endpoints()[0].Identity
	for i := range ids {
		if ids[i].ID == web {
			ids[i].NamedPorts = append(ids[i].NamedPorts, clustermesh.NamedPort{Name: "diameter", Port: 3869, Protocol: clustermesh.SCTP})
		}
	}
	r := policy.Compile(policy.Input{Cluster: policytest.Local, Identities: ids, Policies: []*networkingv1.NetworkPolicy{p}})
	if len(r.Problems) > 0 {
		t.Fatalf("problems: %v", r.Problems)
	}
	var got []string
	for _, rule := range r.Rules {
		if rule.Local == web {
			got = append(got, fmt.Sprintf("%s/%d", rule.Protocol, rule.Port))
		}
	}
	if want := "[SCTP/3868 SCTP/3869]"; fmt.Sprint(got) != want {
		t.Errorf("rules of a/web %v, want %s", got, want)
	}
}
