package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/braidmesh/braid/bpf"
)

// PodDevicesAuto selects the host side of every veth whose peer lives in
// another network namespace: a pod's interface, whatever the CNI names it.
// A veth that holds one of the node's own addresses is the node's uplink
// (a node that is itself a container or network namespace, as in kind or
// the lab), not a pod's, and is left alone.
const PodDevicesAuto = "auto"

// PodDevicesOff turns device discovery off.
const PodDevicesOff = "off"

// tcAttacher is the part of *bpf.Objects the device watcher uses.
type tcAttacher interface {
	AttachTC(ifindex int) (bpf.TCMode, error)
	DetachTC(ifindex int) error
}

// podDeviceMatcher returns the predicate of spec: PodDevicesAuto, or a
// comma-separated list of name globs ("lxc*,cali*"). For PodDevicesAuto,
// addrs lists a link's addresses (nil: no lookup), and a link holding one
// of nodeIPs is not a pod's.
func podDeviceMatcher(spec string, nodeIPs []netip.Addr, addrs func(netlink.Link) ([]netlink.Addr, error)) (func(netlink.Link) bool, error) {
	if spec == "" || spec == PodDevicesAuto {
		return func(l netlink.Link) bool {
			return l.Type() == "veth" && l.Attrs().NetNsID >= 0 && !holdsAny(l, nodeIPs, addrs)
		}, nil
	}
	globs := strings.Split(spec, ",")
	for _, g := range globs {
		if _, err := filepath.Match(g, ""); err != nil {
			return nil, fmt.Errorf("pod device pattern %q: %w", g, err)
		}
	}
	return func(l netlink.Link) bool {
		for _, g := range globs {
			if ok, _ := filepath.Match(g, l.Attrs().Name); ok {
				return true
			}
		}
		return false
	}, nil
}

// holdsAny reports whether l has one of ips as an address.
func holdsAny(l netlink.Link, ips []netip.Addr, addrs func(netlink.Link) ([]netlink.Addr, error)) bool {
	if len(ips) == 0 || addrs == nil {
		return false
	}
	as, err := addrs(l)
	if err != nil {
		return false // gone already, or unreadable: its next update asks again
	}
	for _, a := range as {
		ip, ok := netip.AddrFromSlice(a.IP)
		if ok && slices.Contains(ips, ip.Unmap()) {
			return true
		}
	}
	return false
}

// watchPodDevices attaches the tc programs to every device match selects
// as it appears (devices present at start included) and releases their
// pinned links as it goes, until ctx ends. ns is the namespace to watch
// (nil: the agent's); do runs attach and detach calls in it.
func watchPodDevices(ctx context.Context, objs tcAttacher, match func(netlink.Link) bool, ns *netns.NsHandle, do func(func() error) error, log *slog.Logger, attached func(name string, ifindex int, up bool)) error {
	updates := make(chan netlink.LinkUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	subErr := make(chan error, 1)
	// A dump interrupted by links changing meanwhile (pods starting as the
	// agent does) is incomplete: list again rather than give up.
	relist := make(chan struct{}, 1)
	err := netlink.LinkSubscribeWithOptions(updates, done, netlink.LinkSubscribeOptions{
		Namespace:    ns,
		ListExisting: true,
		ErrorCallback: func(err error) {
			if errors.Is(err, netlink.ErrDumpInterrupted) {
				select {
				case relist <- struct{}{}:
				default:
				}
				return
			}
			select {
			case subErr <- err:
			default:
			}
		},
	})
	if err != nil {
		return fmt.Errorf("watch pod devices: %w", err)
	}
	have := map[int]string{}
	gone := func(idx int, name string) {
		if _, ok := have[idx]; !ok {
			return
		}
		delete(have, idx)
		// The kernel detached the programs with the device; this releases
		// the pinned links.
		if err := do(func() error { return objs.DetachTC(idx) }); err != nil {
			log.Debug("release tc links of removed device", "device", name, "err", err)
		}
		if attached != nil {
			attached(name, idx, false)
		}
	}
	seen := func(l netlink.Link) {
		idx, name := l.Attrs().Index, l.Attrs().Name
		if _, ok := have[idx]; ok || !match(l) {
			return
		}
		var mode bpf.TCMode
		if err := do(func() (err error) { mode, err = objs.AttachTC(idx); return err }); err != nil {
			log.Warn("attach tc to pod device", "device", name, "err", err)
			return // retried at the device's next update
		}
		have[idx] = name
		log.Debug("tc attached to pod device", "device", name, "mode", mode)
		if attached != nil {
			attached(name, idx, true)
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-subErr:
			return fmt.Errorf("watch pod devices: %w", err)
		case <-relist:
			links, err := listLinks(ns)
			if err != nil {
				return fmt.Errorf("watch pod devices: %w", err)
			}
			present := make(map[int]bool, len(links))
			for _, l := range links {
				present[l.Attrs().Index] = true
				seen(l)
			}
			for idx, name := range have {
				if !present[idx] {
					gone(idx, name)
				}
			}
		case u, ok := <-updates:
			if !ok {
				return errors.New("watch pod devices: netlink subscription closed")
			}
			if u.Header.Type == unix.RTM_DELLINK {
				gone(int(u.Index), u.Attrs().Name)
				continue
			}
			seen(u.Link)
		}
	}
}

// listLinks lists the links of ns (nil: the caller's), listing again while
// changes interrupt the dump.
func listLinks(ns *netns.NsHandle) ([]netlink.Link, error) {
	h, err := netlink.NewHandle()
	if ns != nil {
		h, err = netlink.NewHandleAt(*ns)
	}
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	defer h.Close()
	for attempt := 0; ; attempt++ {
		links, err := h.LinkList()
		if errors.Is(err, netlink.ErrDumpInterrupted) && attempt < 10 {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list links: %w", err)
		}
		return links, nil
	}
}
