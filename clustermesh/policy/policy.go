package policy

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/braidmesh/braid/clustermesh"
)

// Address-block identities lie in cluster ID 0's range, which no cluster
// allocates from, above the reserved identities.
const (
	FirstBlockIdentity clustermesh.NumericIdentity = 0x100
	LastBlockIdentity  clustermesh.NumericIdentity = 0xFFFF
)

// labelMetadataName is the label the API server gives every namespace.
const labelMetadataName = "kubernetes.io/metadata.name"

// Identity is an identity as policy sees it.
type Identity struct {
	ID      clustermesh.NumericIdentity
	Cluster clustermesh.ClusterName
	Labels  map[string]string
	// NamedPorts are the named ports of the identity's pods.
	NamedPorts []clustermesh.NamedPort
}

// Input is what Compile reads.
type Input struct {
	// Cluster is the local cluster, whose policies these are.
	Cluster clustermesh.ClusterName
	// Policies are the local cluster's NetworkPolicies.
	Policies []*networkingv1.NetworkPolicy
	// Identities are every cluster's identities.
	Identities []Identity
	// Blocks are the address-block identities of the previous Result:
	// a prefix keeps its identity across compiles.
	Blocks []Block
}

// Block is the identity of an address block an ipBlock names.
type Block struct {
	Prefix   netip.Prefix
	Identity clustermesh.NumericIdentity
}

// Selection lists the policies ("namespace/name") that select an identity.
type Selection struct {
	Ingress []string `json:"ingress,omitempty"`
	Egress  []string `json:"egress,omitempty"`
}

// Result is a compiled policy set. Slices are sorted; Rules hold no
// duplicates.
type Result struct {
	Rules    []clustermesh.PolicyRule
	Isolated []clustermesh.PolicyIsolation
	Blocks   []Block
	// Selected gives, per local identity selected by a policy, the
	// policies selecting it.
	Selected map[clustermesh.NumericIdentity]Selection
	// Problems are policy parts that were skipped, with the reason.
	Problems []string
}

// ident is an identity with its labels split for matching.
type ident struct {
	Identity
	namespace string
	pod       labels.Set // the pod's labels plus the cluster keys
	ns        labels.Set // the namespace's labels plus the cluster keys and its name
	ports     map[string][]clustermesh.NamedPort
}

func newIdent(id Identity) *ident {
	x := &ident{Identity: id, pod: labels.Set{}, ns: labels.Set{}}
	for k, v := range id.Labels {
		switch {
		case k == clustermesh.LabelNamespace:
			x.namespace = v
		case strings.HasPrefix(k, clustermesh.NamespaceLabelPrefix):
			x.ns[strings.TrimPrefix(k, clustermesh.NamespaceLabelPrefix)] = v
		case !clustermesh.ReservedLabel(k):
			x.pod[k] = v
		}
	}
	x.ns[labelMetadataName] = x.namespace
	for _, set := range []labels.Set{x.pod, x.ns} {
		set[clustermesh.LabelCluster] = string(id.Cluster)
		set[clustermesh.LabelCiliumCluster] = string(id.Cluster)
	}
	if len(id.NamedPorts) > 0 {
		x.ports = make(map[string][]clustermesh.NamedPort)
		for _, p := range id.NamedPorts {
			x.ports[p.Name] = append(x.ports[p.Name], p)
		}
	}
	return x
}

// compiler holds one Compile's state.
type compiler struct {
	in     Input
	idents []*ident // sorted by ID
	local  map[string][]*ident
	blocks map[netip.Prefix]clustermesh.NumericIdentity
	rules  map[clustermesh.PolicyRule]struct{}
	iso    map[clustermesh.PolicyIsolation]struct{}
	sel    map[clustermesh.NumericIdentity]*Selection
	probs  []string
}

// Compile compiles in. See the package doc for the semantics.
func Compile(in Input) Result {
	c := &compiler{in: in, local: map[string][]*ident{}, blocks: map[netip.Prefix]clustermesh.NumericIdentity{},
		rules: map[clustermesh.PolicyRule]struct{}{}, iso: map[clustermesh.PolicyIsolation]struct{}{}, sel: map[clustermesh.NumericIdentity]*Selection{}}
	ids := slices.Clone(in.Identities)
	slices.SortFunc(ids, func(a, b Identity) int { return cmp.Compare(a.ID, b.ID) })
	for _, id := range ids {
		x := newIdent(id)
		c.idents = append(c.idents, x)
		if id.Cluster == in.Cluster {
			c.local[x.namespace] = append(c.local[x.namespace], x)
		}
	}
	pols := slices.Clone(in.Policies)
	slices.SortFunc(pols, func(a, b *networkingv1.NetworkPolicy) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	c.allocateBlocks(pols)
	for _, p := range pols {
		c.policy(p)
	}
	return c.result()
}

// allocateBlocks gives every prefix an ipBlock names an identity, keeping
// those of in.Blocks.
func (c *compiler) allocateBlocks(pols []*networkingv1.NetworkPolicy) {
	want := map[netip.Prefix]bool{}
	for _, p := range pols {
		for _, peers := range peerLists(p) {
			for _, peer := range peers {
				if peer.IPBlock == nil {
					continue
				}
				if pfx, err := netip.ParsePrefix(peer.IPBlock.CIDR); err == nil {
					want[pfx.Masked()] = true
				}
				for _, e := range peer.IPBlock.Except {
					if pfx, err := netip.ParsePrefix(e); err == nil {
						want[pfx.Masked()] = true
					}
				}
			}
		}
	}
	used := map[clustermesh.NumericIdentity]bool{}
	for _, b := range c.in.Blocks {
		if want[b.Prefix] && b.Identity >= FirstBlockIdentity && b.Identity <= LastBlockIdentity && !used[b.Identity] {
			c.blocks[b.Prefix] = b.Identity
			used[b.Identity] = true
		}
	}
	next := FirstBlockIdentity
	for _, pfx := range slices.SortedFunc(maps.Keys(want), comparePrefix) {
		if _, ok := c.blocks[pfx]; ok {
			continue
		}
		for used[next] && next <= LastBlockIdentity {
			next++
		}
		if next > LastBlockIdentity {
			c.probs = append(c.probs, fmt.Sprintf("ipBlock %s: no address-block identity left (at most %d blocks)", pfx, LastBlockIdentity-FirstBlockIdentity+1))
			continue
		}
		c.blocks[pfx] = next
		used[next] = true
	}
}

func comparePrefix(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}

// peerLists returns every peer list of p, ingress and egress.
func peerLists(p *networkingv1.NetworkPolicy) [][]networkingv1.NetworkPolicyPeer {
	var out [][]networkingv1.NetworkPolicyPeer
	for _, r := range p.Spec.Ingress {
		out = append(out, r.From)
	}
	for _, r := range p.Spec.Egress {
		out = append(out, r.To)
	}
	return out
}

// types returns the directions p applies to: its policyTypes, or Ingress
// plus Egress when it has egress rules.
func types(p *networkingv1.NetworkPolicy) (ingress, egress bool) {
	if len(p.Spec.PolicyTypes) == 0 {
		return true, len(p.Spec.Egress) > 0
	}
	for _, t := range p.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			ingress = true
		case networkingv1.PolicyTypeEgress:
			egress = true
		}
	}
	return ingress, egress
}

func (c *compiler) problem(p *networkingv1.NetworkPolicy, format string, args ...any) {
	c.probs = append(c.probs, fmt.Sprintf("networkpolicy %s/%s: ", p.Namespace, p.Name)+fmt.Sprintf(format, args...))
}

func (c *compiler) policy(p *networkingv1.NetworkPolicy) {
	name := p.Namespace + "/" + p.Name
	sel, err := metav1.LabelSelectorAsSelector(&p.Spec.PodSelector)
	if err != nil {
		c.problem(p, "podSelector: %v (the policy selects nothing)", err)
		return
	}
	var targets []*ident
	for _, x := range c.local[p.Namespace] {
		if sel.Matches(x.pod) {
			targets = append(targets, x)
		}
	}
	if len(targets) == 0 {
		return
	}
	ingress, egress := types(p)
	if ingress {
		for _, t := range targets {
			c.isolate(clustermesh.PolicyIngress, t.ID, name)
		}
		for i, r := range p.Spec.Ingress {
			peers, any := c.peers(p, r.From, fmt.Sprintf("ingress rule %d", i))
			for _, t := range targets {
				c.emit(p, clustermesh.PolicyIngress, t, peers, any, r.Ports)
			}
		}
	}
	if egress {
		for _, t := range targets {
			c.isolate(clustermesh.PolicyEgress, t.ID, name)
		}
		for i, r := range p.Spec.Egress {
			peers, any := c.peers(p, r.To, fmt.Sprintf("egress rule %d", i))
			for _, t := range targets {
				c.emit(p, clustermesh.PolicyEgress, t, peers, any, r.Ports)
			}
		}
	}
}

func (c *compiler) isolate(d clustermesh.PolicyDirection, id clustermesh.NumericIdentity, policy string) {
	c.iso[clustermesh.PolicyIsolation{Direction: d, Identity: id}] = struct{}{}
	s := c.sel[id]
	if s == nil {
		s = &Selection{}
		c.sel[id] = s
	}
	if d == clustermesh.PolicyIngress {
		s.Ingress = append(s.Ingress, policy)
	} else {
		s.Egress = append(s.Egress, policy)
	}
}

// peer is a resolved peer: a pod identity (with its named ports) or an
// address block (ident nil).
type peer struct {
	id    clustermesh.NumericIdentity
	ident *ident
}

// namesCluster reports whether s mentions the cluster label.
func namesCluster(s *metav1.LabelSelector) bool {
	if s == nil {
		return false
	}
	for k := range s.MatchLabels {
		if k == clustermesh.LabelCluster || k == clustermesh.LabelCiliumCluster {
			return true
		}
	}
	for _, e := range s.MatchExpressions {
		if e.Key == clustermesh.LabelCluster || e.Key == clustermesh.LabelCiliumCluster {
			return true
		}
	}
	return false
}

// peers resolves a rule's peer list; any is true when it allows every peer.
func (c *compiler) peers(p *networkingv1.NetworkPolicy, list []networkingv1.NetworkPolicyPeer, where string) (out []peer, any bool) {
	if len(list) == 0 {
		return nil, true
	}
	seen := map[clustermesh.NumericIdentity]bool{}
	add := func(pr peer) {
		if !seen[pr.id] {
			seen[pr.id] = true
			out = append(out, pr)
		}
	}
	for i, pe := range list {
		if pe.IPBlock != nil {
			ids, err := c.block(pe.IPBlock)
			if err != nil {
				c.problem(p, "%s peer %d: %v (skipped)", where, i, err)
				continue
			}
			for _, id := range ids {
				add(peer{id: id})
			}
			continue
		}
		if pe.PodSelector == nil && pe.NamespaceSelector == nil {
			c.problem(p, "%s peer %d: no podSelector, namespaceSelector or ipBlock (skipped)", where, i)
			continue
		}
		var podSel, nsSel labels.Selector
		var err error
		if pe.PodSelector != nil {
			if podSel, err = metav1.LabelSelectorAsSelector(pe.PodSelector); err != nil {
				c.problem(p, "%s peer %d: podSelector: %v (skipped)", where, i, err)
				continue
			}
		}
		if pe.NamespaceSelector != nil {
			if nsSel, err = metav1.LabelSelectorAsSelector(pe.NamespaceSelector); err != nil {
				c.problem(p, "%s peer %d: namespaceSelector: %v (skipped)", where, i, err)
				continue
			}
		}
		mesh := namesCluster(pe.PodSelector) || namesCluster(pe.NamespaceSelector)
		for _, x := range c.idents {
			if !mesh && x.Cluster != c.in.Cluster {
				continue
			}
			if nsSel == nil && x.namespace != p.Namespace {
				continue
			}
			if nsSel != nil && !nsSel.Matches(x.ns) {
				continue
			}
			if podSel != nil && !podSel.Matches(x.pod) {
				continue
			}
			add(peer{id: x.ID, ident: x})
		}
	}
	return out, false
}

// block returns the address-block identities an ipBlock allows.
func (c *compiler) block(b *networkingv1.IPBlock) ([]clustermesh.NumericIdentity, error) {
	cidr, err := netip.ParsePrefix(b.CIDR)
	if err != nil {
		return nil, fmt.Errorf("ipBlock cidr %q: %w", b.CIDR, err)
	}
	cidr = cidr.Masked()
	var except []netip.Prefix
	for _, e := range b.Except {
		pfx, err := netip.ParsePrefix(e)
		if err != nil {
			return nil, fmt.Errorf("ipBlock except %q: %w", e, err)
		}
		except = append(except, pfx.Masked())
	}
	var out []clustermesh.NumericIdentity
	for _, q := range slices.SortedFunc(maps.Keys(c.blocks), comparePrefix) {
		if !inside(q, cidr) {
			continue
		}
		excluded := false
		for _, e := range except {
			if inside(q, e) {
				excluded = true
				break
			}
		}
		if !excluded {
			out = append(out, c.blocks[q])
		}
	}
	return out, nil
}

// inside reports whether prefix q lies within prefix p.
func inside(q, p netip.Prefix) bool {
	return q.Addr().Is4() == p.Addr().Is4() && q.Bits() >= p.Bits() && p.Contains(q.Addr())
}

// emit adds the rules of one policy rule for one target.
func (c *compiler) emit(p *networkingv1.NetworkPolicy, d clustermesh.PolicyDirection, t *ident, peers []peer, any bool, ports []networkingv1.NetworkPolicyPort) {
	if any {
		peers = []peer{{id: clustermesh.AnyPeer}}
	}
	if len(ports) == 0 {
		for _, pr := range peers {
			c.rules[clustermesh.PolicyRule{Direction: d, Local: t.ID, Peer: pr.id}] = struct{}{}
		}
		return
	}
	for _, pp := range ports {
		proto := clustermesh.TCP
		if pp.Protocol != nil {
			proto = clustermesh.Protocol(*pp.Protocol)
		}
		switch proto {
		case clustermesh.TCP, clustermesh.UDP, clustermesh.SCTP:
		default:
			c.problem(p, "port protocol %q: must be TCP, UDP or SCTP (skipped)", proto)
			continue
		}
		if pp.Port == nil || pp.Port.Type == intstr.Int {
			var lo, hi uint16
			if pp.Port != nil {
				if pp.Port.IntVal < 1 || pp.Port.IntVal > 65535 {
					c.problem(p, "port %d: must be in 1..65535 (skipped)", pp.Port.IntVal)
					continue
				}
				lo = uint16(pp.Port.IntVal)
				if pp.EndPort != nil {
					if *pp.EndPort < pp.Port.IntVal || *pp.EndPort > 65535 {
						c.problem(p, "endPort %d: must be in %d..65535 (skipped)", *pp.EndPort, pp.Port.IntVal)
						continue
					}
					if *pp.EndPort > pp.Port.IntVal {
						hi = uint16(*pp.EndPort)
					}
				}
			}
			for _, pr := range peers {
				c.rules[clustermesh.PolicyRule{Direction: d, Local: t.ID, Peer: pr.id, Protocol: proto, Port: lo, EndPort: hi}] = struct{}{}
			}
			continue
		}
		// A named port: the selected pod's for ingress, the peer's for egress.
		name := pp.Port.StrVal
		if d == clustermesh.PolicyIngress {
			for _, np := range t.ports[name] {
				if np.Protocol != proto {
					continue
				}
				for _, pr := range peers {
					c.rules[clustermesh.PolicyRule{Direction: d, Local: t.ID, Peer: pr.id, Protocol: proto, Port: np.Port}] = struct{}{}
				}
			}
			continue
		}
		owners := peers
		if any {
			owners = nil
			for _, x := range c.idents {
				owners = append(owners, peer{id: x.ID, ident: x})
			}
		}
		for _, pr := range owners {
			if pr.ident == nil {
				continue
			}
			for _, np := range pr.ident.ports[name] {
				if np.Protocol == proto {
					c.rules[clustermesh.PolicyRule{Direction: d, Local: t.ID, Peer: pr.id, Protocol: proto, Port: np.Port}] = struct{}{}
				}
			}
		}
	}
}

func compareRule(a, b clustermesh.PolicyRule) int {
	return cmp.Or(cmp.Compare(a.Direction, b.Direction), cmp.Compare(a.Local, b.Local), cmp.Compare(a.Peer, b.Peer),
		cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port), cmp.Compare(a.EndPort, b.EndPort))
}

func (c *compiler) result() Result {
	r := Result{Problems: c.probs, Selected: make(map[clustermesh.NumericIdentity]Selection, len(c.sel))}
	r.Rules = slices.SortedFunc(maps.Keys(c.rules), compareRule)
	r.Isolated = slices.SortedFunc(maps.Keys(c.iso), func(a, b clustermesh.PolicyIsolation) int {
		return cmp.Or(cmp.Compare(a.Identity, b.Identity), cmp.Compare(a.Direction, b.Direction))
	})
	for _, pfx := range slices.SortedFunc(maps.Keys(c.blocks), comparePrefix) {
		r.Blocks = append(r.Blocks, Block{Prefix: pfx, Identity: c.blocks[pfx]})
	}
	for id, s := range c.sel {
		r.Selected[id] = *s
	}
	return r
}
