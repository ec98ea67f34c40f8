package bpf_test

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/braidmesh/braid/bpf"
	"github.com/braidmesh/braid/bpf/bpftest"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// monotonicNow is the clock bpf_ktime_get_ns reads, in nanoseconds.
func monotonicNow(t *testing.T) uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Nano())
}

// node is a node namespace routing between pod namespaces, with the tc
// programs on every pod-facing interface.
type node struct {
	ns   netns.NsHandle
	pods []netns.NsHandle
	ips  []netip.Addr // IPv4 of each pod
	ips6 []netip.Addr // IPv6 of each pod
	devs []int        // index of each pod's interface in ns
}

func newNode(t *testing.T, objs *bpf.Objects, pods int) *node {
	t.Helper()
	n := &node{ns: bpftest.NetNS(t)}
	bpftest.Sysctl(t, n.ns, "net/ipv4/ip_forward", "1")
	bpftest.Sysctl(t, n.ns, "net/ipv6/conf/all/forwarding", "1")
	// No duplicate address detection: link-local addresses (NDP's sources)
	// are usable at once, so IPv6 works as soon as the links are up.
	bpftest.Sysctl(t, n.ns, "net/ipv6/conf/default/accept_dad", "0")
	for i := 1; i <= pods; i++ {
		pod := bpftest.NetNS(t)
		bpftest.Sysctl(t, pod, "net/ipv6/conf/default/accept_dad", "0")
		gw := netip.MustParseAddr(fmt.Sprintf("10.202.%d.1", i))
		ip := netip.MustParseAddr(fmt.Sprintf("10.202.%d.2", i))
		gw6 := netip.MustParseAddr(fmt.Sprintf("fd00:202:%d::1", i))
		ip6 := netip.MustParseAddr(fmt.Sprintf("fd00:202:%d::2", i))
		idx := bpftest.Veth(t, n.ns, fmt.Sprintf("pod%d", i), []netip.Prefix{netip.PrefixFrom(gw, 24), netip.PrefixFrom(gw6, 64)},
			pod, "eth0", []netip.Prefix{netip.PrefixFrom(ip, 24), netip.PrefixFrom(ip6, 64)})
		bpftest.Route(t, pod, netip.MustParsePrefix("0.0.0.0/0"), gw)
		bpftest.Route(t, pod, netip.MustParsePrefix("::/0"), gw6)
		var mode bpf.TCMode
		if err := bpftest.Do(n.ns, func() (err error) { mode, err = objs.AttachTC(idx); return err }); err != nil {
			t.Fatalf("attach tc: %v", err)
		}
		t.Logf("pod%d: tc attached (%s)", i, mode)
		t.Cleanup(func() {
			if err := bpftest.Do(n.ns, func() error { return objs.DetachTC(idx) }); err != nil {
				t.Errorf("detach tc: %v", err)
			}
		})
		n.pods = append(n.pods, pod)
		n.ips = append(n.ips, ip)
		n.ips6 = append(n.ips6, ip6)
		n.devs = append(n.devs, idx)
	}
	return n
}

func counters(t *testing.T, objs *bpf.Objects) []uint64 {
	t.Helper()
	c, err := objs.Counters()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func dial(ns netns.NsHandle, to netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	err := bpftest.Do(ns, func() (err error) {
		c, err = net.DialTimeout("tcp", to.String(), 500*time.Millisecond)
		return err
	})
	return c, err
}

func TestTCServiceAndPolicy(t *testing.T) {
	objs := load(t)
	n := newNode(t, objs, 3)
	bpftest.Serve(t, n.pods[1], "pod2", bpftest.BackendPort)
	ids := []uint32{100, 200, 300}
	for i, ip := range n.ips {
		if err := objs.IPCache.Update(bpf.IPCacheKeyFor(netip.PrefixFrom(ip, 32)), bpf.IPCacheValue{Identity: ids[i], Flags: bpf.IPCacheLocal}); err != nil {
			t.Fatal(err)
		}
	}
	backend := netip.AddrPortFrom(n.ips[1], bpftest.BackendPort)

	for _, c := range []struct {
		name    string
		svcID   uint32
		vip     netip.AddrPort
		backend netip.Addr
	}{
		{"service DNAT", 1, netip.MustParseAddrPort("10.96.1.1:80"), n.ips[1]},
		{"service DNAT v6", 2, netip.MustParseAddrPort("[fd00:96::1:1]:80"), n.ips6[1]},
	} {
		t.Run(c.name, func(t *testing.T) {
			setService(t, objs, c.svcID, c.vip, protoTCP, 0, []testBackend{{c.svcID, c.backend, 0, true}})
			before := counters(t, objs)[bpf.CounterServiceDNAT]
			start := monotonicNow(t)
			for i := 0; i < 20; i++ {
				// The backend's greeting arrives over the reverse NAT: its
				// source is the VIP again, with valid checksums.
				name, peer, err := bpftest.Ask(n.pods[0], "tcp", c.vip)
				if err != nil || name != "pod2" || peer != c.vip {
					t.Fatalf("ask %s: %q from %s, %v; want pod2 from the VIP", c.vip, name, peer, err)
				}
			}
			if got := counters(t, objs)[bpf.CounterServiceDNAT] - before; got < 20 {
				t.Errorf("service_dnat counter moved by %d, want >= 20", got)
			}
			// Both CT entries of each flow carry a fresh last-seen time.
			ct, err := objs.CT.Dump()
			if err != nil {
				t.Fatal(err)
			}
			end := monotonicNow(t)
			fam, vipWords := bpf.AddrWords(c.vip.Addr())
			_, beWords := bpf.AddrWords(c.backend)
			fwd, rev := 0, 0
			for k, v := range ct {
				if k.Family != fam {
					continue
				}
				switch {
				case k.Daddr == vipWords && k.Dport == bpf.Port(c.vip.Port()):
					fwd++
				case k.Saddr == beWords && k.Sport == bpf.Port(bpftest.BackendPort) && v.NatAddr == vipWords:
					rev++
				default:
					continue
				}
				if v.LastSeen < start || v.LastSeen > end {
					t.Errorf("ct entry %+v: last seen %d, want within [%d, %d]", k, v.LastSeen, start, end)
				}
			}
			if fwd < 20 || rev < 20 {
				t.Errorf("ct holds %d forward and %d reverse entries for the VIP, want >= 20 each", fwd, rev)
			}
		})
	}

	t.Run("policy", func(t *testing.T) {
		// Identity 200 is isolated for ingress; 300 may reach it on
		// the backend port, 100 may not.
		keys := append([]bpf.PolicyKey{bpf.PolicyIsolationKey(bpf.PolicyIngress, 200)},
			bpf.PolicyAllowKeys(bpf.PolicyIngress, 200, 300, protoTCP, bpftest.BackendPort, bpftest.BackendPort)...)
		vals := []bpf.PolicyValue{{Action: bpf.PolicyDeny}, {Action: bpf.PolicyAllow}}
		if _, err := objs.Policy.BatchUpdate(keys, vals); err != nil {
			t.Fatal(err)
		}
		before := counters(t, objs)
		if c, err := dial(n.pods[0], backend); err == nil {
			c.Close()
			t.Errorf("identity 100 -> 200 connected, but 200 is isolated and only 300 is allowed")
		}
		mid := counters(t, objs)
		if mid[bpf.CounterDropPolicy] == before[bpf.CounterDropPolicy] {
			t.Errorf("drop_policy counter did not move")
		}
		drops, err := objs.PolicyDrops.Lookup(bpf.DropKey{Identity: 200, Dir: bpf.PolicyIngress, Reason: bpf.DropReasonPolicy})
		if err != nil || drops == 0 {
			t.Errorf("policy drops of identity 200: %d, %v; want > 0", drops, err)
		}
		recent, err := objs.RecentDrops()
		if err != nil {
			t.Fatal(err)
		}
		if len(recent) == 0 || recent[len(recent)-1].SrcIdentity != 100 || recent[len(recent)-1].DstIdentity != 200 {
			t.Errorf("recent drops %+v: want the last from identity 100 to 200", recent)
		}
		c, err := dial(n.pods[2], backend)
		if err != nil {
			t.Fatalf("identity 300 -> 200 (allowed): %v", err)
		}
		c.Close()
		after := counters(t, objs)
		if after[bpf.CounterForward] == mid[bpf.CounterForward] {
			t.Errorf("forward counter did not move for the allowed pair")
		}
		if after[bpf.CounterDropPolicy] != mid[bpf.CounterDropPolicy] {
			t.Errorf("allowed pair counted as drop_policy")
		}

		// Default deny: a pair without a rule is dropped, counted apart.
		objs.Policy.BatchDelete(keys)
		if err := objs.SetDatapathConfig(bpf.DatapathConfig{DefaultDeny: 1}); err != nil {
			t.Fatal(err)
		}
		defer objs.SetDatapathConfig(bpf.DatapathConfig{})
		if c, err := dial(n.pods[2], backend); err == nil {
			c.Close()
			t.Errorf("default deny: identity 300 -> 200 connected without a rule")
		}
		if end := counters(t, objs); end[bpf.CounterDropDefaultDeny] == after[bpf.CounterDropDefaultDeny] {
			t.Errorf("drop_default_deny counter did not move")
		}
	})
}

// TestTCTunnelSteering covers the ipcache lookup of tc_from_pod: packets a
// pod sends to a remote pod (an ipcache entry flagged IPCacheTunnel, as the
// reconciler writes for a HostIP that is not this node's) are redirected to
// the tunnel device, here a TUN device whose packets the test reads; packets
// to a local pod are routed as usual.
func TestTCTunnelSteering(t *testing.T) {
	objs := load(t)
	n := newNode(t, objs, 2)
	bpftest.Serve(t, n.pods[1], "pod2", bpftest.BackendPort)
	tunIdx, tun := bpftest.TUN(t, n.ns, "braidtun0")

	remote := []netip.Addr{netip.MustParseAddr("10.99.0.5"), netip.MustParseAddr("fd00:99::5")}
	fam, endpoint := bpf.AddrWords(netip.MustParseAddr("192.0.2.9"))
	for _, a := range remote {
		v := bpf.IPCacheValue{Identity: 2<<16 | 7, ClusterId: 2, Flags: bpf.IPCacheTunnel, TunnelFamily: fam, TunnelEndpoint: endpoint}
		if err := objs.IPCache.Update(bpf.IPCacheKeyFor(netip.PrefixFrom(a, a.BitLen())), v); err != nil {
			t.Fatal(err)
		}
	}
	for _, a := range []netip.Addr{n.ips[1], n.ips6[1]} {
		if err := objs.IPCache.Update(bpf.IPCacheKeyFor(netip.PrefixFrom(a, a.BitLen())), bpf.IPCacheValue{Identity: 1<<16 | 3, Flags: bpf.IPCacheLocal}); err != nil {
			t.Fatal(err)
		}
	}
	if err := objs.SetDatapathConfig(bpf.DatapathConfig{TunnelIfindex: uint32(tunIdx)}); err != nil {
		t.Fatal(err)
	}

	// tunnelled reads the TUN device until it is quiet for wait and
	// returns how many packets went to each destination.
	tunnelled := func(wait time.Duration) map[netip.Addr]int {
		got := map[netip.Addr]int{}
		buf := make([]byte, 2048)
		for {
			tun.SetReadDeadline(time.Now().Add(wait))
			n, err := tun.Read(buf)
			if err != nil {
				return got
			}
			switch p := buf[:n]; {
			case len(p) >= 20 && p[0]>>4 == 4:
				got[netip.AddrFrom4([4]byte(p[16:20]))]++
			case len(p) >= 40 && p[0]>>4 == 6:
				got[netip.AddrFrom16([16]byte(p[24:40]))]++
			}
		}
	}

	const sends = 3
	before := counters(t, objs)[bpf.CounterTunnelRedirect]
	for _, a := range remote {
		to := netip.AddrPortFrom(a, 9999)
		err := bpftest.Do(n.pods[0], func() error {
			c, err := net.Dial("udp", to.String())
			if err != nil {
				return err
			}
			defer c.Close()
			for i := 0; i < sends; i++ {
				if _, err := c.Write([]byte("to the tunnel")); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("send to %s: %v", to, err)
		}
	}
	got := tunnelled(500 * time.Millisecond)
	for _, a := range remote {
		if got[a] != sends {
			t.Errorf("tunnel device got %d packets to remote pod %s, want %d (all: %v)", got[a], a, sends, got)
		}
	}
	mid := counters(t, objs)[bpf.CounterTunnelRedirect]
	if mid-before < 2*sends {
		t.Errorf("tunnel_redirect counter moved by %d, want >= %d", mid-before, 2*sends)
	}

	// Local pod: answered by the pod itself, nothing on the tunnel.
	for _, a := range []netip.Addr{n.ips[1], n.ips6[1]} {
		for _, network := range []string{"udp", "tcp"} {
			if name, _, err := bpftest.Ask(n.pods[0], network, netip.AddrPortFrom(a, bpftest.BackendPort)); err != nil || name != "pod2" {
				t.Errorf("%s to local pod %s: %q, %v; want an answer from pod2", network, a, name, err)
			}
		}
	}
	got = tunnelled(200 * time.Millisecond)
	if got[n.ips[1]]+got[n.ips6[1]] != 0 {
		t.Errorf("packets to the local pod reached the tunnel device: %v", got)
	}
	if end := counters(t, objs)[bpf.CounterTunnelRedirect]; end != mid {
		t.Errorf("tunnel_redirect counter moved by %d for local traffic", end-mid)
	}
}
