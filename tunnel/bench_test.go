package tunnel

import (
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/tunnel/internal/netnstest"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// BenchmarkThroughput measures one TCP stream between two network
// namespaces joined by a veth pair:
//
//	veth:         plain veth, for context
//	wireguard-go: upstream wireguard-go processes configured by hand, the baseline
//	device:       the same traffic through two tunnel.Devices, each in its
//	              own process (this test binary re-executed, see helper_test.go)
//	device-in-process: both Devices inside the benchmark process, using
//	              Config.Netns (one process does both nodes' crypto)
//
// Run in the interleaved (ABBA) order docs/benchmarks.md reports, one
// sub-benchmark per invocation:
//
//	go test -c -o /tmp/tunnel.test ./tunnel/ && for s in wireguard-go device device wireguard-go wireguard-go device device wireguard-go; do
//		/tmp/tunnel.test -test.run "^$" -test.bench "Throughput/^$s\$" -test.benchtime 2s; done
func BenchmarkThroughput(b *testing.B) {
	b.Run("veth", func(b *testing.B) {
		na, nb := benchUnderlay(b)
		streamBench(b, na, nb, netip.Addr{}, netip.MustParseAddrPort("192.0.2.2:6000"))
	})
	b.Run("wireguard-go", func(b *testing.B) {
		na, nb := benchUnderlay(b)
		bin := wireguardGo(b)
		ka, _ := wgtypes.GeneratePrivateKey()
		kb, _ := wgtypes.GeneratePrivateKey()
		da := rawWireGuard(b, bin, na, ka, kb.PublicKey(), "192.0.2.2:51820", "10.99.0.1/24", "10.99.0.2/32")
		db := rawWireGuard(b, bin, nb, kb, ka.PublicKey(), "192.0.2.1:51820", "10.99.0.2/24", "10.99.0.1/32")
		logImplementations(b, na, da, nb, db)
		streamBench(b, na, nb, netip.Addr{}, netip.MustParseAddrPort("10.99.0.2:6000"))
	})
	b.Run("device", func(b *testing.B) {
		na, nb := benchUnderlay(b)
		na.AddrLo(b, netip.MustParsePrefix("10.244.1.1/32"))
		nb.AddrLo(b, netip.MustParsePrefix("10.244.2.1/32"))
		// One process per node, as agents run, with Netns empty: the
		// production path.
		cfgA := Config{Name: netnstest.RandName("brw"), StateDir: b.TempDir()}
		cfgB := Config{Name: netnstest.RandName("brw"), StateDir: b.TempDir()}
		ha := startHelper(b, na, cfgA)
		hb := startHelper(b, nb, cfgB)
		logImplementations(b, na, cfgA.Name, nb, cfgB.Name)
		peer := func(pub, node, pods string) []Peer {
			k, err := wgtypes.ParseKey(pub)
			if err != nil {
				b.Fatal(err)
			}
			return []Peer{{PublicKey: k, Endpoint: netip.MustParseAddrPort(node), PodCIDRs: []netip.Prefix{netip.MustParsePrefix(pods)}}}
		}
		ha.configure(b, peer(hb.pub, "192.0.2.2:51820", "10.244.2.0/24"))
		hb.configure(b, peer(ha.pub, "192.0.2.1:51820", "10.244.1.0/24"))
		streamBench(b, na, nb, netip.MustParseAddr("10.244.1.1"), netip.MustParseAddrPort("10.244.2.1:6000"))
	})
	b.Run("device-in-process", func(b *testing.B) {
		na, nb := benchUnderlay(b)
		a := &labNode{ns: na, nodeIP: netip.MustParseAddr("192.0.2.1"), podCIDR: netip.MustParsePrefix("10.244.1.0/24")}
		c := &labNode{ns: nb, nodeIP: netip.MustParseAddr("192.0.2.2"), podCIDR: netip.MustParsePrefix("10.244.2.0/24")}
		na.AddrLo(b, netip.MustParsePrefix("10.244.1.1/32"))
		nb.AddrLo(b, netip.MustParsePrefix("10.244.2.1/32"))
		a.open(b, nil)
		c.open(b, nil)
		meshUp(b, a, c)
		logImplementations(b, na, a.dev.cfg.Name, nb, c.dev.cfg.Name)
		streamBench(b, na, nb, netip.MustParseAddr("10.244.1.1"), netip.MustParseAddrPort("10.244.2.1:6000"))
	})
}

func benchUnderlay(b *testing.B) (*netnstest.NS, *netnstest.NS) {
	netnstest.Require(b)
	na, nb := netnstest.New(b), netnstest.New(b)
	netnstest.Veth(b, na, "ul0", netip.MustParsePrefix("192.0.2.1/24"), nb, "ul0", netip.MustParsePrefix("192.0.2.2/24"))
	return na, nb
}

// wireguardGo builds wireguard-go's own command from the module cache, so
// the baseline is the unmodified upstream program.
func wireguardGo(b *testing.B) string {
	if _, err := exec.LookPath("go"); err != nil {
		testenv.Skipf(b, "needs the go command to build the wireguard-go baseline")
	}
	dir := b.TempDir()
	bin := filepath.Join(dir, "wireguard-go")
	out, err := exec.Command("go", "build", "-o", bin, "golang.zx2c4.com/wireguard").CombinedOutput()
	if err != nil {
		testenv.Skipf(b, "needs wireguard-go: build: %v\n%s", err, out)
	}
	return bin
}

// rawWireGuard runs wireguard-go as its own process inside ns (forked from a
// thread in ns, so it inherits the netns) and configures it by hand over
// its UAPI socket, with no tunnel code involved.
func rawWireGuard(b *testing.B, bin string, ns *netnstest.NS, priv, peer wgtypes.Key, endpoint, addr, allowed string) string {
	name := netnstest.RandName("brr")
	cmd := exec.Command(bin, "-f", name)
	cmd.Env = append(os.Environ(), "LOG_LEVEL=error")
	ns.Do(b, cmd.Start)
	b.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		os.Remove(filepath.Join(socketDir, name+".sock"))
	})
	wg, err := wgctrl.New()
	if err != nil {
		b.Fatal(err)
	}
	defer wg.Close()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := wg.Device(name); err == nil {
			break
		} else if time.Now().After(deadline) {
			b.Fatalf("wireguard-go %s did not come up: %v", name, err)
		}
	}
	port := 51820
	ep, err := net.ResolveUDPAddr("udp", endpoint)
	if err != nil {
		b.Fatal(err)
	}
	if err := wg.ConfigureDevice(name, wgtypes.Config{
		PrivateKey: &priv,
		ListenPort: &port,
		Peers: []wgtypes.PeerConfig{{
			PublicKey:  peer,
			Endpoint:   ep,
			AllowedIPs: []net.IPNet{*netnstest.IPNet(netip.MustParsePrefix(allowed))},
		}},
	}); err != nil {
		b.Fatal(err)
	}
	ns.Do(b, func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetMTU(l, 1440); err != nil {
			return err
		}
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: netnstest.IPNet(netip.MustParsePrefix(addr))}); err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	return name
}

// logImplementations prints which WireGuard implementation runs each side
// (the kernel's or wireguard-go), as wgctrl sees the device from inside its
// namespace: the figures mean little without it.
func logImplementations(b *testing.B, na *netnstest.NS, devA string, nb *netnstest.NS, devB string) {
	b.Helper()
	impl := func(ns *netnstest.NS, name string) (s string) {
		ns.Do(b, func() error {
			wg, err := wgctrl.New()
			if err != nil {
				return err
			}
			defer wg.Close()
			d, err := wg.Device(name)
			if err != nil {
				return err
			}
			switch d.Type {
			case wgtypes.LinuxKernel:
				s = "kernel WireGuard"
			case wgtypes.Userspace:
				s = "wireguard-go"
			default:
				s = d.Type.String()
			}
			return nil
		})
		return s
	}
	b.Logf("side a: %s; side b: %s", impl(na, devA), impl(nb, devB))
}

// streamBench sends 1 MiB per iteration over one TCP connection from a to
// dst in b, and reports throughput.
func streamBench(b *testing.B, a, nb *netnstest.NS, src netip.Addr, dst netip.AddrPort) {
	l := listenTCP(b, nb, dst)
	done := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		_, err = io.Copy(io.Discard, c)
		done <- err
	}()
	var c net.Conn
	a.Do(b, func() (err error) {
		d := net.Dialer{Timeout: 10 * time.Second}
		if src.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
		}
		c, err = d.Dial("tcp", dst.String())
		return err
	})
	defer c.Close()
	buf := make([]byte, 1<<20)
	// Warm up: handshake, window growth.
	for range 16 {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	c.(*net.TCPConn).CloseWrite()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}
