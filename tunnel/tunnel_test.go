package tunnel

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/tunnel/internal/netnstest"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func TestPodTrafficIsEncryptedOnUnderlay(t *testing.T) {
	a, b := newLab(t)
	a.open(t, nil)
	b.open(t, nil)
	meshUp(t, a, b)

	capture := b.ns.StartCapture(t, "ul0")
	dst := netip.AddrPortFrom(b.podIP, 5001)
	l := listenTCP(t, b.pod, dst)
	payload := markerPayload(4 << 20)
	got := make(chan []byte, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		data, _ := readAll(c, nil)
		got <- data
	}()
	c := dialTCP(t, a.pod, dst)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(payload); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if data := <-got; !bytes.Equal(data, payload) {
		t.Fatalf("received %d bytes, want %d identical", len(data), len(payload))
	}

	frames, dropped := stopAfterSentinel(t, capture, a, b)
	r := analyze(frames, DefaultListenPort)
	t.Logf("underlay: %d frames, %d wireguard udp, %d dropped by capture", len(frames), r.wgUDP, dropped)
	if r.marker > 0 {
		t.Errorf("marker seen in %d underlay frames", r.marker)
	}
	if len(r.foreign) > 0 {
		t.Errorf("non-WireGuard frames on underlay: %q", r.foreign)
	}
	if r.wgUDP == 0 {
		t.Error("no WireGuard frames captured: transfer did not cross the underlay")
	}

	st, err := a.dev.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.PeerCount != 1 || st.Peers[0].TxBytes < int64(len(payload)) || st.Peers[0].LastHandshake.IsZero() {
		t.Errorf("stats after transfer: %+v", st)
	}
	if st.Peers[0].Name != b.ns.Name || st.Peers[0].Endpoint != netip.AddrPortFrom(b.nodeIP, DefaultListenPort) {
		t.Errorf("peer stats: %+v", st.Peers[0])
	}
	if st.PublicKey != ShortKey(a.dev.PublicKey()) || st.ListenPort != DefaultListenPort || st.MTU != 1440 {
		t.Errorf("device stats: %+v", st)
	}
}

// countingClient counts writes to the device.
type countingClient struct {
	wgClient
	writes atomic.Int64
}

func (c *countingClient) ConfigureDevice(name string, cfg wgtypes.Config) error {
	c.writes.Add(1)
	return c.wgClient.ConfigureDevice(name, cfg)
}

type peerState struct {
	handshake time.Time
	rx, tx    int64
	endpoint  string
	allowed   string
}

func snapshot(t *testing.T, d *Device) map[wgtypes.Key]peerState {
	t.Helper()
	dev, err := d.wg.Device(d.cfg.Name)
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[wgtypes.Key]peerState)
	for _, p := range dev.Peers {
		var allowed []string
		for _, n := range p.AllowedIPs {
			allowed = append(allowed, n.String())
		}
		m[p.PublicKey] = peerState{p.LastHandshakeTime, p.ReceiveBytes, p.TransmitBytes, p.Endpoint.String(), strings.Join(allowed, ",")}
	}
	return m
}

func TestConfigure100PeersIsIdempotent(t *testing.T) {
	a, b := newLab(t)
	a.open(t, nil)
	b.open(t, nil)

	want := []Peer{b.peer()}
	for i := range 99 {
		k, _ := wgtypes.GeneratePrivateKey()
		want = append(want, Peer{
			Name:      "fake",
			PublicKey: k.PublicKey(),
			Endpoint:  netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(i + 1)}), 51820),
			PodCIDRs:  []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 245, byte(i), 0}), 24)},
		})
	}
	start := time.Now()
	if err := a.dev.Configure(want); err != nil {
		t.Fatal(err)
	}
	t.Logf("first Configure of %d peers: %v", len(want), time.Since(start))
	if err := b.dev.Configure([]Peer{a.peer()}); err != nil {
		t.Fatal(err)
	}

	// Establish a session with the real peer so there is state to keep.
	dst := netip.AddrPortFrom(b.podIP, 5002)
	l := listenTCP(t, b.pod, dst)
	recvd := make(chan struct{})
	go func() {
		defer close(recvd)
		if c, err := l.Accept(); err == nil {
			readAll(c, nil)
			c.Close()
		}
	}()
	c := dialTCP(t, a.pod, dst)
	c.Write(make([]byte, 256<<10))
	c.Close()
	<-recvd

	var routes int
	a.ns.Do(t, func() error {
		link, err := netlink.LinkByName(a.dev.Name())
		if err != nil {
			return err
		}
		rs, err := netlink.RouteList(link, netlink.FAMILY_V4)
		routes = len(rs)
		return err
	})
	if routes != 100 {
		t.Errorf("routes through device: %d, want 100", routes)
	}

	// Wait for the connection's last packets to settle, so that any later
	// change in counters would come from Configure.
	before := snapshot(t, a.dev)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		now := snapshot(t, a.dev)
		if now[b.dev.PublicKey()] == before[b.dev.PublicKey()] {
			break
		}
		before = now
	}
	if len(before) != 100 {
		t.Fatalf("device has %d peers, want 100", len(before))
	}
	if before[b.dev.PublicKey()].handshake.IsZero() {
		t.Fatal("no handshake with the real peer")
	}
	cc := &countingClient{wgClient: a.dev.wg}
	a.dev.wg = cc
	// Same set, different order.
	rev := make([]Peer, len(want))
	for i, p := range want {
		rev[len(want)-1-i] = p
	}
	if err := a.dev.Configure(rev); err != nil {
		t.Fatal(err)
	}
	if n := cc.writes.Load(); n != 0 {
		t.Errorf("second Configure wrote to the device %d times, want 0", n)
	}
	after := snapshot(t, a.dev)
	for k, s := range before {
		if after[k] != s {
			t.Errorf("peer %s changed: %+v -> %+v", ShortKey(k), s, after[k])
		}
	}

	// One change and one removal: one write, the real peer untouched.
	want[5].PodCIDRs = append(want[5].PodCIDRs, netip.MustParsePrefix("10.246.0.0/24"))
	removed := want[7].PublicKey
	want = append(want[:7], want[8:]...)
	if err := a.dev.Configure(want); err != nil {
		t.Fatal(err)
	}
	if n := cc.writes.Load(); n != 1 {
		t.Errorf("Configure with one change and one removal wrote %d times, want 1", n)
	}
	after = snapshot(t, a.dev)
	if _, ok := after[removed]; ok || len(after) != 99 {
		t.Errorf("peer not removed: %d peers", len(after))
	}
	if after[b.dev.PublicKey()] != before[b.dev.PublicKey()] {
		t.Errorf("real peer changed by unrelated update")
	}
	if got := after[want[5].PublicKey].allowed; !strings.Contains(got, "10.246.0.0/24") {
		t.Errorf("changed peer allowed ips: %s", got)
	}
	st, err := a.dev.Stats()
	if err != nil || st.PeerCount != 99 {
		t.Errorf("stats: %d peers, %v", st.PeerCount, err)
	}
}

// TestKeyRotationDuringTransfer rotates both nodes' keys, one after the
// other, while a TCP stream runs between their pods. With persistent
// keepalive the side that learns a new key starts the session at once;
// without it the session waits for WireGuard's handshake retry (5 s).
func TestKeyRotationDuringTransfer(t *testing.T) {
	t.Run("keepalive", func(t *testing.T) { rotationDuringTransfer(t, 25*time.Second) })
	t.Run("no-keepalive", func(t *testing.T) { rotationDuringTransfer(t, 0) })
}

func rotationDuringTransfer(t *testing.T, keepalive time.Duration) {
	a, b := newLab(t)
	setKeepalive := func(c *Config) { c.PersistentKeepalive = keepalive }
	a.open(t, setKeepalive)
	b.open(t, setKeepalive)
	meshUp(t, a, b)

	const size = 48 << 20
	payload := make([]byte, size)
	rand.Read(payload)
	dst := netip.AddrPortFrom(b.podIP, 5003)
	l := listenTCP(t, b.pod, dst)

	var received atomic.Int64
	rotateA, rotateB := make(chan struct{}), make(chan struct{})
	type result struct {
		data []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- result{nil, err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Minute))
		var fa, fb bool
		data, err := readAll(c, func(n int) {
			received.Store(int64(n))
			if !fa && n > size/4 {
				fa = true
				close(rotateA)
			}
			if !fb && n > size*3/5 {
				fb = true
				close(rotateB)
			}
		})
		done <- result{data, err}
	}()

	// Each rotation is published to the other side the way the mesh would:
	// the new public key goes into the peer's Configure.
	type rotation struct {
		msg string
		err error
	}
	rotations := make(chan rotation, 2)
	rotate := func(trigger chan struct{}, self, other *labNode) {
		<-trigger
		at := received.Load()
		if _, err := self.dev.RotateKey(); err != nil {
			rotations <- rotation{err: err}
			return
		}
		pub := <-self.dev.KeyChanges()
		if pub != self.dev.PublicKey() {
			rotations <- rotation{err: errors.New("KeyChanges delivered a key other than PublicKey")}
			return
		}
		err := other.dev.Configure([]Peer{self.peer()})
		rotations <- rotation{fmt.Sprintf("%s rotated at %d of %d bytes", self.dev.Name(), at, size), err}
	}
	go rotate(rotateA, a, b)
	go rotate(rotateB, b, a)

	c := dialTCP(t, a.pod, dst)
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	start := time.Now()
	for off := 0; off < size; off += 256 << 10 {
		if _, err := c.Write(payload[off : off+256<<10]); err != nil {
			t.Fatalf("write at %d: %v", off, err)
		}
		time.Sleep(2 * time.Millisecond) // pace the transfer so the rotations land mid-stream
	}
	c.(*net.TCPConn).CloseWrite()
	r := <-done
	if r.err != nil {
		t.Fatalf("receive: %v", r.err)
	}
	t.Logf("transfer of %d bytes took %v", size, time.Since(start))
	for range 2 {
		r := <-rotations
		if r.err != nil {
			t.Fatal(r.err)
		}
		t.Log(r.msg)
	}
	if len(r.data) != size || sha256.Sum256(r.data) != sha256.Sum256(payload) {
		t.Fatalf("received %d bytes, not byte-exact with the %d sent", len(r.data), size)
	}

	// The new keys are on disk, private, and in use by the peers.
	for _, n := range []*labNode{a, b} {
		fi, err := os.Stat(n.dev.keyPath)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("key file mode %v", fi.Mode().Perm())
		}
		k, err := loadOrCreateKey(n.dev.keyPath)
		if err != nil || k.PublicKey() != n.dev.PublicKey() {
			t.Errorf("key file does not hold the rotated key (err %v)", err)
		}
	}
	st, err := b.dev.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Peers) != 1 || st.Peers[0].PublicKey != ShortKey(a.dev.PublicKey()) || st.Peers[0].LastHandshake.IsZero() {
		t.Errorf("b's view of a after rotation: %+v", st.Peers)
	}
}

func TestScheduledRotation(t *testing.T) {
	netnstest.Require(t)
	ns := netnstest.New(t)
	n := &labNode{ns: ns}
	d := n.open(t, func(c *Config) { c.RotationInterval = 100 * time.Millisecond })
	first := d.PublicKey()
	var last wgtypes.Key
	for range 2 {
		select {
		case last = <-d.KeyChanges():
		case <-time.After(10 * time.Second):
			t.Fatal("no scheduled rotation")
		}
	}
	if last == first {
		t.Fatal("key did not change")
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	k, err := loadOrCreateKey(d.keyPath)
	if err != nil || k.PublicKey() != d.PublicKey() {
		t.Errorf("key file does not hold the last key (err %v)", err)
	}
}

func TestStrictModeDropsPlaintext(t *testing.T) {
	a, b := newLab(t)
	nftTables(t, a.ns) // skips without nftables
	// The underlay routes the whole pod space between the nodes, the way a
	// flat network would: without the tunnel, pod traffic crosses in
	// plaintext.
	a.ns.Route(t, meshCIDR, b.nodeIP)
	b.ns.Route(t, meshCIDR, a.nodeIP)
	udpDst := netip.AddrPortFrom(b.podIP, 5004)

	// Control: with no device, the marker does reach the underlay, so the
	// capture would see a leak.
	capture := b.ns.StartCapture(t, "ul0")
	testenv.Eventually(t, 10*time.Second, func() error {
		sendUDP(t, a.pod, udpDst, marker, 5)
		if analyze(capture.Frames(), DefaultListenPort).marker == 0 {
			return errors.New("control: plaintext marker not captured without the tunnel")
		}
		return nil
	})
	capture.Stop()

	a.open(t, func(c *Config) { c.Strict = true })
	b.open(t, nil)
	capture = b.ns.StartCapture(t, "ul0")

	// Before the peer is known.
	sendUDP(t, a.pod, udpDst, marker, 5)
	drops, err := a.dev.Dropped()
	if err != nil {
		t.Fatal(err)
	}
	if drops < 5 {
		t.Errorf("drops before the peer is known: %d, want >= 5", drops)
	}

	// Through the tunnel, then with the peer removed mid-connection.
	meshUp(t, a, b)
	dst := netip.AddrPortFrom(b.podIP, 5005)
	l := listenTCP(t, b.pod, dst)
	got := make(chan int, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- -1
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		data, _ := readAll(c, nil)
		got <- len(data)
	}()
	c := dialTCP(t, a.pod, dst)
	if _, err := c.Write(markerPayload(64 << 10)); err != nil {
		t.Fatal(err)
	}
	// Let the first bytes arrive through the tunnel.
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := a.dev.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if st.Peers[0].TxBytes > 64<<10 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	before, _ := a.dev.Dropped()
	if err := a.dev.Configure(nil); err != nil {
		t.Fatal(err)
	}
	c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	for range 20 {
		c.Write(markerPayload(16 << 10))
		time.Sleep(50 * time.Millisecond)
	}
	sendUDP(t, a.pod, udpDst, marker, 5)
	after, err := a.dev.Dropped()
	if err != nil {
		t.Fatal(err)
	}
	if after <= before {
		t.Errorf("drop counter did not rise after the peer was removed: %d -> %d", before, after)
	}
	st, err := a.dev.Stats()
	if err != nil || st.StrictDrops < after || !st.Strict {
		t.Errorf("stats strict drops %d (strict %v), want >= %d (err %v)", st.StrictDrops, st.Strict, after, err)
	}
	c.Close()

	frames, capDropped := stopAfterSentinel(t, capture, a, b)
	r := analyze(frames, DefaultListenPort)
	t.Logf("underlay: %d frames, %d wireguard udp, capture dropped %d; strict drops %d", len(frames), r.wgUDP, capDropped, after)
	if r.marker > 0 {
		t.Errorf("plaintext marker reached the underlay in %d frames", r.marker)
	}
	if len(r.foreign) > 0 {
		t.Errorf("non-WireGuard frames on underlay: %q", r.foreign)
	}

	// Close removes the rules.
	if err := a.dev.Close(); err != nil {
		t.Fatal(err)
	}
	if tables := nftTables(t, a.ns); len(tables) != 0 {
		t.Errorf("tables left after Close: %v", tables)
	}
}

// nftTables lists ns's nftables tables, skipping t if nftables is missing.
func nftTables(t *testing.T, ns *netnstest.NS) []string {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns.Handle)))
	if err != nil {
		testenv.Skipf(t, "nftables netlink not available: %v", err)
	}
	tables, err := c.ListTables()
	if err != nil {
		testenv.Skipf(t, "needs nftables (nf_tables) in the kernel: %v", err)
	}
	var names []string
	for _, tb := range tables {
		names = append(names, tb.Name)
	}
	return names
}

func TestWgShowListsDeviceAndPeers(t *testing.T) {
	a, b := newLab(t, "wg")
	a.open(t, nil)
	b.open(t, nil)
	meshUp(t, a, b)
	out, err := exec.Command("wg", "show", a.dev.Name()).CombinedOutput()
	if err != nil {
		t.Fatalf("wg show: %v\n%s", err, out)
	}
	s := string(out)
	for _, want := range []string{
		"interface: " + a.dev.Name(),
		"public key: " + a.dev.PublicKey().String(),
		"listening port: 51820",
		"peer: " + b.dev.PublicKey().String(),
		"endpoint: 192.0.2.2:51820",
		"10.244.2.0/24",
		"192.0.2.2/32",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("wg show output lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "private key: ") && !strings.Contains(s, "(hidden)") {
		t.Errorf("wg show printed a private key")
	}
}

func TestOpenCloseLifecycle(t *testing.T) {
	netnstest.Require(t)
	ns := netnstest.New(t)
	name := netnstest.RandName("brw")
	sock := filepath.Join(socketDir, name+".sock")

	// A stale socket of our name, left by a crashed agent.
	os.MkdirAll(socketDir, 0o755)
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ul.SetUnlinkOnClose(false)
	ul.Close()
	t.Cleanup(func() { os.Remove(sock) })

	cfg := Config{Name: name, StateDir: t.TempDir(), Netns: ns.Path, ListenPort: 40000}
	d, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Configure(nil); !errors.Is(err, ErrNotOpen) {
		t.Errorf("Configure before Open: %v, want ErrNotOpen", err)
	}
	if err := d.Open(); err != nil {
		t.Fatal(err)
	}
	if !linkExists(t, ns, name) {
		t.Fatal("interface missing after Open")
	}
	if d.Kernel() {
		t.Log("kernel WireGuard in use")
	}

	// The same name elsewhere is refused while the device lives.
	other := netnstest.New(t)
	cfg2 := cfg
	cfg2.StateDir, cfg2.Netns = t.TempDir(), other.Path
	d2, err := New(cfg2, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := d2.Open(); !d.Kernel() && !errors.Is(err, ErrInUse) {
		t.Errorf("second Open with the same name: %v, want ErrInUse", err)
	}
	d2.Close()
	if _, err := os.Stat(sock); !d.Kernel() && err != nil {
		t.Errorf("failed Open of a duplicate removed the live socket: %v", err)
	}

	pub := d.PublicKey()
	for range 2 {
		if err := d.Close(); err != nil {
			t.Fatalf("close: %v", err)
		}
	}
	if linkExists(t, ns, name) {
		t.Error("interface left after Close")
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left after Close: %v", err)
	}
	if err := d.Configure(nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Configure after Close: %v, want ErrClosed", err)
	}

	// The key survives a restart.
	d3, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if d3.PublicKey() != pub {
		t.Error("key not persisted across restarts")
	}
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	netnstest.Require(t)
	n := &labNode{ns: netnstest.New(t)}
	before := runtime.NumGoroutine()
	for range 3 {
		d := n.open(t, func(c *Config) { c.RotationInterval = time.Hour; c.Strict = true })
		if _, err := d.Stats(); err != nil {
			t.Fatal(err)
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
	}
	var after int
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if after = runtime.NumGoroutine(); after <= before {
			return
		}
	}
	buf := make([]byte, 1<<20)
	t.Errorf("goroutines: %d before, %d after Close\n%s", before, after, buf[:runtime.Stack(buf, true)])
}

// TestEnableStrictAtRuntime: a device opened without strict mode (as an
// agent does before it has read its cluster's config) drops plaintext to
// the mesh's pod space once EnableStrict is called.
func TestEnableStrictAtRuntime(t *testing.T) {
	a, b := newLab(t)
	nftTables(t, a.ns) // skips without nftables
	a.ns.Route(t, meshCIDR, b.nodeIP)
	b.ns.Route(t, meshCIDR, a.nodeIP)
	a.open(t, nil)
	if d, err := a.dev.Dropped(); err != nil || d != 0 {
		t.Fatalf("drops without strict mode: %d, %v", d, err)
	}
	if err := a.dev.EnableStrict(); err != nil {
		t.Fatal(err)
	}
	if err := a.dev.EnableStrict(); err != nil {
		t.Fatalf("second EnableStrict: %v", err)
	}
	sendUDP(t, a.pod, netip.AddrPortFrom(b.podIP, 5004), marker, 5)
	drops, err := a.dev.Dropped()
	if err != nil {
		t.Fatal(err)
	}
	if drops < 5 {
		t.Errorf("drops after EnableStrict: %d, want >= 5", drops)
	}
}
