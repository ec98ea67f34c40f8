package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	wgdevice "golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/braidmesh/braid/internal/netnsrun"
)

const (
	// DefaultListenPort is the UDP port used when Config.ListenPort is zero.
	DefaultListenPort = 51820
	// DefaultUnderlayMTU is the underlay MTU assumed when Config.UnderlayMTU is zero.
	DefaultUnderlayMTU = 1500

	// Overhead4 and Overhead6 are WireGuard's per-packet overhead over an
	// IPv4 or IPv6 underlay: outer IP header, UDP header, 32 bytes of
	// WireGuard header and authentication tag.
	Overhead4 = 60
	Overhead6 = 80

	// socketDir is where wireguard-go's UAPI sockets live, for every netns.
	socketDir = "/var/run/wireguard"
)

var (
	// ErrClosed is returned by methods called after Close.
	ErrClosed = errors.New("tunnel device closed")
	// ErrNotOpen is returned by methods that need the interface before Open.
	ErrNotOpen = errors.New("tunnel device not open")
	// ErrInUse is returned by Open when a live process already serves a
	// device of the same name.
	ErrInUse = errors.New("tunnel device name in use")
)

// Config describes one node's WireGuard device. Zero values are documented
// per field; Name and StateDir are required.
type Config struct {
	// Name is the interface name, at most 15 bytes. It must be unique on the
	// machine, not only in its netns: wireguard-go's UAPI sockets share one
	// directory across all network namespaces.
	Name string
	// StateDir holds the private key (KeyFileName, mode 0600). One Device
	// per StateDir.
	StateDir string
	// ListenPort is the UDP port. Zero means DefaultListenPort.
	ListenPort int
	// Netns is the path of the network namespace the interface lives in,
	// e.g. /run/netns/NAME. Empty means the process's own netns.
	Netns string
	// UnderlayMTU is the MTU of the link carrying the encrypted packets.
	// Zero means DefaultUnderlayMTU. The device gets UnderlayMTU minus
	// Overhead4, or minus Overhead6 when UnderlayIPv6 is set.
	UnderlayMTU  int
	UnderlayIPv6 bool
	// Strict drops, and counts, traffic to remote pod addresses that would
	// leave the node other than through the device. The guarded addresses
	// are StrictCIDRs plus every remote pod CIDR ever passed to Configure,
	// minus LocalPodCIDRs. The rules are installed by Open before the
	// interface exists and stay until Close.
	Strict bool
	// StrictCIDRs is the whole pod address space of the mesh, guarded even
	// before any peer announces a part of it.
	StrictCIDRs []netip.Prefix
	// LocalPodCIDRs are this node's own pod CIDRs, never dropped.
	LocalPodCIDRs []netip.Prefix
	// RotationInterval is the period of scheduled key rotation. Zero means
	// rotation only on demand (RotateKey).
	RotationInterval time.Duration
	// PersistentKeepalive is set on every peer. Besides keeping NAT state,
	// it makes a newly configured peer (such as one whose key just rotated)
	// send a keepalive at once, so its session starts without waiting for
	// data. Zero means none.
	PersistentKeepalive time.Duration
	// HandoverTimeout bounds how long a scheduled rotation waits for peers
	// to acknowledge the next key before switching anyway. Zero means
	// DefaultHandoverTimeout.
	HandoverTimeout time.Duration
}

func (c Config) listenPort() int {
	if c.ListenPort == 0 {
		return DefaultListenPort
	}
	return c.ListenPort
}

// MTU returns the device MTU for the configured underlay.
func (c Config) MTU() int {
	u := c.UnderlayMTU
	if u == 0 {
		u = DefaultUnderlayMTU
	}
	if c.UnderlayIPv6 {
		return u - Overhead6
	}
	return u - Overhead4
}

// wgClient is the part of *wgctrl.Client that Device uses.
type wgClient interface {
	Device(name string) (*wgtypes.Device, error)
	ConfigureDevice(name string, cfg wgtypes.Config) error
	Close() error
}

var _ wgClient = (*wgctrl.Client)(nil)

// Device is one node's WireGuard interface. See the package documentation
// for its lifecycle and concurrency contract.
type Device struct {
	cfg         Config
	log         *slog.Logger
	keyPath     string
	nextKeyPath string
	// setKeyTimeout bounds a private key change; zero means
	// DefaultSetKeyTimeout (tests shorten it).
	setKeyTimeout time.Duration

	keyChanges chan wgtypes.Key

	// mu serializes Open, Configure, RotateKey and Close, and guards the
	// fields below. It is held across the device I/O of those calls so that
	// each sees the result of the one before.
	mu sync.Mutex
	// prepareMu serializes PrepareKey, which writes the next key's file
	// without holding mu.
	prepareMu sync.Mutex
	priv      wgtypes.Key
	pub       wgtypes.Key
	next      wgtypes.Key // pending private key of a handover; zero if none
	opened    bool
	// wedged, once set, is returned by every call: the device stopped
	// answering a private key change (see setPrivateKey).
	wedged error
	// want is the last Configure's valid peers; standby the next keys
	// installed beside a peer's current one; promoted those whose peer
	// completed a handshake with it here; prepared what we acknowledge
	// (standby and promoted keys that the device accepted), sorted.
	want     []Peer
	standby  map[wgtypes.Key]bool
	promoted map[wgtypes.Key]bool
	live     map[wgtypes.Key]bool // promoted keys with a session: keepalive on
	prepared []wgtypes.Key
	// changed is closed and replaced whenever peers or keys change.
	changed chan struct{}
	// handshakes is signalled when a handshake message arrives
	// (userspace device only).
	handshakes chan struct{}
	// view is what the bind needs to recognize a switched peer; replaced
	// (under mu) whenever the key or the standby keys change.
	view atomic.Pointer[keyView]
	// promoteReqs carries the bind's requests to the promotion loop.
	promoteReqs chan promoteReq
	// pending holds, by the initiator's sender index, standby keys whose
	// initiation wireguard-go has not answered yet (onInitiation,
	// onResponse).
	pendingMu sync.Mutex
	pending   map[[4]byte]pendingPromotion
	// closing is closed when Close begins.
	closing   chan struct{}
	closeOnce sync.Once
	closed    bool
	closeErr  error

	ns      netns.NsHandle
	nl      *nlHandle
	wg      wgClient
	kernel  bool
	ifindex int
	strict  *strictRules
	// peerKeyChanged is when Configure last replaced a peer's key (a peer
	// of the same name with a new key); scheduled rotations wait for it to
	// settle.
	peerKeyChanged time.Time

	// userspace (wireguard-go) parts; nil for a kernel device
	wgdev *wgdevice.Device
	tdev  tun.Device
	bind  conn.Bind
	uapi  net.Listener

	// names maps public keys to Peer.Name for Stats; guarded by namesMu so
	// Stats never waits for Configure.
	namesMu sync.Mutex
	names   map[wgtypes.Key]string

	ownSocket bool // the UAPI socket file is ours to remove

	stop     context.CancelFunc
	rotation sync.WaitGroup // the rotation and promotion loops; waited by Close without mu
	loops    sync.WaitGroup // the UAPI server; waited by teardown
	connsMu  sync.Mutex
	conns    map[net.Conn]struct{}
}

// New validates cfg and loads the node's private key from cfg.StateDir,
// creating it on first use. It creates no interface and starts nothing.
func New(cfg Config, log *slog.Logger) (*Device, error) {
	if cfg.Name == "" || len(cfg.Name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("new tunnel device: name %q must be 1 to %d bytes", cfg.Name, unix.IFNAMSIZ-1)
	}
	if cfg.StateDir == "" {
		return nil, fmt.Errorf("new tunnel device %s: empty state directory", cfg.Name)
	}
	if cfg.ListenPort < 0 || cfg.ListenPort > 65535 {
		return nil, fmt.Errorf("new tunnel device %s: listen port %d out of range", cfg.Name, cfg.ListenPort)
	}
	if mtu := cfg.MTU(); mtu < 1280 {
		return nil, fmt.Errorf("new tunnel device %s: device mtu %d below 1280", cfg.Name, mtu)
	}
	if cfg.RotationInterval < 0 || cfg.PersistentKeepalive < 0 || cfg.HandoverTimeout < 0 {
		return nil, fmt.Errorf("new tunnel device %s: negative interval", cfg.Name)
	}
	for _, p := range slices.Concat(cfg.StrictCIDRs, cfg.LocalPodCIDRs) {
		if !p.IsValid() {
			return nil, fmt.Errorf("new tunnel device %s: invalid prefix in strict or local pod cidrs", cfg.Name)
		}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	keyPath := filepath.Join(cfg.StateDir, KeyFileName)
	priv, err := loadOrCreateKey(keyPath)
	if err != nil {
		return nil, fmt.Errorf("new tunnel device %s: %w", cfg.Name, err)
	}
	nextKeyPath := filepath.Join(cfg.StateDir, NextKeyFileName)
	next, err := loadKeyIfExists(nextKeyPath)
	if err != nil {
		return nil, fmt.Errorf("new tunnel device %s: %w", cfg.Name, err)
	}
	d := &Device{
		cfg:         cfg,
		log:         log.With("device", cfg.Name),
		keyPath:     keyPath,
		nextKeyPath: nextKeyPath,
		keyChanges:  make(chan wgtypes.Key, 1),
		priv:        priv,
		pub:         priv.PublicKey(),
		next:        next,
		standby:     make(map[wgtypes.Key]bool),
		promoted:    make(map[wgtypes.Key]bool),
		live:        make(map[wgtypes.Key]bool),
		changed:     make(chan struct{}),
		handshakes:  make(chan struct{}, 1),
		promoteReqs: make(chan promoteReq),
		pending:     make(map[[4]byte]pendingPromotion),
		closing:     make(chan struct{}),
		ns:          netns.None(),
		names:       make(map[wgtypes.Key]string),
		conns:       make(map[net.Conn]struct{}),
	}
	return d, nil
}

// Name returns the interface name.
func (d *Device) Name() string { return d.cfg.Name }

// PublicKey returns the node's current public key, for its record.
func (d *Device) PublicKey() wgtypes.Key {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.pub
}

// Kernel reports whether the device is a kernel WireGuard interface rather
// than wireguard-go running in this process. Valid after Open.
func (d *Device) Kernel() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.kernel
}

// KeyChanges delivers the current public key after each change of Keys: a
// prepared next key, a switch, a change of the acknowledged next keys. The
// channel holds only the latest key: a slow reader misses intermediate
// ones, never the last; read Keys for the whole state. It is never closed.
func (d *Device) KeyChanges() <-chan wgtypes.Key { return d.keyChanges }

// Open creates and configures the interface in cfg.Netns (installing the
// strict-mode rules first when cfg.Strict is set), brings it up and starts
// scheduled rotation. On error everything it created is removed. Open may
// be called once.
func (d *Device) Open() (err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if d.opened {
		return fmt.Errorf("open tunnel device %s: already open", d.cfg.Name)
	}
	d.opened = true
	defer func() {
		if err != nil {
			d.teardown()
			err = fmt.Errorf("open tunnel device %s: %w", d.cfg.Name, err)
		}
	}()

	nsPath := d.cfg.Netns
	if nsPath == "" {
		nsPath = "/proc/self/ns/net" // the process's, whatever the calling thread's
	}
	d.ns, err = netns.GetFromPath(nsPath)
	if err != nil {
		return fmt.Errorf("open netns: %w", err)
	}
	h, err := netlink.NewHandleAt(d.ns)
	if err != nil {
		return fmt.Errorf("netlink handle: %w", err)
	}
	d.nl = &nlHandle{h: h}

	if d.cfg.Strict {
		d.strict, err = newStrictRules(d.ns, d.cfg.Name, d.cfg.LocalPodCIDRs)
		if err != nil {
			return err
		}
		if err := d.strict.guard(d.cfg.StrictCIDRs); err != nil {
			return err
		}
	}

	if err := d.createLink(); err != nil {
		return err
	}

	// The kernel's genetlink socket must live in the device's netns; the
	// userspace client dials the shared socket directory and does not care.
	var c *wgctrl.Client
	if err := netnsrun.Do(d.ns, func() (err error) { c, err = wgctrl.New(); return err }); err != nil {
		return fmt.Errorf("wgctrl: %w", err)
	}
	d.wg = c

	port := d.cfg.listenPort()
	priv := d.priv
	if err := d.wg.ConfigureDevice(d.cfg.Name, wgtypes.Config{
		PrivateKey:   &priv,
		ListenPort:   &port,
		ReplacePeers: true,
	}); err != nil {
		return fmt.Errorf("configure device: %w", err)
	}

	err = d.nl.do(func(h *netlink.Handle) error {
		link, err := h.LinkByName(d.cfg.Name)
		if err != nil {
			return err
		}
		d.ifindex = link.Attrs().Index
		if err := h.LinkSetMTU(link, d.cfg.MTU()); err != nil {
			return fmt.Errorf("set mtu: %w", err)
		}
		return h.LinkSetUp(link)
	})
	if err != nil {
		return fmt.Errorf("set link up: %w", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	d.stop = cancel
	d.rotation.Add(1)
	go func() {
		defer d.rotation.Done()
		d.promoteLoop(ctx)
	}()
	if d.cfg.RotationInterval > 0 {
		d.rotation.Add(1)
		go func() {
			defer d.rotation.Done()
			d.rotateLoop(ctx)
		}()
	}
	d.log.Info("tunnel device open", "kernel", d.kernel, "port", port, "mtu", d.cfg.MTU(),
		"publicKey", ShortKey(d.pub), "strict", d.cfg.Strict)
	return nil
}

// createLink makes a kernel WireGuard link where the kernel supports it and
// falls back to wireguard-go otherwise.
func (d *Device) createLink() error {
	name := d.cfg.Name
	if err := d.claimSocket(); err != nil {
		return err
	}
	// A link of our name in our netns is ours: left over from a crash.
	d.nl.do(func(h *netlink.Handle) error {
		if l, err := h.LinkByName(name); err == nil && l.Type() == "wireguard" {
			d.log.Warn("removing stale wireguard link")
			return h.LinkDel(l)
		}
		return nil
	})
	err := d.nl.do(func(h *netlink.Handle) error {
		return h.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: d.cfg.MTU()}})
	})
	if err == nil {
		d.kernel = true
		return nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("create kernel link: %w", err)
	}
	return d.startUserspace()
}

// claimSocket fails with ErrInUse if a live process serves name's UAPI
// socket and removes a stale one.
func (d *Device) claimSocket() error {
	path := filepath.Join(socketDir, d.cfg.Name+".sock")
	if _, err := os.Lstat(path); err != nil {
		return nil
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("socket %s: %w", path, ErrInUse)
	}
	d.log.Warn("removing stale wireguard socket", "path", path)
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	return nil
}

func (d *Device) startUserspace() error {
	name := d.cfg.Name
	var tdev tun.Device
	err := netnsrun.Do(d.ns, func() (err error) {
		tdev, err = tun.CreateTUN(name, d.cfg.MTU())
		return err
	})
	if err != nil {
		return fmt.Errorf("create tun: %w", err)
	}
	var bind conn.Bind = conn.NewDefaultBind()
	if d.cfg.Netns != "" {
		bind = &nsBind{Bind: bind, ns: d.ns}
		tdev = &nsTUN{Device: tdev, name: name, nl: d.nl}
	}
	bind = &handshakeBind{Bind: bind, seen: d.handshakes, initiation: d.onInitiation, response: d.onResponse}
	d.tdev, d.bind = tdev, bind
	d.wgdev = wgdevice.NewDevice(tdev, bind, d.wgLogger())

	f, err := ipc.UAPIOpen(name)
	if err != nil {
		return fmt.Errorf("open uapi socket: %w", err)
	}
	d.ownSocket = true
	l, err := ipc.UAPIListen(name, f)
	f.Close()
	if err != nil {
		return fmt.Errorf("listen on uapi socket: %w", err)
	}
	d.uapi = l
	d.loops.Add(1)
	go func() {
		defer d.loops.Done()
		d.serveUAPI(l)
	}()
	return nil
}

// serveUAPI answers wgctrl and `wg` on the UAPI socket until it is closed.
func (d *Device) serveUAPI(l net.Listener) {
	var handlers sync.WaitGroup
	defer handlers.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		d.connsMu.Lock()
		if d.conns == nil { // closing
			d.connsMu.Unlock()
			c.Close()
			return
		}
		d.conns[c] = struct{}{}
		d.connsMu.Unlock()
		handlers.Add(1)
		go func() {
			defer handlers.Done()
			d.wgdev.IpcHandle(c) // closes c
			d.connsMu.Lock()
			delete(d.conns, c)
			d.connsMu.Unlock()
		}()
	}
}

func (d *Device) wgLogger() *wgdevice.Logger {
	l := d.log.With("component", "wireguard-go")
	lg := &wgdevice.Logger{
		Verbosef: wgdevice.DiscardLogf,
		Errorf: func(format string, args ...any) {
			l.Warn(fmt.Sprintf(format, args...))
		},
	}
	if l.Enabled(context.Background(), slog.LevelDebug) {
		lg.Verbosef = func(format string, args ...any) {
			l.Debug(fmt.Sprintf(format, args...))
		}
	}
	return lg
}

// Close removes the interface, its routes, its UAPI socket and the strict
// rules, and waits for every goroutine the Device started. It is idempotent
// and safe to call concurrently with other methods; later calls return the
// first call's result.
func (d *Device) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return d.closeErr
	}
	d.closed = true
	stop := d.stop
	d.mu.Unlock()
	d.closeOnce.Do(func() { close(d.closing) })

	// Stop the rotation loop before taking mu for teardown: it takes mu.
	if stop != nil {
		stop()
	}
	d.rotation.Wait()

	d.mu.Lock()
	defer d.mu.Unlock()
	live := d.wg != nil
	d.closeErr = d.teardown()
	if d.closeErr == nil && live {
		d.log.Info("tunnel device closed")
	}
	return d.closeErr
}

// teardown releases whatever Open acquired; called with mu held.
func (d *Device) teardown() error {
	var errs []error
	if d.stop != nil {
		d.stop()
	}
	if d.uapi != nil {
		d.connsMu.Lock()
		for c := range d.conns {
			c.Close()
		}
		d.conns = nil
		d.connsMu.Unlock()
		if err := d.uapi.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, fmt.Errorf("close uapi socket: %w", err))
		}
		d.uapi = nil
	}
	if d.ownSocket {
		// UAPIListen unlinks on close; make sure even if it did not.
		path := filepath.Join(socketDir, d.cfg.Name+".sock")
		if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
			errs = append(errs, fmt.Errorf("remove uapi socket: %w", err))
		}
		d.ownSocket = false
	}
	if d.wgdev != nil {
		if d.wedged == nil {
			d.wgdev.Close() // closes the TUN, which removes the interface
		} else {
			// Close would wait for the deadlocked lock for ever: release
			// the interface and the UDP port ourselves, and leave the
			// device's goroutines (and its UAPI handler) behind.
			if err := d.bind.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close wedged device's sockets: %w", err))
			}
			if err := d.tdev.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close wedged device's tun: %w", err))
			}
		}
		d.wgdev = nil
	}
	if d.wedged == nil {
		d.loops.Wait()
	}
	if d.kernel && d.nl != nil {
		err := d.nl.do(func(h *netlink.Handle) error {
			l, err := h.LinkByName(d.cfg.Name)
			if err != nil {
				return nil
			}
			return h.LinkDel(l)
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("delete link: %w", err))
		}
	}
	if d.strict != nil {
		if err := d.strict.remove(); err != nil {
			errs = append(errs, err)
		}
		d.strict = nil
	}
	if d.wg != nil {
		d.wg.Close()
		d.wg = nil
	}
	if d.nl != nil {
		d.nl.close()
		d.nl = nil
	}
	if d.ns.IsOpen() {
		d.ns.Close()
		d.ns = netns.None()
	}
	if len(errs) > 0 {
		return fmt.Errorf("close tunnel device %s: %w", d.cfg.Name, errors.Join(errs...))
	}
	return nil
}

// client returns the wgctrl client, or an error if the Device is not open.
// Called with mu held.
func (d *Device) client() (wgClient, error) {
	if d.closed {
		return nil, ErrClosed
	}
	if d.wedged != nil {
		return nil, d.wedged
	}
	if d.wg == nil {
		return nil, ErrNotOpen
	}
	return d.wg, nil
}
