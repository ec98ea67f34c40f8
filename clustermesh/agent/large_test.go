package agent_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/braidmesh/braid/bpf"
	"github.com/braidmesh/braid/bpf/bpftest"
	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/agent"
	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/kvstore/etcd"
	"github.com/braidmesh/braid/kvstore/etcd/etcdtest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestAgentServesFiftyThousandBackends takes a 50,000-backend service of
// another cluster through a real etcd (500 chunks) and the agent into its
// BPF maps at their default sizes, and connect()s to the VIP reach those backends: west's whole pod
// range is local to the lab's remote namespace, where a server answers
// with the backend address each connection reached.
func TestAgentServesFiftyThousandBackends(t *testing.T) {
	bpftest.RequireRoot(t)
	lab := bpftest.NewLB(t)
	cg := bpftest.Cgroup(t)
	pins := bpftest.PinDir(t)

	const n = 50_000
	const port = 9090
	westPods := netip.MustParsePrefix("10.208.0.0/14")
	// Every address of west's pod range is the remote namespace's own, and
	// the client namespace routes the range there.
	remote := bpftest.Handle(t, lab.Remote)
	lo, err := remote.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.RouteAdd(&netlink.Route{LinkIndex: lo.Attrs().Index, Dst: prefixNet(westPods), Type: unix.RTN_LOCAL, Table: unix.RT_TABLE_LOCAL, Scope: netlink.SCOPE_HOST}); err != nil {
		t.Fatalf("route %s local in the remote namespace: %v", westPods, err)
	}
	bpftest.Route(t, lab.Client, westPods, lab.RemoteV4)
	serveLocalAddr(t, lab, port)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	// A real etcd, so west's service travels in the chunked layout that
	// etcd's value limit requires at this size.
	srv := etcdtest.Start(t, etcdtest.WithoutFsync())
	connect := func() *etcd.Store {
		s, err := etcd.New(ctx, etcd.Config{Endpoints: srv.Endpoints()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	store := connect()
	east := cluster("east", 1, "10.201.1.0/24", "172.21.0.0/16")
	west := cluster("west", 2, westPods.String(), "172.22.0.0/16")
	pubEast := runPublisher(t, ctx, east, store)
	pubWest := runPublisher(t, ctx, west, connect())

	huge := func(c clustermesh.ClusterConfig, vip string, backends int) *clustermesh.Service {
		s := &clustermesh.Service{Cluster: c.Name, Namespace: "default", Name: "huge", Global: true, Shared: true,
			Affinity: clustermesh.AffinityNone, Ports: []clustermesh.ServicePort{{Name: "http", Port: 80, Protocol: clustermesh.TCP}},
			ClusterIPs: []netip.Addr{netip.MustParseAddr(vip)}}
		base := c.PodCIDRs[0].Addr().As4()
		for i := range backends {
			ip := base
			ip[1] += byte(i >> 16)
			ip[2], ip[3] = byte(i>>8), byte(i)
			s.Backends = append(s.Backends, clustermesh.Backend{IP: netip.AddrFrom4(ip),
				Ports: []clustermesh.BackendPort{{Name: "http", Port: port}}, Node: fmt.Sprintf("w%d", i%100), Zone: "zb", Ready: true, Serving: true})
		}
		return s
	}
	// East exports the service with no backends of its own; west holds
	// all 50,000.
	if err := pubEast.Upsert(huge(east, "172.21.0.20", 0)); err != nil {
		t.Fatal(err)
	}
	want := huge(west, "172.22.0.20", n)
	if err := pubWest.Upsert(want); err != nil {
		t.Fatal(err)
	}
	backendIPs := make(map[netip.Addr]bool, n)
	for _, b := range want.Backends {
		backendIPs[b.IP] = true
	}

	a, stopAgent := runAgent(t, ctx, agent.Config{Cluster: "east", Node: "e1", Zone: "za", BPF: bpf.Config{PinDir: pins}, CgroupPath: cg}, store)
	defer stopAgent()
	bpftest.EnterCgroup(t, cg)
	start := time.Now()

	backendsInMap := func(want int) func() error {
		return func() error {
			for _, m := range a.Snapshot().Maps {
				if m.Name == "backends" && m.Entries == want {
					return nil
				}
			}
			return fmt.Errorf("want %d entries in the backends map; maps %+v", want, a.Snapshot().Maps)
		}
	}
	testenv.Eventually(t, 2*time.Minute, backendsInMap(n))
	t.Logf("%d backends in the agent's BPF maps %v after it started", n, time.Since(start).Round(time.Millisecond))

	vip := netip.MustParseAddrPort("172.21.0.20:80")
	reached := map[netip.Addr]int{}
	for i := range 300 {
		got, err := askLocalAddr(lab, vip)
		if err != nil {
			t.Fatalf("connection %d to %v: %v", i, vip, err)
		}
		if !backendIPs[got] {
			t.Fatalf("connection %d to %v reached %v, not one of west's backends", i, vip, got)
		}
		reached[got]++
	}
	// 300 draws from 50,000 backends, evenly: two draws of one backend
	// are rare (birthday bound: about one pair expected), so fewer than
	// 290 distinct means the map does not hold them all evenly.
	t.Logf("300 connections reached %d distinct backends", len(reached))
	if len(reached) < 290 {
		t.Errorf("300 connections reached %d distinct backends, want ≥ 290 of the 50,000", len(reached))
	}

	// One backend leaves: the map follows.
	want.Backends = want.Backends[:n-1]
	if err := pubWest.Upsert(want); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, time.Minute, backendsInMap(n-1))
	if snap := a.Snapshot(); !snap.Healthy {
		t.Errorf("agent unhealthy: %v", snap.Problems)
	}
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// serveLocalAddr runs a TCP server on port in the lab's remote namespace
// that writes the address each connection was accepted on.
func serveLocalAddr(t *testing.T, lab *bpftest.LB, port int) {
	t.Helper()
	var ln net.Listener
	if err := bpftest.Do(lab.Remote, func() error {
		var err error
		ln, err = net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", port))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, c.LocalAddr().(*net.TCPAddr).AddrPort().Addr().Unmap().String()+"\n")
			c.Close()
		}
	}()
}

// askLocalAddr connects from the client namespace to vip and returns the
// backend address the server saw the connection on.
func askLocalAddr(lab *bpftest.LB, vip netip.AddrPort) (netip.Addr, error) {
	var c net.Conn
	if err := bpftest.Do(lab.Client, func() error {
		var err error
		c, err = net.DialTimeout("tcp", vip.String(), 2*time.Second)
		return err
	}); err != nil {
		return netip.Addr{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return netip.Addr{}, err
	}
	return netip.ParseAddr(strings.TrimSpace(line))
}
