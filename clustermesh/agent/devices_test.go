package agent

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/braidmesh/braid/bpf"
	"github.com/braidmesh/braid/bpf/bpftest"
)

func TestPodDeviceMatcher(t *testing.T) {
	veth := func(name string, peerNS int) netlink.Link {
		l := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, NetNsID: peerNS}}
		return l
	}
	nodeIP := netip.MustParseAddr("10.250.0.11")
	addrs := func(l netlink.Link) ([]netlink.Addr, error) {
		if l.Attrs().Name == "eth0" { // the node's uplink, itself a veth
			return []netlink.Addr{{IPNet: &net.IPNet{IP: nodeIP.AsSlice(), Mask: net.CIDRMask(24, 32)}}}, nil
		}
		return []netlink.Addr{{IPNet: &net.IPNet{IP: net.IPv4(10, 100, 0, 1), Mask: net.CIDRMask(32, 32)}}}, nil
	}
	auto, _ := podDeviceMatcher(PodDevicesAuto, []netip.Addr{nodeIP}, addrs)
	if !auto(veth("anything", 3)) || auto(veth("local", -1)) || auto(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "d", NetNsID: 2}}) {
		t.Error("auto: want exactly veths whose peer is in another netns")
	}
	if auto(veth("eth0", 0)) {
		t.Error("auto: the veth holding the node's address is its uplink, not a pod's")
	}
	globs, err := podDeviceMatcher("lxc*,cali*", nil, nil)
	if err != nil || !globs(veth("lxc123", -1)) || !globs(veth("cali9", -1)) || globs(veth("eth0", 2)) {
		t.Errorf("globs: wrong matches (err %v)", err)
	}
	if _, err := podDeviceMatcher("[bad", nil, nil); err == nil {
		t.Error("bad glob accepted")
	}
}

// TestWatchPodDevices: pods come and go in a node namespace; the tc
// programs follow them without any interface being named.
func TestWatchPodDevices(t *testing.T) {
	bpftest.RequireRoot(t)
	objs, err := bpf.Load(bpf.Config{PinDir: bpftest.PinDir(t), IPCacheEntries: 1024, ServiceEntries: 1024, BackendEntries: 1024, CTEntries: 4096, SockRevEntries: 4096})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { objs.Unpin(); objs.Close() })
	node := bpftest.NetNS(t)
	do := func(fn func() error) error { return bpftest.Do(node, fn) }
	events := make(chan string, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	h := bpftest.Handle(t, node)
	nodeIP := netip.MustParsePrefix("10.206.0.11/24")
	// The watch asks on a handle of its own: a netlink.Handle is not safe
	// for concurrent use, and the test changes links meanwhile.
	wh := bpftest.Handle(t, node)
	match, _ := podDeviceMatcher(PodDevicesAuto, []netip.Addr{nodeIP.Addr()}, func(l netlink.Link) ([]netlink.Addr, error) {
		return wh.AddrList(l, netlink.FAMILY_ALL)
	})
	wait := func(want string) {
		t.Helper()
		select {
		case got := <-events:
			if got != want {
				t.Fatalf("event %q, want %q", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no event %q", want)
		}
	}
	// The node's uplink is a veth into another namespace too, but it holds
	// the node's address: not a pod's. It is made before the watch starts,
	// as a node's uplink is before its agent.
	bpftest.Veth(t, node, "uplink0", []netip.Prefix{nodeIP}, bpftest.NetNS(t), "eth0", []netip.Prefix{netip.MustParsePrefix("10.206.0.1/24")})
	go func() {
		done <- watchPodDevices(ctx, objs, match, &node, do, slog.New(slog.DiscardHandler), func(name string, idx int, up bool) {
			events <- name + " " + strconv.FormatBool(up)
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	// A device with its peer in the same namespace is not a pod's.
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "local0"}, PeerName: "local1"}); err != nil {
		t.Fatal(err)
	}
	pod := bpftest.NetNS(t)
	idx := bpftest.Veth(t, node, "pod1", []netip.Prefix{netip.MustParsePrefix("10.205.0.1/24")}, pod, "eth0", []netip.Prefix{netip.MustParsePrefix("10.205.0.2/24")})
	wait("pod1 true")
	pins := filepath.Join(objs.Config().PinDir, "links", "tcx-"+strconv.Itoa(idx)+"-ingress")
	if _, err := os.Stat(pins); err != nil {
		t.Errorf("no pinned tc link for pod1: %v", err)
	}
	link, err := h.LinkByName("pod1")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkDel(link); err != nil {
		t.Fatal(err)
	}
	wait("pod1 false")
	if _, err := os.Stat(pins); !os.IsNotExist(err) {
		t.Errorf("pinned tc link of the removed pod1 left behind: %v", err)
	}
}
