package tunnel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/tunnel/internal/netnstest"
)

// marker is the plaintext that must never cross the underlay.
var marker = []byte("BRAID-PLAINTEXT-MARKER-7f3a91")

// labNode is one node netns with one pod netns behind it:
//
//	pod (eth0 10.244.N.2) -- (podN 10.244.N.1) node (ul0 192.0.2.N) -- underlay
type labNode struct {
	ns, pod *netnstest.NS
	nodeIP  netip.Addr
	podCIDR netip.Prefix
	podIP   netip.Addr
	dev     *Device
	log     *slog.Logger // the device's logger; nil: testLogger
}

var meshCIDR = netip.MustParsePrefix("10.244.0.0/16")

// newLab builds two nodes joined by a veth underlay (ul0 on each side).
// It opens no devices.
func newLab(t testing.TB, tools ...string) (a, b *labNode) {
	t.Helper()
	netnstest.Require(t, tools...)
	nodes := make([]*labNode, 2)
	for i := range nodes {
		n := &labNode{
			ns:      netnstest.New(t),
			pod:     netnstest.New(t),
			nodeIP:  netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}),
			podCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i + 1), 0}), 24),
			podIP:   netip.AddrFrom4([4]byte{10, 244, byte(i + 1), 2}),
		}
		for _, ns := range []*netnstest.NS{n.ns, n.pod} {
			// Keep the underlay free of IPv6 chatter; the capture checks every frame.
			ns.Sysctl(t, "net/ipv6/conf/all/disable_ipv6", "1")
			ns.Sysctl(t, "net/ipv6/conf/default/disable_ipv6", "1")
		}
		n.ns.Sysctl(t, "net/ipv4/ip_forward", "1")
		gw := netip.AddrFrom4([4]byte{10, 244, byte(i + 1), 1})
		netnstest.Veth(t, n.ns, "pod0", netip.PrefixFrom(gw, 24), n.pod, "eth0", netip.PrefixFrom(n.podIP, 24))
		n.pod.Route(t, netip.MustParsePrefix("0.0.0.0/0"), gw)
		nodes[i] = n
	}
	netnstest.Veth(t, nodes[0].ns, "ul0", netip.PrefixFrom(nodes[0].nodeIP, 24),
		nodes[1].ns, "ul0", netip.PrefixFrom(nodes[1].nodeIP, 24))
	return nodes[0], nodes[1]
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("BRAID_TUNNEL_DEBUG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.DiscardHandler)
}

// open creates and opens n's device; cleanup closes it.
func (n *labNode) open(t testing.TB, mutate func(*Config)) *Device {
	t.Helper()
	cfg := Config{
		Name:        netnstest.RandName("brw"),
		StateDir:    t.TempDir(),
		Netns:       n.ns.Path,
		StrictCIDRs: []netip.Prefix{meshCIDR},
	}
	if n.podCIDR.IsValid() {
		cfg.LocalPodCIDRs = []netip.Prefix{n.podCIDR}
	}
	if mutate != nil {
		mutate(&cfg)
	}
	log := n.log
	if log == nil {
		log = testLogger(t)
	}
	d, err := New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	n.dev = d
	return d
}

// peer describes n as a remote node.
func (n *labNode) peer() Peer {
	return Peer{
		Name:      n.ns.Name,
		PublicKey: n.dev.PublicKey(),
		Endpoint:  netip.AddrPortFrom(n.nodeIP, uint16(n.dev.cfg.listenPort())),
		PodCIDRs:  []netip.Prefix{n.podCIDR},
	}
}

// meshUp configures a and b as each other's peer.
func meshUp(t testing.TB, a, b *labNode) {
	t.Helper()
	if err := a.dev.Configure([]Peer{b.peer()}); err != nil {
		t.Fatal(err)
	}
	if err := b.dev.Configure([]Peer{a.peer()}); err != nil {
		t.Fatal(err)
	}
}

func listenTCP(t testing.TB, ns *netnstest.NS, addr netip.AddrPort) net.Listener {
	t.Helper()
	var l net.Listener
	ns.Do(t, func() (err error) {
		l, err = net.Listen("tcp", addr.String())
		return err
	})
	t.Cleanup(func() { l.Close() })
	return l
}

func dialTCP(t testing.TB, ns *netnstest.NS, addr netip.AddrPort) net.Conn {
	t.Helper()
	var c net.Conn
	ns.Do(t, func() (err error) {
		c, err = net.DialTimeout("tcp", addr.String(), 30*time.Second) // generous: a loaded machine
		return err
	})
	t.Cleanup(func() { c.Close() })
	return c
}

func sendUDP(t testing.TB, ns *netnstest.NS, addr netip.AddrPort, payload []byte, count int) {
	t.Helper()
	var c net.Conn
	ns.Do(t, func() (err error) {
		c, err = net.Dial("udp", addr.String())
		return err
	})
	defer c.Close()
	for range count {
		c.Write(payload) // errors (ICMP unreachable, EPERM from nftables) are expected in some tests
		time.Sleep(time.Millisecond)
	}
}

// markerPayload returns size bytes made of repeated marker copies.
func markerPayload(size int) []byte {
	return bytes.Repeat(marker, size/len(marker)+1)[:size]
}

// sentinel ends an underlay capture: see stopAfterSentinel.
var sentinel = []byte("BRAID-UNDERLAY-SENTINEL-c41e07")

// sentinelPort is where to's node receives the sentinel.
const sentinelPort = 5999

// stopAfterSentinel sends the sentinel from from's node to to's over the
// underlay (node to node, which no rule drops) and stops capture, running
// on to's ul0, once it has read the sentinel. Everything from's node sent
// before the sentinel crossed the same veth first, so the capture holds
// it: nothing in flight is missed, and no sleep guesses how long to wait.
func stopAfterSentinel(t testing.TB, capture *netnstest.Capture, from, to *labNode) ([][]byte, uint32) {
	t.Helper()
	dst := netip.AddrPortFrom(to.nodeIP, sentinelPort)
	var l net.PacketConn
	to.ns.Do(t, func() (err error) {
		l, err = net.ListenPacket("udp4", dst.String()) // no ICMP port unreachable in the capture
		return err
	})
	defer l.Close()
	testenv.Eventually(t, 10*time.Second, func() error {
		sendUDP(t, from.ns, dst, sentinel, 1)
		for _, f := range capture.Frames() {
			if bytes.Contains(f, sentinel) {
				return nil
			}
		}
		return errors.New("underlay capture has not seen the sentinel frame")
	})
	return capture.Stop()
}

// underlayReport classifies captured Ethernet frames.
type underlayReport struct {
	wgUDP    int      // IPv4 UDP frames to or from the WireGuard port
	marker   int      // frames containing the marker
	sentinel int      // frames containing the sentinel
	foreign  []string // other IPv4/IPv6 frames
}

func analyze(frames [][]byte, wgPort uint16) underlayReport {
	var r underlayReport
	for _, f := range frames {
		if bytes.Contains(f, marker) {
			r.marker++
		}
		if bytes.Contains(f, sentinel) {
			r.sentinel++
			continue
		}
		if len(f) < 14 {
			continue
		}
		switch et := binary.BigEndian.Uint16(f[12:14]); et {
		case 0x0806: // ARP
		case 0x0800:
			ip := f[14:]
			if len(ip) < 20 {
				r.foreign = append(r.foreign, "short ipv4")
				continue
			}
			ihl := int(ip[0]&0x0f) * 4
			proto := ip[9]
			src, dst := netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
			if proto == 17 && len(ip) >= ihl+4 {
				sp, dp := binary.BigEndian.Uint16(ip[ihl:]), binary.BigEndian.Uint16(ip[ihl+2:])
				if sp == wgPort || dp == wgPort {
					r.wgUDP++
					continue
				}
			}
			if len(r.foreign) < 10 {
				r.foreign = append(r.foreign, src.String()+" > "+dst.String()+" proto "+strconv.Itoa(int(proto)))
			}
		default:
			if len(r.foreign) < 10 {
				r.foreign = append(r.foreign, "ethertype "+fmt.Sprintf("%#04x", et))
			}
		}
	}
	return r
}

// linkExists reports whether ifname exists in ns.
func linkExists(t testing.TB, ns *netnstest.NS, ifname string) bool {
	t.Helper()
	var ok bool
	ns.Do(t, func() error {
		_, err := net.InterfaceByName(ifname)
		ok = err == nil
		return nil
	})
	return ok
}

// readAll reads from c until EOF, reporting progress.
func readAll(c net.Conn, progress func(int)) ([]byte, error) {
	var buf bytes.Buffer
	chunk := make([]byte, 64<<10)
	for {
		n, err := c.Read(chunk)
		buf.Write(chunk[:n])
		if progress != nil && n > 0 {
			progress(buf.Len())
		}
		if err == io.EOF {
			return buf.Bytes(), nil
		}
		if err != nil {
			return buf.Bytes(), err
		}
	}
}
