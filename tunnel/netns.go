package tunnel

import (
	"errors"
	"fmt"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/braidmesh/braid/internal/netnsrun"
)

// nsBind opens wireguard-go's UDP sockets inside the device's netns.
// wireguard-go calls Open from whichever goroutine (re)binds: the UAPI
// handler, the TUN event reader. Without the switch the sockets would land
// in that thread's netns, the agent's rather than the node's.
type nsBind struct {
	conn.Bind
	ns netns.NsHandle
}

func (b *nsBind) Open(port uint16) (fns []conn.ReceiveFunc, actual uint16, err error) {
	nsErr := netnsrun.Do(b.ns, func() error {
		fns, actual, err = b.Bind.Open(port)
		return nil
	})
	if nsErr != nil {
		return nil, 0, nsErr
	}
	return fns, actual, err
}

// nsTUN answers MTU queries through netlink in the device's netns: the
// NativeTun implementation looks the interface up by name in the netns of
// the calling thread, which for wireguard-go's event goroutine is not the
// device's.
type nsTUN struct {
	tun.Device
	name string
	nl   *nlHandle
}

func (t *nsTUN) MTU() (int, error) {
	var mtu int
	err := t.nl.do(func(h *netlink.Handle) error {
		link, err := h.LinkByName(t.name)
		if err != nil {
			return err
		}
		mtu = link.Attrs().MTU
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("get mtu of %s: %w", t.name, err)
	}
	return mtu, nil
}

// nlHandle serializes use of a netlink handle bound to the device's netns.
type nlHandle struct {
	mu sync.Mutex
	h  *netlink.Handle // nil once closed
}

var errHandleClosed = errors.New("netlink handle closed")

func (n *nlHandle) do(fn func(h *netlink.Handle) error) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.h == nil {
		return errHandleClosed
	}
	return fn(n.h)
}

func (n *nlHandle) close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.h != nil {
		n.h.Close()
		n.h = nil
	}
}
