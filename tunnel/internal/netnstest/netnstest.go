// Package netnstest builds throwaway network namespaces, veth links and
// packet captures for tunnel's privileged tests.
//
// Every namespace is named (under /run/netns) with a random suffix and is
// deleted by t.Cleanup. Functions call t.Fatal on errors and skip when the
// test cannot run here (not root, no netns or TUN support), which fails the
// test instead when $BRAID_CI_REQUIRED is set (see internal/testenv).
package netnstest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/braidmesh/braid/internal/netnsrun"
	"github.com/braidmesh/braid/internal/testenv"
)

// Require skips t unless it runs as root with network namespaces and
// /dev/net/tun available, and each named tool is on PATH.
func Require(t testing.TB, tools ...string) {
	t.Helper()
	testenv.Root(t, "network namespaces, TUN, nftables")
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		testenv.Skipf(t, "needs /dev/net/tun")
	}
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		testenv.Skipf(t, "needs network namespace support")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Skipf(t, "needs %s on PATH", tool)
		}
	}
}

// RandName returns prefix followed by random hex, at most 15 bytes, for
// names that must be unique on the machine.
func RandName(prefix string) string {
	b := make([]byte, 4)
	rand.Read(b)
	n := prefix + hex.EncodeToString(b)
	if len(n) > 15 {
		n = n[:15]
	}
	return n
}

// NS is a named network namespace.
type NS struct {
	Name   string
	Path   string
	Handle netns.NsHandle
}

// New creates a network namespace with loopback up; cleanup deletes it.
func New(t testing.TB) *NS {
	t.Helper()
	name := RandName("braidt-")
	var h netns.NsHandle
	err := Do(netns.None(), func() (err error) {
		h, err = netns.NewNamed(name)
		return err
	})
	if err != nil {
		testenv.Skipf(t, "needs network namespaces: create netns: %v", err)
	}
	ns := &NS{Name: name, Path: filepath.Join("/run/netns", name), Handle: h}
	t.Cleanup(func() {
		h.Close()
		netns.DeleteNamed(name)
	})
	ns.Do(t, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	return ns
}

// Do runs fn on a locked OS thread inside ns, or, if ns is netns.None(),
// on a locked thread that fn itself may move (it is restored afterwards).
func Do(ns netns.NsHandle, fn func() error) error { return netnsrun.Do(ns, fn) }

// Do runs fn inside n and fails t on error.
func (n *NS) Do(t testing.TB, fn func() error) {
	t.Helper()
	if err := Do(n.Handle, fn); err != nil {
		t.Fatalf("in netns %s: %v", n.Name, err)
	}
}

// Sysctl writes value to /proc/sys/KEY (slash-separated) inside n.
func (n *NS) Sysctl(t testing.TB, key, value string) {
	t.Helper()
	n.Do(t, func() error {
		return os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644)
	})
}

// Veth links a (interface aName, address aAddr) with b (bName, bAddr) and
// brings both ends up. An invalid address leaves that end unaddressed.
func Veth(t testing.TB, a *NS, aName string, aAddr netip.Prefix, b *NS, bName string, bAddr netip.Prefix) {
	t.Helper()
	a.Do(t, func() error {
		return netlink.LinkAdd(&netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: aName},
			PeerName:      bName,
			PeerNamespace: netlink.NsFd(int(b.Handle)),
		})
	})
	a.linkUp(t, aName, aAddr)
	b.linkUp(t, bName, bAddr)
}

func (n *NS) linkUp(t testing.TB, name string, addr netip.Prefix) {
	t.Helper()
	n.Do(t, func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		if addr.IsValid() {
			a := &netlink.Addr{IPNet: IPNet(addr)}
			if err := netlink.AddrAdd(l, a); err != nil {
				return fmt.Errorf("add address %v to %s: %w", addr, name, err)
			}
		}
		return netlink.LinkSetUp(l)
	})
}

// Route adds a route to dst via gw inside n.
func (n *NS) Route(t testing.TB, dst netip.Prefix, gw netip.Addr) {
	t.Helper()
	n.Do(t, func() error {
		return netlink.RouteAdd(&netlink.Route{Dst: IPNet(dst), Gw: gw.AsSlice()})
	})
}

// DelRoute removes the route to dst via gw inside n.
func (n *NS) DelRoute(t testing.TB, dst netip.Prefix, gw netip.Addr) {
	t.Helper()
	n.Do(t, func() error {
		return netlink.RouteDel(&netlink.Route{Dst: IPNet(dst), Gw: gw.AsSlice()})
	})
}

// AddrLo adds addr to n's loopback.
func (n *NS) AddrLo(t testing.TB, addr netip.Prefix) {
	t.Helper()
	n.linkUp(t, "lo", addr)
}

// IPNet converts p for netlink.
func IPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
