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
)

// node is a node namespace routing between pod namespaces, with the tc
// programs on every pod-facing interface.
type node struct {
	ns   netns.NsHandle
	pods []netns.NsHandle
	ips  []netip.Addr
}

func newNode(t *testing.T, objs *bpf.Objects, pods int) *node {
	t.Helper()
	n := &node{ns: bpftest.NetNS(t)}
	bpftest.Sysctl(t, n.ns, "net/ipv4/ip_forward", "1")
	for i := 1; i <= pods; i++ {
		pod := bpftest.NetNS(t)
		gw := netip.MustParseAddr(fmt.Sprintf("10.202.%d.1", i))
		ip := netip.MustParseAddr(fmt.Sprintf("10.202.%d.2", i))
		idx := bpftest.Veth(t, n.ns, fmt.Sprintf("pod%d", i), []netip.Prefix{netip.PrefixFrom(gw, 24)},
			pod, "eth0", []netip.Prefix{netip.PrefixFrom(ip, 24)})
		bpftest.Route(t, pod, netip.MustParsePrefix("0.0.0.0/0"), gw)
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

	t.Run("service DNAT", func(t *testing.T) {
		vip := netip.MustParseAddrPort("10.96.1.1:80")
		setService(t, objs, 1, vip, protoTCP, bpf.AffinityNone, []testBackend{{1, n.ips[1], bpf.TierNode, true}})
		before := counters(t, objs)[bpf.CounterServiceDNAT]
		for i := 0; i < 20; i++ {
			name, peer, err := bpftest.Ask(n.pods[0], "tcp", vip)
			if err != nil || name != "pod2" || peer != vip {
				t.Fatalf("ask %s: %q from %s, %v; want pod2 from the VIP", vip, name, peer, err)
			}
		}
		if got := counters(t, objs)[bpf.CounterServiceDNAT] - before; got == 0 {
			t.Errorf("service_dnat counter did not move")
		}
	})

	t.Run("policy", func(t *testing.T) {
		deny := bpf.PolicyKey{SrcIdentity: 100, DstIdentity: 200, Port: bpf.Port(bpftest.BackendPort), Proto: protoTCP}
		allow := bpf.PolicyKey{SrcIdentity: 300, DstIdentity: 200}
		if _, err := objs.Policy.BatchUpdate([]bpf.PolicyKey{deny, allow}, []bpf.PolicyValue{{Action: bpf.PolicyDeny}, {Action: bpf.PolicyAllow}}); err != nil {
			t.Fatal(err)
		}
		before := counters(t, objs)
		if c, err := dial(n.pods[0], backend); err == nil {
			c.Close()
			t.Errorf("identity 100 -> 200 connected despite a deny rule")
		}
		mid := counters(t, objs)
		if mid[bpf.CounterDropPolicy] == before[bpf.CounterDropPolicy] {
			t.Errorf("drop_policy counter did not move")
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
		objs.Policy.BatchDelete([]bpf.PolicyKey{allow})
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
