package policytest

import (
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/braidmesh/braid/clustermesh"
)

func pols(p ...*networkingv1.NetworkPolicy) []*networkingv1.NetworkPolicy { return p }

// Scenarios returns the scenarios: the NetworkPolicy documentation's
// examples and edge cases, and cross-cluster ones, east's then west's.
func Scenarios() []Scenario {
	return []Scenario{
		{
			Name:     "no policies",
			Policies: nil,
			Table: `
			    A   D   B   C   WA  WB  WC  X1  X2
			A   -   YYY YYY YYY YYY YYY YYY YYY YYY
			D   YYY -   YYY YYY YYY YYY YYY YYY YYY
			B   YYY YYY -   YYY YYY YYY YYY YYY YYY
			C   YYY YYY YYY -   YYY YYY YYY YYY YYY
			WA  YYY YYY YYY YYY -   YYY YYY YYY YYY
			WB  YYY YYY YYY YYY YYY -   YYY YYY YYY
			WC  YYY YYY YYY YYY YYY YYY -   YYY YYY
			X1  YYY YYY YYY YYY YYY YYY YYY -   YYY
			X2  YYY YYY YYY YYY YYY YYY YYY YYY -
			`,
		},
		{
			Name:     "default deny ingress in a",
			Policies: pols(np("a", "deny-ingress", sel(), networkingv1.NetworkPolicySpec{PolicyTypes: types(ingress)})),
			Table: `
			    A   D   B   C   WA  WB  WC  X1  X2
			A   -   ... YYY YYY YYY YYY YYY YYY YYY
			D   ... -   YYY YYY YYY YYY YYY YYY YYY
			B   ... ... -   YYY YYY YYY YYY YYY YYY
			C   ... ... YYY -   YYY YYY YYY YYY YYY
			WA  ... ... YYY YYY -   YYY YYY YYY YYY
			WB  ... ... YYY YYY YYY -   YYY YYY YYY
			WC  ... ... YYY YYY YYY YYY -   YYY YYY
			X1  ... ... YYY YYY YYY YYY YYY -   YYY
			X2  ... ... YYY YYY YYY YYY YYY YYY -
			`,
		},
		{
			Name:     "allow all ingress in a",
			Policies: pols(np("a", "allow-ingress", sel(), networkingv1.NetworkPolicySpec{PolicyTypes: types(ingress), Ingress: []networkingv1.NetworkPolicyIngressRule{{}}})),
			Table: `
			    A   D   B   C   WA  WB  WC  X1  X2
			A   -   YYY YYY YYY YYY YYY YYY YYY YYY
			D   YYY -   YYY YYY YYY YYY YYY YYY YYY
			B   YYY YYY -   YYY YYY YYY YYY YYY YYY
			C   YYY YYY YYY -   YYY YYY YYY YYY YYY
			WA  YYY YYY YYY YYY -   YYY YYY YYY YYY
			WB  YYY YYY YYY YYY YYY -   YYY YYY YYY
			WC  YYY YYY YYY YYY YYY YYY -   YYY YYY
			X1  YYY YYY YYY YYY YYY YYY YYY -   YYY
			X2  YYY YYY YYY YYY YYY YYY YYY YYY -
			`,
		},
		{
			Name:     "default deny egress in a",
			Policies: pols(np("a", "deny-egress", sel(), networkingv1.NetworkPolicySpec{PolicyTypes: types(egress)})),
			Table: `
			    A   D   B   C   WA  WB  WC  X1  X2
			A   -   ... ... ... ... ... ... ... ...
			D   ... -   ... ... ... ... ... ... ...
			B   YYY YYY -   YYY YYY YYY YYY YYY YYY
			C   YYY YYY YYY -   YYY YYY YYY YYY YYY
			WA  YYY YYY YYY YYY -   YYY YYY YYY YYY
			WB  YYY YYY YYY YYY YYY -   YYY YYY YYY
			WC  YYY YYY YYY YYY YYY YYY -   YYY YYY
			X1  YYY YYY YYY YYY YYY YYY YYY -   YYY
			X2  YYY YYY YYY YYY YYY YYY YYY YYY -
			`,
		},
		{
			Name:     "allow all egress in a",
			Policies: pols(np("a", "allow-egress", sel(), networkingv1.NetworkPolicySpec{PolicyTypes: types(egress), Egress: []networkingv1.NetworkPolicyEgressRule{{}}})),
			Table: `
			    A   D   B   C   WA  WB  WC  X1  X2
			A   -   YYY YYY YYY YYY YYY YYY YYY YYY
			D   YYY -   YYY YYY YYY YYY YYY YYY YYY
			B   YYY YYY -   YYY YYY YYY YYY YYY YYY
			C   YYY YYY YYY -   YYY YYY YYY YYY YYY
			WA  YYY YYY YYY YYY -   YYY YYY YYY YYY
			WB  YYY YYY YYY YYY YYY -   YYY YYY YYY
			WC  YYY YYY YYY YYY YYY YYY -   YYY YYY
			X1  YYY YYY YYY YYY YYY YYY YYY -   YYY
			X2  YYY YYY YYY YYY YYY YYY YYY YYY -
			`,
		},
		{
			Name:     "default deny both ways in a",
			Policies: pols(np("a", "deny-all", sel(), networkingv1.NetworkPolicySpec{PolicyTypes: types(ingress, egress)})),
			Table: `
			    A   D   B   C   WA  WB  WC  X1  X2
			A   -   ... ... ... ... ... ... ... ...
			D   ... -   ... ... ... ... ... ... ...
			B   ... ... -   YYY YYY YYY YYY YYY YYY
			C   ... ... YYY -   YYY YYY YYY YYY YYY
			WA  ... ... YYY YYY -   YYY YYY YYY YYY
			WB  ... ... YYY YYY YYY -   YYY YYY YYY
			WC  ... ... YYY YYY YYY YYY -   YYY YYY
			X1  ... ... YYY YYY YYY YYY YYY -   YYY
			X2  ... ... YYY YYY YYY YYY YYY YYY -
			`,
		},
		{
			Name:     "podSelector peer stays in its namespace and cluster",
			Policies: pols(np("a", "db-from-web", sel("app", "db"), networkingv1.NetworkPolicySpec{Ingress: from(pods("app", "web"))})),
			Table: `
			    A   D   B   C   WA  WB  WC  X1  X2
			A   -   YYY YYY YYY YYY YYY YYY YYY YYY
			D   YYY -   YYY YYY YYY YYY YYY YYY YYY
			B   YYY ... -   YYY YYY YYY YYY YYY YYY
			C   YYY ... YYY -   YYY YYY YYY YYY YYY
			WA  YYY ... YYY YYY -   YYY YYY YYY YYY
			WB  YYY ... YYY YYY YYY -   YYY YYY YYY
			WC  YYY ... YYY YYY YYY YYY -   YYY YYY
			X1  YYY ... YYY YYY YYY YYY YYY -   YYY
			X2  YYY ... YYY YYY YYY YYY YYY YYY -
			`,
		},
		{
			Name:     "namespaceSelector peer matches local namespaces",
			Policies: pols(np("a", "web-from-team-x", sel("app", "web"), networkingv1.NetworkPolicySpec{Ingress: from(namespaces("team", "x"))})),
			Table: `
			    A   D   B   C   WA  WB  WC  X1  X2
			A   -   YYY YYY YYY YYY YYY YYY YYY YYY
			D   YYY -   YYY YYY YYY YYY YYY YYY YYY
			B   ... YYY -   YYY YYY YYY YYY YYY YYY
			C   YYY YYY YYY -   YYY YYY YYY YYY YYY
			WA  ... YYY YYY YYY -   YYY YYY YYY YYY
			WB  ... YYY YYY YYY YYY -   YYY YYY YYY
			WC  ... YYY YYY YYY YYY YYY -   YYY YYY
			X1  ... YYY YYY YYY YYY YYY YYY -   YYY
			X2  ... YYY YYY YYY YYY YYY YYY YYY -
			`,
		},
		{
			Name:     "namespaceSelector and podSelector in one peer",
			Policies: pols(np("a", "db-from-web-in-team-x", sel("app", "db"), networkingv1.NetworkPolicySpec{Ingress: from(networkingv1.NetworkPolicyPeer{NamespaceSelector: selp("team", "x"), PodSelector: selp("app", "web")})})),
			Table: `
			    A   D   B   C   WA  WB  WC  X1  X2
			A   -   YYY YYY YYY YYY YYY YYY YYY YYY
			D   YYY -   YYY YYY YYY YYY YYY YYY YYY
			B   YYY ... -   YYY YYY YYY YYY YYY YYY
			C   YYY ... YYY -   YYY YYY YYY YYY YYY
			WA  YYY ... YYY YYY -   YYY YYY YYY YYY
			WB  YYY ... YYY YYY YYY -   YYY YYY YYY
			WC  YYY ... YYY YYY YYY YYY -   YYY YYY
			X1  YYY ... YYY YYY YYY YYY YYY -   YYY
			X2  YYY ... YYY YYY YYY YYY YYY YYY -
			`,
		},
		{
			Name:     "namespaceSelector and podSelector as two peers",
			Policies: pols(np("a", "db-from-team-y-or-web", sel("app", "db"), networkingv1.NetworkPolicySpec{Ingress: from(namespaces("team", "y"), pods("app", "web"))})),
			Table: `
			    A   D   B   C   WA  WB  WC  X1  X2
			A   -   YYY YYY YYY YYY YYY YYY YYY YYY
			D   YYY -   YYY YYY YYY YYY YYY YYY YYY
			B   YYY YYY -   YYY YYY YYY YYY YYY YYY
			C   YYY ... YYY -   YYY YYY YYY YYY YYY
			WA  YYY ... YYY YYY -   YYY YYY YYY YYY
			WB  YYY ... YYY YYY YYY -   YYY YYY YYY
			WC  YYY ... YYY YYY YYY YYY -   YYY YYY
			X1  YYY ... YYY YYY YYY YYY YYY -   YYY
			X2  YYY ... YYY YYY YYY YYY YYY YYY -
			`,
		},
		{
			Name:     "empty namespaceSelector is every local namespace",
			Policies: pols(np("a", "db-from-all-namespaces", sel("app", "db"), networkingv1.NetworkPolicySpec{Ingress: from(namespaces())})),
			Table: `
			    A   D   B   C   WA  WB  WC  X1  X2
			A   -   YYY YYY YYY YYY YYY YYY YYY YYY
			D   YYY -   YYY YYY YYY YYY YYY YYY YYY
			B   YYY YYY -   YYY YYY YYY YYY YYY YYY
			C   YYY YYY YYY -   YYY YYY YYY YYY YYY
			WA  YYY ... YYY YYY -   YYY YYY YYY YYY
			WB  YYY ... YYY YYY YYY -   YYY YYY YYY
			WC  YYY ... YYY YYY YYY YYY -   YYY YYY
			X1  YYY ... YYY YYY YYY YYY YYY -   YYY
			X2  YYY ... YYY YYY YYY YYY YYY YYY -
			`,
		},
		{
			Name:     "namespaceSelector naming a cluster",
			Policies: pols(np("a", "db-from-west", sel("app", "db"), networkingv1.NetworkPolicySpec{Ingress: from(namespaces(clustermesh.LabelCluster, "west"))})),
			Table: `
			    A   D   B   C   WA  WB  WC  X1  X2
			A   -   ... YYY YYY YYY YYY YYY YYY YYY
			D   YYY -   YYY YYY YYY YYY YYY YYY YYY
			B   YYY ... -   YYY YYY YYY YYY YYY YYY
			C   YYY ... YYY -   YYY YYY YYY YYY YYY
			WA  YYY YYY YYY YYY -   YYY YYY YYY YYY
			WB  YYY YYY YYY YYY YYY -   YYY YYY YYY
			WC  YYY YYY YYY YYY YYY YYY -   YYY YYY
			X1  YYY ... YYY YYY YYY YYY YYY -   YYY
			X2  YYY ... YYY YYY YYY YYY YYY YYY -
			`,
		},
		{
			Name:     "podSelector naming a cluster keeps the namespace",
			Policies: pols(np("a", "db-from-west-web", sel("app", "db"), networkingv1.NetworkPolicySpec{Ingress: from(pods(clustermesh.LabelCluster, "west", "app", "web"))})),
			Table: `
			    A   D   B   C   WA  WB  WC  X1  X2
			A   -   ... YYY YYY YYY YYY YYY YYY YYY
			D   YYY -   YYY YYY YYY YYY YYY YYY YYY
			B   YYY ... -   YYY YYY YYY YYY YYY YYY
			C   YYY ... YYY -   YYY YYY YYY YYY YYY
			WA  YYY YYY YYY YYY -   YYY YYY YYY YYY
			WB  YYY ... YYY YYY YYY -   YYY YYY YYY
			WC  YYY ... YYY YYY YYY YYY -   YYY YYY
			X1  YYY ... YYY YYY YYY YYY YYY -   YYY
			X2  YYY ... YYY YYY YYY YYY YYY YYY -
			`,
		},
		{
			Name:     "Cilium cluster label in an expression",
			Policies: pols(np("a", "db-from-web-anywhere", sel("app", "db"), networkingv1.NetworkPolicySpec{Ingress: from(networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: clustermesh.LabelCiliumCluster, Operator: metav1.LabelSelectorOpIn, Values: []string{"east", "west"}}}}, PodSelector: selp("app", "web")})})),
			Table: `
			    A   D   B   C   WA  WB  WC  X1  X2
			A   -   YYY YYY YYY YYY YYY YYY YYY YYY
			D   YYY -   YYY YYY YYY YYY YYY YYY YYY
			B   YYY YYY -   YYY YYY YYY YYY YYY YYY
			C   YYY ... YYY -   YYY YYY YYY YYY YYY
			WA  YYY YYY YYY YYY -   YYY YYY YYY YYY
			WB  YYY ... YYY YYY YYY -   YYY YYY YYY
			WC  YYY ... YYY YYY YYY YYY -   YYY YYY
			X1  YYY ... YYY YYY YYY YYY YYY -   YYY
			X2  YYY ... YYY YYY YYY YYY YYY YYY -
			`,
		},
		{
			Name:     "port by number from anywhere",
			Policies: pols(np("a", "db-8080", sel("app", "db"), networkingv1.NetworkPolicySpec{Ingress: fromPorts(ports(port(tcp, num(8080))))})),
			Table: `
			    A   D   B   C   WA  WB  WC  X1  X2
			A   -   .Y. YYY YYY YYY YYY YYY YYY YYY
			D   YYY -   YYY YYY YYY YYY YYY YYY YYY
			B   YYY .Y. -   YYY YYY YYY YYY YYY YYY
			C   YYY .Y. YYY -   YYY YYY YYY YYY YYY
			WA  YYY .Y. YYY YYY -   YYY YYY YYY YYY
			WB  YYY .Y. YYY YYY YYY -   YYY YYY YYY
			WC  YYY .Y. YYY YYY YYY YYY -   YYY YYY
			X1  YYY .Y. YYY YYY YYY YYY YYY -   YYY
			X2  YYY .Y. YYY YYY YYY YYY YYY YYY -
			`,
		},
		{
			Name:     "named ports resolve per selected pod",
			Policies: pols(np("a", "http", sel(), networkingv1.NetworkPolicySpec{Ingress: fromPorts(ports(port(tcp, named("http"))))})),
			Table: `
			    A   D   B   C   WA  WB  WC  X1  X2
			A   -   .Y. YYY YYY YYY YYY YYY YYY YYY
			D   Y.. -   YYY YYY YYY YYY YYY YYY YYY
			B   Y.. .Y. -   YYY YYY YYY YYY YYY YYY
			C   Y.. .Y. YYY -   YYY YYY YYY YYY YYY
			WA  Y.. .Y. YYY YYY -   YYY YYY YYY YYY
			WB  Y.. .Y. YYY YYY YYY -   YYY YYY YYY
			WC  Y.. .Y. YYY YYY YYY YYY -   YYY YYY
			X1  Y.. .Y. YYY YYY YYY YYY YYY -   YYY
			X2  Y.. .Y. YYY YYY YYY YYY YYY YYY -
			`,
		},
		{
			Name:     "UDP only",
			Policies: pols(np("a", "web-dns", sel("app", "web"), networkingv1.NetworkPolicySpec{Ingress: fromPorts(ports(port(udp, num(53))))})),
			Table: `
			    A   D   B   C   WA  WB  WC  X1  X2
			A   -   YYY YYY YYY YYY YYY YYY YYY YYY
			D   ..Y -   YYY YYY YYY YYY YYY YYY YYY
			B   ..Y YYY -   YYY YYY YYY YYY YYY YYY
			C   ..Y YYY YYY -   YYY YYY YYY YYY YYY
			WA  ..Y YYY YYY YYY -   YYY YYY YYY YYY
			WB  ..Y YYY YYY YYY YYY -   YYY YYY YYY
			WC  ..Y YYY YYY YYY YYY YYY -   YYY YYY
			X1  ..Y YYY YYY YYY YYY YYY YYY -   YYY
			X2  ..Y YYY YYY YYY YYY YYY YYY YYY -
			`,
		},
		{
			Name:     "endPort range",
			Policies: pols(np("a", "db-range", sel("app", "db"), networkingv1.NetworkPolicySpec{Ingress: fromPorts(ports(port(tcp, num(8000), 9000)))})),
			Table: `
			    A   D   B   C   WA  WB  WC  X1  X2
			A   -   .Y. YYY YYY YYY YYY YYY YYY YYY
			D   YYY -   YYY YYY YYY YYY YYY YYY YYY
			B   YYY .Y. -   YYY YYY YYY YYY YYY YYY
			C   YYY .Y. YYY -   YYY YYY YYY YYY YYY
			WA  YYY .Y. YYY YYY -   YYY YYY YYY YYY
			WB  YYY .Y. YYY YYY YYY -   YYY YYY YYY
			WC  YYY .Y. YYY YYY YYY YYY -   YYY YYY
			X1  YYY .Y. YYY YYY YYY YYY YYY -   YYY
			X2  YYY .Y. YYY YYY YYY YYY YYY YYY -
			`,
		},
		{
			Name:     "two port entries, one a range",
			Policies: pols(np("a", "db-two-ports", sel("app", "db"), networkingv1.NetworkPolicySpec{Ingress: fromPorts(ports(port(tcp, num(80)), port(tcp, num(8079), 8081)))})),
			Table: `
			    A   D   B   C   WA  WB  WC  X1  X2
			A   -   YY. YYY YYY YYY YYY YYY YYY YYY
			D   YYY -   YYY YYY YYY YYY YYY YYY YYY
			B   YYY YY. -   YYY YYY YYY YYY YYY YYY
			C   YYY YY. YYY -   YYY YYY YYY YYY YYY
			WA  YYY YY. YYY YYY -   YYY YYY YYY YYY
			WB  YYY YY. YYY YYY YYY -   YYY YYY YYY
			WC  YYY YY. YYY YYY YYY YYY -   YYY YYY
			X1  YYY YY. YYY YYY YYY YYY YYY -   YYY
			X2  YYY YY. YYY YYY YYY YYY YYY YYY -
			`,
		},
		{
			Name:     "ipBlock with except",
			Policies: pols(np("a", "db-from-block", sel("app", "db"), networkingv1.NetworkPolicySpec{Ingress: from(block("192.0.2.0/24", "192.0.2.128/25"))})),
			Table: `
			    A   D   B   C   WA  WB  WC  X1  X2
			A   -   ... YYY YYY YYY YYY YYY YYY YYY
			D   YYY -   YYY YYY YYY YYY YYY YYY YYY
			B   YYY ... -   YYY YYY YYY YYY YYY YYY
			C   YYY ... YYY -   YYY YYY YYY YYY YYY
			WA  YYY ... YYY YYY -   YYY YYY YYY YYY
			WB  YYY ... YYY YYY YYY -   YYY YYY YYY
			WC  YYY ... YYY YYY YYY YYY -   YYY YYY
			X1  YYY YYY YYY YYY YYY YYY YYY -   YYY
			X2  YYY ... YYY YYY YYY YYY YYY YYY -
			`,
		},
		{
			Name:     "egress only to db on one port",
			Policies: pols(np("a", "web-to-db", sel("app", "web"), networkingv1.NetworkPolicySpec{PolicyTypes: types(egress), Egress: to(ports(port(tcp, num(8080))), pods("app", "db"))})),
			Table: `
			    A   D   B   C   WA  WB  WC  X1  X2
			A   -   .Y. ... ... ... ... ... ... ...
			D   YYY -   YYY YYY YYY YYY YYY YYY YYY
			B   YYY YYY -   YYY YYY YYY YYY YYY YYY
			C   YYY YYY YYY -   YYY YYY YYY YYY YYY
			WA  YYY YYY YYY YYY -   YYY YYY YYY YYY
			WB  YYY YYY YYY YYY YYY -   YYY YYY YYY
			WC  YYY YYY YYY YYY YYY YYY -   YYY YYY
			X1  YYY YYY YYY YYY YYY YYY YYY -   YYY
			X2  YYY YYY YYY YYY YYY YYY YYY YYY -
			`,
		},
		{
			Name:     "egress to an ipBlock with except",
			Policies: pols(np("c", "client-to-block", sel("app", "client"), networkingv1.NetworkPolicySpec{PolicyTypes: types(egress), Egress: to(nil, block("192.0.2.0/24", "192.0.2.128/25"))})),
			Table: `
			    A   D   B   C   WA  WB  WC  X1  X2
			A   -   YYY YYY YYY YYY YYY YYY YYY YYY
			D   YYY -   YYY YYY YYY YYY YYY YYY YYY
			B   YYY YYY -   YYY YYY YYY YYY YYY YYY
			C   ... ... ... -   ... ... ... YYY ...
			WA  YYY YYY YYY YYY -   YYY YYY YYY YYY
			WB  YYY YYY YYY YYY YYY -   YYY YYY YYY
			WC  YYY YYY YYY YYY YYY YYY -   YYY YYY
			X1  YYY YYY YYY YYY YYY YYY YYY -   YYY
			X2  YYY YYY YYY YYY YYY YYY YYY YYY -
			`,
		},
		{
			Name:     "egress to another cluster",
			Policies: pols(np("c", "client-to-west", sel("app", "client"), networkingv1.NetworkPolicySpec{PolicyTypes: types(egress), Egress: to(nil, namespaces(clustermesh.LabelCluster, "west"))})),
			Table: `
			    A   D   B   C   WA  WB  WC  X1  X2
			A   -   YYY YYY YYY YYY YYY YYY YYY YYY
			D   YYY -   YYY YYY YYY YYY YYY YYY YYY
			B   YYY YYY -   YYY YYY YYY YYY YYY YYY
			C   ... ... ... -   YYY YYY YYY ... ...
			WA  YYY YYY YYY YYY -   YYY YYY YYY YYY
			WB  YYY YYY YYY YYY YYY -   YYY YYY YYY
			WC  YYY YYY YYY YYY YYY YYY -   YYY YYY
			X1  YYY YYY YYY YYY YYY YYY YYY -   YYY
			X2  YYY YYY YYY YYY YYY YYY YYY YYY -
			`,
		},
		{
			Name:     "egress named port resolves per peer",
			Policies: pols(np("c", "client-to-http", sel(), networkingv1.NetworkPolicySpec{PolicyTypes: types(egress), Egress: to(ports(port(tcp, named("http"))), namespaces())})),
			Table: `
			    A   D   B   C   WA  WB  WC  X1  X2
			A   -   YYY YYY YYY YYY YYY YYY YYY YYY
			D   YYY -   YYY YYY YYY YYY YYY YYY YYY
			B   YYY YYY -   YYY YYY YYY YYY YYY YYY
			C   Y.. .Y. Y.. -   ... ... ... ... ...
			WA  YYY YYY YYY YYY -   YYY YYY YYY YYY
			WB  YYY YYY YYY YYY YYY -   YYY YYY YYY
			WC  YYY YYY YYY YYY YYY YYY -   YYY YYY
			X1  YYY YYY YYY YYY YYY YYY YYY -   YYY
			X2  YYY YYY YYY YYY YYY YYY YYY YYY -
			`,
		},
		{
			Name:     "podSelector with NotIn",
			Policies: pols(np("a", "not-db", metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"db"}}}}, networkingv1.NetworkPolicySpec{PolicyTypes: types(ingress)})),
			Table: `
			    A   D   B   C   WA  WB  WC  X1  X2
			A   -   YYY YYY YYY YYY YYY YYY YYY YYY
			D   ... -   YYY YYY YYY YYY YYY YYY YYY
			B   ... YYY -   YYY YYY YYY YYY YYY YYY
			C   ... YYY YYY -   YYY YYY YYY YYY YYY
			WA  ... YYY YYY YYY -   YYY YYY YYY YYY
			WB  ... YYY YYY YYY YYY -   YYY YYY YYY
			WC  ... YYY YYY YYY YYY YYY -   YYY YYY
			X1  ... YYY YYY YYY YYY YYY YYY -   YYY
			X2  ... YYY YYY YYY YYY YYY YYY YYY -
			`,
		},
		{
			Name:     "two policies add up",
			Policies: pols(np("a", "db-from-web", sel("app", "db"), networkingv1.NetworkPolicySpec{Ingress: from(pods("app", "web"))}), np("a", "db-from-team-y", sel("app", "db"), networkingv1.NetworkPolicySpec{Ingress: from(namespaces("team", "y"))})),
			Table: `
			    A   D   B   C   WA  WB  WC  X1  X2
			A   -   YYY YYY YYY YYY YYY YYY YYY YYY
			D   YYY -   YYY YYY YYY YYY YYY YYY YYY
			B   YYY YYY -   YYY YYY YYY YYY YYY YYY
			C   YYY ... YYY -   YYY YYY YYY YYY YYY
			WA  YYY ... YYY YYY -   YYY YYY YYY YYY
			WB  YYY ... YYY YYY YYY -   YYY YYY YYY
			WC  YYY ... YYY YYY YYY YYY -   YYY YYY
			X1  YYY ... YYY YYY YYY YYY YYY -   YYY
			X2  YYY ... YYY YYY YYY YYY YYY YYY -
			`,
		},
		{
			Name:     "policy in one namespace isolates only its pods",
			Policies: pols(np("b", "deny-ingress", sel(), networkingv1.NetworkPolicySpec{})),
			Table: `
			    A   D   B   C   WA  WB  WC  X1  X2
			A   -   YYY ... YYY YYY YYY YYY YYY YYY
			D   YYY -   ... YYY YYY YYY YYY YYY YYY
			B   YYY YYY -   YYY YYY YYY YYY YYY YYY
			C   YYY YYY ... -   YYY YYY YYY YYY YYY
			WA  YYY YYY ... YYY -   YYY YYY YYY YYY
			WB  YYY YYY ... YYY YYY -   YYY YYY YYY
			WC  YYY YYY ... YYY YYY YYY -   YYY YYY
			X1  YYY YYY ... YYY YYY YYY YYY -   YYY
			X2  YYY YYY ... YYY YYY YYY YYY YYY -
			`,
		},
		{
			Name:     "ingress and egress rules of one policy",
			Policies: pols(np("a", "db", sel("app", "db"), networkingv1.NetworkPolicySpec{PolicyTypes: types(ingress, egress), Ingress: from(networkingv1.NetworkPolicyPeer{NamespaceSelector: selp("team", "x"), PodSelector: selp("app", "client")}), Egress: to(ports(port(tcp, num(80))), networkingv1.NetworkPolicyPeer{NamespaceSelector: selp(), PodSelector: selp("app", "web")})})),
			Table: `
			    A   D   B   C   WA  WB  WC  X1  X2
			A   -   ... YYY YYY YYY YYY YYY YYY YYY
			D   Y.. -   Y.. ... ... ... ... ... ...
			B   YYY ... -   YYY YYY YYY YYY YYY YYY
			C   YYY YYY YYY -   YYY YYY YYY YYY YYY
			WA  YYY ... YYY YYY -   YYY YYY YYY YYY
			WB  YYY ... YYY YYY YYY -   YYY YYY YYY
			WC  YYY ... YYY YYY YYY YYY -   YYY YYY
			X1  YYY ... YYY YYY YYY YYY YYY -   YYY
			X2  YYY ... YYY YYY YYY YYY YYY YYY -
			`,
		},
		{
			Name:     "west: default deny ingress in b",
			Cluster:  Remote,
			Policies: pols(np("b", "deny-ingress", sel(), networkingv1.NetworkPolicySpec{PolicyTypes: types(ingress)})),
			Table: `
			    A   D   B   C   WA  WB  WC  X1  X2
			A   -   YYY YYY YYY YYY ... YYY YYY YYY
			D   YYY -   YYY YYY YYY ... YYY YYY YYY
			B   YYY YYY -   YYY YYY ... YYY YYY YYY
			C   YYY YYY YYY -   YYY ... YYY YYY YYY
			WA  YYY YYY YYY YYY -   ... YYY YYY YYY
			WB  YYY YYY YYY YYY YYY -   YYY YYY YYY
			WC  YYY YYY YYY YYY YYY ... -   YYY YYY
			X1  YYY YYY YYY YYY YYY ... YYY -   YYY
			X2  YYY YYY YYY YYY YYY ... YYY YYY -
			`,
		},
		{
			Name:     "west: api admits east's web pods by cluster on its named port",
			Cluster:  Remote,
			Policies: pols(np("b", "api-from-east-web", sel("app", "api"), networkingv1.NetworkPolicySpec{Ingress: fromPorts(ports(port(tcp, named("http"))), networkingv1.NetworkPolicyPeer{NamespaceSelector: selp(clustermesh.LabelCluster, "east"), PodSelector: selp("app", "web")})})),
			Table: `
			    A   D   B   C   WA  WB  WC  X1  X2
			A   -   YYY YYY YYY YYY .Y. YYY YYY YYY
			D   YYY -   YYY YYY YYY ... YYY YYY YYY
			B   YYY YYY -   YYY YYY .Y. YYY YYY YYY
			C   YYY YYY YYY -   YYY ... YYY YYY YYY
			WA  YYY YYY YYY YYY -   ... YYY YYY YYY
			WB  YYY YYY YYY YYY YYY -   YYY YYY YYY
			WC  YYY YYY YYY YYY YYY ... -   YYY YYY
			X1  YYY YYY YYY YYY YYY ... YYY -   YYY
			X2  YYY YYY YYY YYY YYY ... YYY YYY -
			`,
		},
		{
			Name:     "west: egress from c to east only",
			Cluster:  Remote,
			Policies: pols(np("c", "to-east", sel(), networkingv1.NetworkPolicySpec{PolicyTypes: types(egress), Egress: to(nil, namespaces(clustermesh.LabelCluster, "east"))})),
			Table: `
			    A   D   B   C   WA  WB  WC  X1  X2
			A   -   YYY YYY YYY YYY YYY YYY YYY YYY
			D   YYY -   YYY YYY YYY YYY YYY YYY YYY
			B   YYY YYY -   YYY YYY YYY YYY YYY YYY
			C   YYY YYY YYY -   YYY YYY YYY YYY YYY
			WA  YYY YYY YYY YYY -   YYY YYY YYY YYY
			WB  YYY YYY YYY YYY YYY -   YYY YYY YYY
			WC  YYY YYY YYY YYY ... ... -   ... ...
			X1  YYY YYY YYY YYY YYY YYY YYY -   YYY
			X2  YYY YYY YYY YYY YYY YYY YYY YYY -
			`,
		},
	}
}
