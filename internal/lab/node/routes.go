package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// routeResync is how often host-gw routes are re-checked without an event.
const routeResync = 30 * time.Second

// reconcileRoutes keeps one route per other node: its pod CIDR via its
// InternalIP, with protocol RouteProtocol; routes of ours that no node wants
// any more are deleted.
func (n *node) reconcileRoutes(ctx context.Context) error {
	t := time.NewTicker(routeResync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-n.routeWake:
		case <-t.C:
		}
		if err := n.syncRoutes(); err != nil {
			n.log.Warn("host-gw routes", "err", err)
			time.AfterFunc(apiRetry, func() { wakeup(n.routeWake) })
		}
	}
}

// waitNodeListAccess waits until this node may list and watch all Nodes,
// which a kubelet's credentials do not allow by default; until then it logs
// what to grant. It reports false if ctx ended first.
func (n *node) waitNodeListAccess(ctx context.Context) bool {
	for {
		missing, err := n.missingNodeAccess(ctx)
		switch {
		case err != nil:
			n.log.Warn("host-gw routes: check access to nodes", "err", err)
		case len(missing) == 0:
			return true
		default:
			n.log.Error("host-gw routes need read access to all Nodes; grant get, list and watch on nodes to this node's user or group system:nodes (RBAC); until then no routes to other nodes' pods are installed",
				"missing", missing)
		}
		if waitBackoff(ctx, routeResync) {
			return false
		}
	}
}

// missingNodeAccess returns the verbs on nodes this node may not use.
func (n *node) missingNodeAccess(ctx context.Context) ([]string, error) {
	var missing []string
	for _, verb := range []string{"list", "watch"} {
		r, err := n.client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: verb, Resource: "nodes"}},
		}, metav1.CreateOptions{})
		if err != nil {
			return nil, err
		}
		if !r.Status.Allowed {
			missing = append(missing, verb)
		}
	}
	return missing, nil
}

// desiredRoutes maps each other node's pod CIDR to its InternalIP. Nodes
// whose fields do not parse, overlap ours or each other are skipped with an
// error naming them.
func desiredRoutes(self string, own netip.Prefix, nodes []*corev1.Node) (map[netip.Prefix]netip.Addr, error) {
	want := map[netip.Prefix]netip.Addr{}
	var errs []error
	for _, nd := range nodes {
		if nd.Name == self || nd.Spec.PodCIDR == "" {
			continue
		}
		cidr, err := netip.ParsePrefix(nd.Spec.PodCIDR)
		if err != nil || !cidr.Addr().Is4() {
			errs = append(errs, fmt.Errorf("node %s: pod CIDR %q is not an IPv4 prefix", nd.Name, nd.Spec.PodCIDR))
			continue
		}
		cidr = cidr.Masked()
		var gw netip.Addr
		for _, a := range nd.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				if ip, err := netip.ParseAddr(a.Address); err == nil && ip.Is4() {
					gw = ip
					break
				}
			}
		}
		if !gw.IsValid() {
			errs = append(errs, fmt.Errorf("node %s: no IPv4 InternalIP to route pod CIDR %s via", nd.Name, cidr))
			continue
		}
		if own.IsValid() && own.Overlaps(cidr) {
			errs = append(errs, fmt.Errorf("node %s: pod CIDR %s overlaps this node's %s", nd.Name, cidr, own))
			continue
		}
		clash := false
		for other := range want {
			if other.Overlaps(cidr) {
				errs = append(errs, fmt.Errorf("node %s: pod CIDR %s overlaps another node's %s", nd.Name, cidr, other))
				clash = true
			}
		}
		if !clash {
			want[cidr] = gw
		}
	}
	return want, errors.Join(errs...)
}

func (n *node) syncRoutes() error {
	nodes, err := n.nodes.List(labels.Everything())
	if err != nil {
		return err
	}
	var own netip.Prefix
	select {
	case <-n.netReady: // n.ipam is set before netReady is closed
		own = n.ipam.prefix
	default:
	}
	want, werr := desiredRoutes(n.cfg.NodeName, own, nodes)
	have, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return fmt.Errorf("list routes: %w", err)
	}
	errs := []error{werr}
	for _, r := range have {
		if r.Dst == nil {
			continue
		}
		dst, _ := netip.AddrFromSlice(r.Dst.IP.To4())
		ones, _ := r.Dst.Mask.Size()
		p := netip.PrefixFrom(dst, ones)
		gw, _ := netip.AddrFromSlice(r.Gw.To4())
		if want[p] == gw {
			delete(want, p)
			continue
		}
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route %s: %w", p, err))
		}
	}
	for p, gw := range want {
		r := &netlink.Route{
			Dst:      &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)},
			Gw:       gw.AsSlice(),
			Protocol: RouteProtocol,
		}
		if err := netlink.RouteReplace(r); err != nil {
			errs = append(errs, fmt.Errorf("route %s via %s: %w", p, gw, err))
		} else {
			n.log.Info("host-gw route", "dst", p, "via", gw)
		}
	}
	return errors.Join(errs...)
}

func readFileLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, limit))
}
