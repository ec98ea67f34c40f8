// Package bpftest sets up what privileged datapath tests need: root, a
// network namespace per node or pod, a cgroup v2 directory and a bpffs pin
// directory of their own, each removed when the test ends.
//
// Helpers skip with a one-line reason when the machine cannot run them (not
// root, no cgroup v2, no bpffs), so tests pass or skip, never fail, on an
// unprivileged machine; with $BRAID_CI_REQUIRED set (as in CI) such a skip
// is a failure (see internal/testenv). The cgroup v2 hierarchy is found in
// /proc/self/mountinfo, wherever it is mounted.
package bpftest

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/braidmesh/braid/internal/cgroupv2"
	"github.com/braidmesh/braid/internal/netnsrun"
	"github.com/braidmesh/braid/internal/testenv"
)

// RequireRoot skips t unless it runs as root with cgroup v2 and bpffs.
func RequireRoot(t testing.TB) {
	t.Helper()
	testenv.Root(t, "CAP_BPF, CAP_NET_ADMIN, cgroup and netns setup")
	CgroupRoot(t)
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err != nil {
		testenv.Skipf(t, "no /sys/fs/bpf directory for bpffs")
	}
}

// CgroupRoot returns the cgroup v2 mount, found in /proc/self/mountinfo
// (/sys/fs/cgroup on pure v2 machines, /sys/fs/cgroup/unified on hybrid
// ones), or skips t when there is none.
func CgroupRoot(t testing.TB) cgroupv2.Mount {
	t.Helper()
	m, err := cgroupv2.Find()
	if err != nil {
		testenv.Skipf(t, "no cgroup v2: %v", err)
	}
	return m
}

func randName(prefix string) string {
	var b [4]byte
	rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// PinDir returns a fresh pin directory under /sys/fs/bpf, removed at cleanup.
// It mounts bpffs on /sys/fs/bpf when nothing is mounted there.
func PinDir(t testing.TB) string {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err == nil && st.Type != unix.BPF_FS_MAGIC {
		if err := unix.Mount("bpf", "/sys/fs/bpf", "bpf", 0, "mode=0700"); err != nil {
			testenv.Skipf(t, "cannot mount bpffs: %v", err)
		}
	}
	dir := filepath.Join("/sys/fs/bpf", randName("braid-test-"))
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// Cgroup creates a cgroup v2 directory, removed at cleanup.
func Cgroup(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(CgroupRoot(t).Point, randName("braid-test-"))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() { os.Remove(dir) })
	return dir
}

func ownCgroup(m cgroupv2.Mount) (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			return m.Dir(rest)
		}
	}
	return "", fmt.Errorf("no cgroup v2 entry in /proc/self/cgroup")
}

// EnterCgroup moves the test process into cg and back at cleanup. Every
// socket the process opens meanwhile is subject to programs attached to cg.
func EnterCgroup(t testing.TB, cg string) {
	t.Helper()
	orig, err := ownCgroup(CgroupRoot(t))
	if err != nil {
		t.Fatalf("read own cgroup: %v", err)
	}
	pid := []byte(strconv.Itoa(os.Getpid()))
	if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), pid, 0); err != nil {
		testenv.Skipf(t, "cannot enter cgroup %s: %v", cg, err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(filepath.Join(orig, "cgroup.procs"), pid, 0); err != nil {
			t.Errorf("leave cgroup: %v", err)
		}
	})
}

// NetNS creates a network namespace with loopback up, closed at cleanup
// (the kernel reaps it and its interfaces once nothing uses it).
func NetNS(t testing.TB) netns.NsHandle {
	t.Helper()
	var ns netns.NsHandle
	err := netnsrun.Do(netns.None(), func() (err error) {
		ns, err = netns.New() // switches the thread; Do switches it back
		return err
	})
	if err != nil {
		testenv.Skipf(t, "needs network namespaces: new netns: %v", err)
	}
	t.Cleanup(func() { ns.Close() })
	h := Handle(t, ns)
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatalf("loopback up: %v", err)
	}
	return ns
}

// Handle returns a netlink handle operating in ns, closed at cleanup.
func Handle(t testing.TB, ns netns.NsHandle) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("netlink handle: %v", err)
	}
	t.Cleanup(h.Close)
	return h
}

// Do runs fn on a thread switched into ns. Sockets fn creates stay in ns.
func Do(ns netns.NsHandle, fn func() error) error { return netnsrun.Do(ns, fn) }

// Veth connects nsA and nsB with a veth pair named nameA/nameB, brings both
// ends up and assigns the addresses (IPv6 without duplicate address
// detection). It returns the index of nameA in nsA.
func Veth(t testing.TB, nsA netns.NsHandle, nameA string, addrsA []netip.Prefix, nsB netns.NsHandle, nameB string, addrsB []netip.Prefix) int {
	t.Helper()
	ha, hb := Handle(t, nsA), Handle(t, nsB)
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: nameA}, PeerName: nameB, PeerNamespace: netlink.NsFd(int(nsB))}
	if err := ha.LinkAdd(v); err != nil {
		t.Fatalf("add veth %s: %v", nameA, err)
	}
	setup := func(h *netlink.Handle, name string, addrs []netip.Prefix) int {
		l, err := h.LinkByName(name)
		if err != nil {
			t.Fatalf("link %s: %v", name, err)
		}
		for _, a := range addrs {
			na := &netlink.Addr{IPNet: &net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())}}
			if a.Addr().Is6() {
				na.Flags = unix.IFA_F_NODAD
			}
			if err := h.AddrAdd(l, na); err != nil {
				t.Fatalf("addr %s on %s: %v", a, name, err)
			}
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatalf("up %s: %v", name, err)
		}
		return l.Attrs().Index
	}
	idx := setup(ha, nameA, addrsA)
	setup(hb, nameB, addrsB)
	return idx
}

// Route adds a route to dst via gw in ns (gw may be invalid for on-link).
func Route(t testing.TB, ns netns.NsHandle, dst netip.Prefix, gw netip.Addr) {
	t.Helper()
	h := Handle(t, ns)
	r := &netlink.Route{Dst: &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())}}
	if gw.IsValid() {
		r.Gw = gw.AsSlice()
	}
	if err := h.RouteAdd(r); err != nil {
		t.Fatalf("route %s via %s: %v", dst, gw, err)
	}
}

// Sysctl writes a sysctl inside ns, e.g. Sysctl(t, ns, "net/ipv4/ip_forward", "1").
func Sysctl(t testing.TB, ns netns.NsHandle, key, val string) {
	t.Helper()
	// /proc/sys/net reflects the netns of the thread that opens it.
	err := Do(ns, func() error { return os.WriteFile("/proc/sys/"+key, []byte(val), 0) })
	if err != nil {
		t.Fatalf("sysctl %s: %v", key, err)
	}
}

// TUN creates a layer-3 TUN device named name in ns, brings it up and
// returns its index and the file that reads the IP packets the device
// transmits (read deadlines work). The device goes away at cleanup, when
// the file is closed. It skips t when the kernel has no TUN support.
func TUN(t testing.TB, ns netns.NsHandle, name string) (int, *os.File) {
	t.Helper()
	var f *os.File
	err := Do(ns, func() error {
		// The device belongs to the netns of the thread that opens the file.
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		ifr, err := unix.NewIfreq(name)
		if err == nil {
			ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
			err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
		}
		if err != nil {
			unix.Close(fd)
			return err
		}
		f = os.NewFile(uintptr(fd), "/dev/net/tun")
		return nil
	})
	if err != nil {
		testenv.Skipf(t, "cannot create TUN device: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	h := Handle(t, ns)
	l, err := h.LinkByName(name)
	if err == nil {
		err = h.LinkSetUp(l)
	}
	if err != nil {
		t.Fatalf("up %s: %v", name, err)
	}
	return l.Attrs().Index, f
}

// soNetnsCookie is SO_NETNS_COOKIE (Linux 5.14), missing from x/sys/unix.
const soNetnsCookie = 71

// NetNSCookie returns the cookie bpf_get_netns_cookie reports for ns.
func NetNSCookie(t testing.TB, ns netns.NsHandle) uint64 {
	t.Helper()
	var cookie uint64
	err := Do(ns, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		cookie, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, soNetnsCookie)
		return err
	})
	if err != nil {
		testenv.Skipf(t, "SO_NETNS_COOKIE: %v", err)
	}
	return cookie
}
