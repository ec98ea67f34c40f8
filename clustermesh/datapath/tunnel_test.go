package datapath

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/braidmesh/braid/bpf/bpftest"
	"github.com/braidmesh/braid/clustermesh"
)

// TestSameClusterBypassesTunnel: of two nodes in one cluster, node 1's pod
// reaches a pod on node 2 over the underlay, while a pod of another cluster
// is steered into the tunnel device. Only other clusters' nodes are
// WireGuard peers, so steering same-cluster traffic would blackhole it.
func TestSameClusterBypassesTunnel(t *testing.T) {
	objs := loadObjs(t)
	node1, node2, pod := bpftest.NetNS(t), bpftest.NetNS(t), bpftest.NetNS(t)
	p := netip.MustParsePrefix
	bpftest.Sysctl(t, node1, "net/ipv4/ip_forward", "1")
	podIdx := bpftest.Veth(t, node1, "pod1", []netip.Prefix{p("10.204.1.1/24")}, pod, "eth0", []netip.Prefix{p("10.204.1.2/24")})
	bpftest.Route(t, pod, p("0.0.0.0/0"), netip.MustParseAddr("10.204.1.1"))
	// The underlay; node 2's pod address sits on node 2 itself.
	bpftest.Veth(t, node1, "under", []netip.Prefix{p("192.0.2.1/24")}, node2, "under", []netip.Prefix{p("192.0.2.2/24"), p("10.204.2.2/32")})
	bpftest.Route(t, node1, p("10.204.2.0/24"), netip.MustParseAddr("192.0.2.2"))
	bpftest.Route(t, node2, p("10.204.1.0/24"), netip.MustParseAddr("192.0.2.1"))
	tunIdx, tun := bpftest.TUN(t, node1, "brtun0")
	if err := bpftest.Do(node1, func() error { _, err := objs.AttachTC(podIdx); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bpftest.Do(node1, func() error { return objs.DetachTC(podIdx) }) })

	topo := Topology{Node: "n1", Cluster: "east", ClusterID: 1, NodeIPs: []netip.Addr{netip.MustParseAddr("192.0.2.1")}, TunnelIfindex: uint32(tunIdx)}
	r, err := New(Config{Topology: topo}, MapsOf(objs), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	sameCluster := netip.MustParseAddr("10.204.2.2")
	otherCluster := netip.MustParseAddr("10.99.0.5")
	want := Desired{
		ClusterIDs: map[clustermesh.ClusterName]clustermesh.ClusterID{"east": 1, "west": 2},
		IPCache: []clustermesh.IPEntry{
			{Prefix: p("10.204.1.2/32"), Cluster: "east", Identity: 1<<16 | 1, HostIP: netip.MustParseAddr("192.0.2.1")},
			{Prefix: p("10.204.2.2/32"), Cluster: "east", Identity: 1<<16 | 2, HostIP: netip.MustParseAddr("192.0.2.2")},
			{Prefix: p("10.99.0.5/32"), Cluster: "west", Identity: 2<<16 | 1, HostIP: netip.MustParseAddr("198.51.100.9")},
		},
	}
	if err := r.Reconcile(context.Background(), want); err != nil {
		t.Fatal(err)
	}

	var recv net.PacketConn
	if err := bpftest.Do(node2, func() (err error) {
		recv, err = net.ListenPacket("udp", netip.AddrPortFrom(sameCluster, 9999).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer recv.Close()
	send := func(to netip.Addr) {
		t.Helper()
		if err := bpftest.Do(pod, func() error {
			c, err := net.Dial("udp", netip.AddrPortFrom(to, 9999).String())
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte(to.String()))
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}

	send(sameCluster)
	recv.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, _, err := recv.ReadFrom(buf)
	if err != nil || string(buf[:n]) != sameCluster.String() {
		t.Fatalf("node 2 did not get the same-cluster packet over the underlay: %q, %v", buf[:n], err)
	}

	send(otherCluster)
	tun.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		n, err := tun.Read(buf)
		if err != nil {
			t.Fatalf("the other cluster's packet never reached the tunnel device: %v", err)
		}
		if pkt := buf[:n]; len(pkt) >= 20 && pkt[0]>>4 == 4 {
			dst := netip.AddrFrom4([4]byte(pkt[16:20]))
			if dst == sameCluster {
				t.Fatalf("same-cluster traffic entered the tunnel device")
			}
			if dst == otherCluster {
				break
			}
		}
	}
}
