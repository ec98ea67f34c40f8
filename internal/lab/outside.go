package lab

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MaxOutside bounds how many outside hosts a lab has: they take the last
// underlay addresses, above every node's.
const MaxOutside = 10

// firstOutside is the underlay host number of the first outside host.
const firstOutside = 240

// Outside is a host outside the mesh: a network namespace on the underlay
// holding an address no cluster knows (Addr), routed to and from every
// node's pod CIDR as a router beyond the nodes would. Policy tests use it
// as the address an ipBlock names.
type Outside struct {
	Name string
	// Addr is the host's own address, outside every cluster's ranges.
	Addr netip.Addr
	// UnderlayIP is its address on the underlay, the nodes' next hop to Addr.
	UnderlayIP netip.Addr
	// Netns is the name of its network namespace (/run/netns/<Netns>).
	Netns string
}

// outsideNetns names outside host i's namespace; teardown removes every
// namespace of the run with this prefix, so a killed run leaves none.
func outsideNetns(p *Plan, i int) string { return fmt.Sprintf("bl%s-out%d", p.Run, i) }

// AddOutside creates an outside host holding addr: its namespace with a
// veth into the underlay bridge, routes from it to every node's pod CIDR
// (with addr as source) and to the other outside hosts, and, on every node
// and the other outside hosts, a route to addr. The lab's Close removes
// it. Nodes must have their pod CIDRs (Up returned). Add outside hosts one
// at a time: two added concurrently do not route to each other.
func (l *Lab) AddOutside(ctx context.Context, name string, addr netip.Addr) (*Outside, error) {
	l.mu.Lock()
	i := len(l.outside)
	others := slices.Clone(l.outside)
	l.outside = append(l.outside, nil) // reserve index i
	l.mu.Unlock()
	if i >= MaxOutside {
		return nil, fmt.Errorf("add outside host %s: at most %d per lab", name, MaxOutside)
	}
	if !addr.Is4() {
		return nil, fmt.Errorf("add outside host %s: %s is not an IPv4 address (lab pods are IPv4 only)", name, addr)
	}
	under := l.plan.Underlay.Addr().As4()
	under[3] = byte(firstOutside + i)
	o := &Outside{Name: name, Addr: addr, UnderlayIP: netip.AddrFrom4(under), Netns: outsideNetns(l.plan, i)}
	veth := fmt.Sprintf("bl%so%d", l.plan.Run, i)
	steps := [][]string{
		{"netns", "add", o.Netns},
		{"-n", o.Netns, "link", "set", "lo", "up"},
		{"link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", o.Netns},
		{"link", "set", veth, "master", l.plan.Bridge},
		{"link", "set", veth, "up"},
		{"-n", o.Netns, "addr", "add", fmt.Sprintf("%s/%d", o.UnderlayIP, l.plan.Underlay.Bits()), "dev", "eth0"},
		{"-n", o.Netns, "addr", "add", addr.String() + "/32", "dev", "eth0"},
		{"-n", o.Netns, "link", "set", "eth0", "up"},
	}
	for _, c := range l.Clusters {
		for _, n := range c.Nodes {
			node, err := c.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil {
				return nil, fmt.Errorf("add outside host %s: node %s: %w", name, n.Name, err)
			}
			cidr, err := netip.ParsePrefix(node.Spec.PodCIDR)
			if err != nil {
				return nil, fmt.Errorf("add outside host %s: node %s's pod CIDR %q: %w", name, n.Name, node.Spec.PodCIDR, err)
			}
			steps = append(steps,
				[]string{"-n", o.Netns, "route", "replace", cidr.String(), "via", n.IP.String(), "src", addr.String()},
				[]string{"-n", n.Netns, "route", "replace", addr.String() + "/32", "via", o.UnderlayIP.String()})
		}
	}
	for _, x := range others {
		if x == nil {
			continue // another one being added: it routes to this one
		}
		steps = append(steps,
			[]string{"-n", o.Netns, "route", "replace", x.Addr.String() + "/32", "via", x.UnderlayIP.String(), "src", addr.String()},
			[]string{"-n", x.Netns, "route", "replace", addr.String() + "/32", "via", o.UnderlayIP.String(), "src", x.Addr.String()})
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return nil, fmt.Errorf("add outside host %s: %w", name, err)
		}
	}
	l.mu.Lock()
	l.outside[i] = o
	l.mu.Unlock()
	return o, nil
}

// removeOutside deletes every outside host's namespace of p's run (their
// veths go with them; the nodes' routes to them go with the nodes).
func removeOutside(p *Plan) error {
	names, _ := filepath.Glob("/run/netns/bl" + p.Run + "-out*")
	var errs []string
	for _, n := range names {
		if err := ip("netns", "del", filepath.Base(n)); err != nil && exists(n) {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("remove outside hosts: %s", strings.Join(errs, "; "))
	}
	return nil
}
