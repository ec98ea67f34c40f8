// Package policytest holds NetworkPolicy scenarios with their expected
// verdicts, shared by the compiler's unit tests and the datapath's probe
// matrix on real BPF.
//
// The world of every scenario: two clusters, east (local: its policies are
// the scenario's, unless the scenario names west) and west, each with namespaces a (team=x), b (team=y)
// and c (team=x); seven pods, at least one in each namespace of each
// cluster, and two addresses outside the mesh:
//
//	A   east a/web     app=web     named ports http=80/TCP, dns=53/UDP
//	D   east a/db      app=db      http=8080/TCP
//	B   east b/web     app=web     http=80/TCP, dns=53/UDP
//	C   east c/client  app=client
//	WA  west a/web     app=web     http=80/TCP
//	WB  west b/api     app=api     http=8080/TCP
//	WC  west c/client  app=client
//	X1  192.0.2.10     outside the mesh
//	X2  192.0.2.130    outside the mesh
//
// Every endpoint serves TCP 80, TCP 8080 and UDP 53. A scenario's table
// has a row per client and a column per server; each cell gives the
// verdict of the three probes tcp/80, tcp/8080, udp/53 in that order (Y
// connects, . is dropped; - on the diagonal).
package policytest

import (
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/braidmesh/braid/clustermesh"
)

// Clusters of the world.
const (
	Local  clustermesh.ClusterName = "east"
	Remote clustermesh.ClusterName = "west"
)

// Endpoint is a pod or an address outside the mesh.
type Endpoint struct {
	Name      string
	Cluster   clustermesh.ClusterName // "" outside the mesh
	Namespace string
	Labels    map[string]string
	Ports     []clustermesh.NamedPort
	// Identity is the pod's identity (0 outside the mesh).
	Identity clustermesh.NumericIdentity
	// Addr is the endpoint's address in the probe matrix.
	Addr netip.Addr
}

// Probe is one probed protocol and port.
type Probe struct {
	Protocol clustermesh.Protocol
	Port     uint16
}

func (p Probe) String() string { return strings.ToLower(string(p.Protocol)) + "/" + fmt.Sprint(p.Port) }

// Probes are the probes of every cell, in cell order.
var Probes = []Probe{{clustermesh.TCP, 80}, {clustermesh.TCP, 8080}, {clustermesh.UDP, 53}}

var nsLabels = map[string]map[string]string{
	"a": {"team": "x"},
	"b": {"team": "y"},
	"c": {"team": "x"},
}

func httpPort(p uint16) clustermesh.NamedPort {
	return clustermesh.NamedPort{Name: "http", Port: p, Protocol: clustermesh.TCP}
}

var dnsPort = clustermesh.NamedPort{Name: "dns", Port: 53, Protocol: clustermesh.UDP}

// Endpoints returns the world's endpoints, in table order.
func Endpoints() []Endpoint {
	a := netip.MustParseAddr
	return []Endpoint{
		{Name: "A", Cluster: Local, Namespace: "a", Labels: map[string]string{"app": "web"}, Ports: []clustermesh.NamedPort{dnsPort, httpPort(80)}, Identity: 1<<16 | 1, Addr: a("10.1.1.2")},
		{Name: "D", Cluster: Local, Namespace: "a", Labels: map[string]string{"app": "db"}, Ports: []clustermesh.NamedPort{httpPort(8080)}, Identity: 1<<16 | 2, Addr: a("10.1.2.2")},
		{Name: "B", Cluster: Local, Namespace: "b", Labels: map[string]string{"app": "web"}, Ports: []clustermesh.NamedPort{dnsPort, httpPort(80)}, Identity: 1<<16 | 3, Addr: a("10.1.3.2")},
		{Name: "C", Cluster: Local, Namespace: "c", Labels: map[string]string{"app": "client"}, Identity: 1<<16 | 4, Addr: a("10.1.4.2")},
		{Name: "WA", Cluster: Remote, Namespace: "a", Labels: map[string]string{"app": "web"}, Ports: []clustermesh.NamedPort{httpPort(80)}, Identity: 2<<16 | 1, Addr: a("10.2.5.2")},
		{Name: "WB", Cluster: Remote, Namespace: "b", Labels: map[string]string{"app": "api"}, Ports: []clustermesh.NamedPort{httpPort(8080)}, Identity: 2<<16 | 2, Addr: a("10.2.6.2")},
		{Name: "WC", Cluster: Remote, Namespace: "c", Labels: map[string]string{"app": "client"}, Identity: 2<<16 | 3, Addr: a("10.2.7.2")},
		{Name: "X1", Addr: a("192.0.2.10")},
		{Name: "X2", Addr: a("192.0.2.130")},
	}
}

// NamespaceLabels returns the labels of namespace ns (a copy).
func NamespaceLabels(ns string) map[string]string {
	out := map[string]string{}
	for k, v := range nsLabels[ns] {
		out[k] = v
	}
	return out
}

// IdentityLabels returns the labels the operator publishes for e.
func IdentityLabels(e Endpoint) map[string]string {
	out := map[string]string{clustermesh.LabelNamespace: e.Namespace}
	for k, v := range e.Labels {
		out[k] = v
	}
	for k, v := range nsLabels[e.Namespace] {
		out[clustermesh.NamespaceLabelPrefix+k] = v
	}
	out[clustermesh.NamespaceLabelPrefix+"kubernetes.io/metadata.name"] = e.Namespace
	return out
}

// Scenario is a set of one cluster's policies and the verdicts they give.
type Scenario struct {
	Name string
	// Cluster holds the policies and enforces them for its pods: Local
	// (east) when empty; Remote (west) for west's own policies.
	Cluster  clustermesh.ClusterName
	Policies []*networkingv1.NetworkPolicy
	// Table is the expected verdict table (see the package doc).
	Table string
}

// Enforcer is the cluster that holds and enforces s's policies.
func (s Scenario) Enforcer() clustermesh.ClusterName {
	if s.Cluster == "" {
		return Local
	}
	return s.Cluster
}

// Verdicts parses s.Table into verdicts by client, server and probe index.
func (s Scenario) Verdicts() (map[[2]string][]bool, error) {
	lines := strings.Split(strings.TrimSpace(s.Table), "\n")
	if len(lines) < 2 {
		return nil, fmt.Errorf("scenario %s: table has no rows", s.Name)
	}
	cols := strings.Fields(lines[0])
	out := map[[2]string][]bool{}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) != len(cols)+1 {
			return nil, fmt.Errorf("scenario %s: row %q has %d cells, want %d", s.Name, l, len(f)-1, len(cols))
		}
		for i, cell := range f[1:] {
			if f[0] == cols[i] {
				if cell != "-" {
					return nil, fmt.Errorf("scenario %s: diagonal cell %s is %q, want -", s.Name, f[0], cell)
				}
				continue
			}
			if len(cell) != len(Probes) {
				return nil, fmt.Errorf("scenario %s: cell %s->%s is %q, want %d characters", s.Name, f[0], cols[i], cell, len(Probes))
			}
			v := make([]bool, len(Probes))
			for j, ch := range cell {
				switch ch {
				case 'Y':
					v[j] = true
				case '.':
				default:
					return nil, fmt.Errorf("scenario %s: cell %s->%s has %q", s.Name, f[0], cols[i], ch)
				}
			}
			out[[2]string{f[0], cols[i]}] = v
		}
	}
	return out, nil
}

// Builders for policies.

func np(ns, name string, sel metav1.LabelSelector, spec networkingv1.NetworkPolicySpec) *networkingv1.NetworkPolicy {
	spec.PodSelector = sel
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: spec}
}

func sel(kv ...string) metav1.LabelSelector {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	if len(m) == 0 {
		return metav1.LabelSelector{}
	}
	return metav1.LabelSelector{MatchLabels: m}
}

func selp(kv ...string) *metav1.LabelSelector { s := sel(kv...); return &s }

func types(t ...networkingv1.PolicyType) []networkingv1.PolicyType { return t }

const (
	ingress = networkingv1.PolicyTypeIngress
	egress  = networkingv1.PolicyTypeEgress
)

func from(peers ...networkingv1.NetworkPolicyPeer) []networkingv1.NetworkPolicyIngressRule {
	return []networkingv1.NetworkPolicyIngressRule{{From: peers}}
}

func fromPorts(ports []networkingv1.NetworkPolicyPort, peers ...networkingv1.NetworkPolicyPeer) []networkingv1.NetworkPolicyIngressRule {
	return []networkingv1.NetworkPolicyIngressRule{{From: peers, Ports: ports}}
}

func to(ports []networkingv1.NetworkPolicyPort, peers ...networkingv1.NetworkPolicyPeer) []networkingv1.NetworkPolicyEgressRule {
	return []networkingv1.NetworkPolicyEgressRule{{To: peers, Ports: ports}}
}

func pods(kv ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: selp(kv...)}
}

func namespaces(kv ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: selp(kv...)}
}

func block(cidr string, except ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}
}

func port(proto corev1.Protocol, p intstr.IntOrString, end ...int32) networkingv1.NetworkPolicyPort {
	out := networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &p}
	if len(end) > 0 {
		out.EndPort = &end[0]
	}
	return out
}

func ports(p ...networkingv1.NetworkPolicyPort) []networkingv1.NetworkPolicyPort { return p }

var (
	tcp = corev1.ProtocolTCP
	udp = corev1.ProtocolUDP
)

func num(p int) intstr.IntOrString      { return intstr.FromInt32(int32(p)) }
func named(n string) intstr.IntOrString { return intstr.FromString(n) }
