package tunnel

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

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

// handshakeBind reports every handshake message the device receives, so
// that the promotion loop looks for a peer's switch to its next key at
// once rather than at its next poll; and it holds handshake responses back
// while the device's private key changes (see quiesce).
type handshakeBind struct {
	conn.Bind
	seen chan<- struct{}
	// initiation, if set, sees each handshake initiation before
	// wireguard-go does.
	initiation func(msg []byte)
	// response, if set, sees each handshake response wireguard-go sends
	// before it leaves.
	response func(msg []byte)

	// gate is held for writing while the private key changes; a receive
	// that carries a handshake response passes through it for reading.
	gate sync.RWMutex
	// lastResponse is when (unix ns) a handshake response was last handed
	// to wireguard-go; written under gate's read lock.
	lastResponse atomic.Int64
}

// Message types of WireGuard's handshake, and a response's size.
const (
	msgInitiation = 1
	msgResponse   = 2
	responseSize  = 92
)

func (b *handshakeBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	if b.response != nil {
		for _, buf := range bufs {
			if len(buf) == responseSize && buf[0] == msgResponse {
				b.response(buf)
			}
		}
	}
	return b.Bind.Send(bufs, ep)
}

func (b *handshakeBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, actual, err := b.Bind.Open(port)
	for i, fn := range fns {
		fns[i] = func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
			n, err := fn(packets, sizes, eps)
			var handshake, response bool
			for j := range n {
				if sizes[j] > 0 {
					t := packets[j][0]
					handshake = handshake || t == msgInitiation || t == msgResponse
					response = response || t == msgResponse
					if t == msgInitiation && b.initiation != nil {
						b.initiation(packets[j][:sizes[j]])
					}
				}
			}
			if response {
				b.gate.RLock()
				b.lastResponse.Store(time.Now().UnixNano())
				b.gate.RUnlock()
			}
			if handshake {
				select {
				case b.seen <- struct{}{}:
				default:
				}
			}
			return n, err
		}
	}
	return fns, actual, err
}

// responseQuiet is how long after the last handshake response was handed
// to wireguard-go quiesce waits before changing the key: time for the
// device's handshake goroutines to consume it.
const responseQuiet = 25 * time.Millisecond

// quiesce runs f (the private key change) while no handshake response
// reaches wireguard-go, and after the last one delivered has had
// responseQuiet to be consumed. wireguard-go's SetPrivateKey can deadlock
// against a response being consumed at the same moment (see
// Device.setPrivateKey); holding responses back for the few milliseconds of
// the change keeps the two apart. A held response is delivered right after,
// so no handshake is lost.
func (b *handshakeBind) quiesce(f func()) {
	b.gate.Lock()
	defer b.gate.Unlock()
	if wait := responseQuiet - time.Since(time.Unix(0, b.lastResponse.Load())); wait > 0 {
		time.Sleep(wait)
	}
	f()
}
