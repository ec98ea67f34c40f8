package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/braidmesh/braid/bpf"
)

// PodDevicesAuto selects the host side of every veth whose peer lives in
// another network namespace: a pod's interface, whatever the CNI names it.
const PodDevicesAuto = "auto"

// PodDevicesOff turns device discovery off.
const PodDevicesOff = "off"

// tcAttacher is the part of *bpf.Objects the device watcher uses.
type tcAttacher interface {
	AttachTC(ifindex int) (bpf.TCMode, error)
	DetachTC(ifindex int) error
}

// podDeviceMatcher returns the predicate of spec: PodDevicesAuto, or a
// comma-separated list of name globs ("lxc*,cali*").
func podDeviceMatcher(spec string) (func(netlink.Link) bool, error) {
	if spec == "" || spec == PodDevicesAuto {
		return func(l netlink.Link) bool {
			return l.Type() == "veth" && l.Attrs().NetNsID >= 0
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

// watchPodDevices attaches the tc programs to every device match selects
// as it appears (devices present at start included) and releases their
// pinned links as it goes, until ctx ends. ns is the namespace to watch
// (nil: the agent's); do runs attach and detach calls in it.
func watchPodDevices(ctx context.Context, objs tcAttacher, match func(netlink.Link) bool, ns *netns.NsHandle, do func(func() error) error, log *slog.Logger, attached func(name string, ifindex int, up bool)) error {
	updates := make(chan netlink.LinkUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	subErr := make(chan error, 1)
	err := netlink.LinkSubscribeWithOptions(updates, done, netlink.LinkSubscribeOptions{
		Namespace:    ns,
		ListExisting: true,
		ErrorCallback: func(err error) {
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
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-subErr:
			return fmt.Errorf("watch pod devices: %w", err)
		case u, ok := <-updates:
			if !ok {
				return errors.New("watch pod devices: netlink subscription closed")
			}
			idx, name := int(u.Index), u.Attrs().Name
			if u.Header.Type == unix.RTM_DELLINK {
				if _, ok := have[idx]; ok {
					delete(have, idx)
					// The kernel detached the programs with the device;
					// this releases the pinned links.
					if err := do(func() error { return objs.DetachTC(idx) }); err != nil {
						log.Debug("release tc links of removed device", "device", name, "err", err)
					}
					if attached != nil {
						attached(name, idx, false)
					}
				}
				continue
			}
			if _, ok := have[idx]; ok || !match(u.Link) {
				continue
			}
			var mode bpf.TCMode
			if err := do(func() (err error) { mode, err = objs.AttachTC(idx); return err }); err != nil {
				log.Warn("attach tc to pod device", "device", name, "err", err)
				continue // retried at the device's next update
			}
			have[idx] = name
			log.Debug("tc attached to pod device", "device", name, "mode", mode)
			if attached != nil {
				attached(name, idx, true)
			}
		}
	}
}
