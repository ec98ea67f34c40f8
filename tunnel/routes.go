package tunnel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// routeProtocol marks the routes Device installs (rtm_protocol), so that
// routes others add to the interface are left alone.
const routeProtocol netlink.RouteProtocol = 0xb7

// syncRoutes makes the routes through the device equal to want; called
// with mu held.
func (d *Device) syncRoutes(want []netip.Prefix) error {
	return d.nl.do(func(h *netlink.Handle) error {
		have, err := h.RouteListFiltered(netlink.FAMILY_ALL,
			&netlink.Route{LinkIndex: d.ifindex, Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
		if err != nil {
			return fmt.Errorf("list routes: %w", err)
		}
		wantSet := make(map[netip.Prefix]bool, len(want))
		for _, p := range want {
			wantSet[p] = true
		}
		var errs []error
		for _, r := range have {
			if r.Protocol != routeProtocol || r.Dst == nil {
				continue
			}
			p := fromIPNets([]net.IPNet{*r.Dst})
			if len(p) == 1 && wantSet[p[0]] {
				delete(wantSet, p[0])
				continue
			}
			if err := h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("delete route %v: %w", r.Dst, err))
			}
		}
		for _, p := range want {
			if !wantSet[p] {
				continue
			}
			dst := toIPNets([]netip.Prefix{p})[0]
			r := &netlink.Route{
				LinkIndex: d.ifindex,
				Dst:       &dst,
				Scope:     netlink.SCOPE_LINK,
				Protocol:  routeProtocol,
				Table:     unix.RT_TABLE_MAIN,
			}
			if err := h.RouteReplace(r); err != nil {
				errs = append(errs, fmt.Errorf("add route %v: %w", p, err))
			}
		}
		return errors.Join(errs...)
	})
}
