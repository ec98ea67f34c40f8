package bpf_test

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/braidmesh/braid/bpf"
	"github.com/braidmesh/braid/bpf/bpftest"
)

const (
	protoTCP = 6
	protoUDP = 17
)

func load(t *testing.T) *bpf.Objects {
	t.Helper()
	bpftest.RequireRoot(t)
	objs, err := bpf.Load(bpf.Config{PinDir: bpftest.PinDir(t), IPCacheEntries: 1024, ServiceEntries: 1024, BackendEntries: 1024, CTEntries: 4096, SockRevEntries: 4096})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() {
		if err := objs.Unpin(); err != nil {
			t.Errorf("unpin: %v", err)
		}
		objs.Close()
	})
	return objs
}

type testBackend struct {
	id      uint32
	addr    netip.Addr
	band    int // 0 is the most preferred
	healthy bool
}

// setService writes one service by hand: backends, slots band by band, then
// the frontend record.
func setService(t *testing.T, objs *bpf.Objects, svcID uint32, vip netip.AddrPort, proto uint8, flags uint8, bes []testBackend) {
	t.Helper()
	var counts [bpf.NumBands]uint16
	slot := uint32(0)
	for band := 0; band < bpf.NumBands; band++ {
		for _, b := range bes {
			fam, w := bpf.AddrWords(b.addr)
			v := bpf.BackendValue{Addr: w, Port: bpf.Port(bpftest.BackendPort), Family: fam}
			if b.healthy {
				v.Flags = bpf.BackendHealthy
			}
			if err := objs.Backends.Update(b.id, v); err != nil {
				t.Fatal(err)
			}
			if b.band != band {
				continue
			}
			if err := objs.Slots.Update(bpf.SlotKey{SvcId: svcID, Slot: slot}, b.id); err != nil {
				t.Fatal(err)
			}
			slot++
			counts[band]++
		}
	}
	if err := objs.Services.Update(bpf.ServiceKeyFor(vip, proto), bpf.ServiceValue{SvcId: svcID, Count: counts, Flags: flags}); err != nil {
		t.Fatal(err)
	}
}

// tally connects n times and counts answers per backend name; it fails on
// any error or on a peer address other than the VIP.
func tally(t *testing.T, lab *bpftest.LB, network string, vip netip.AddrPort, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for i := 0; i < n; i++ {
		name, peer, err := bpftest.Ask(lab.Client, network, vip)
		if err != nil {
			t.Fatalf("%s connect %d to %s: %v", network, i, vip, err)
		}
		if peer.Addr().Unmap() != vip.Addr().Unmap() || peer.Port() != vip.Port() {
			t.Fatalf("%s peer = %s, want VIP %s", network, peer, vip)
		}
		got[name]++
	}
	return got
}

func TestSocketLB(t *testing.T) {
	objs := load(t)
	lab := bpftest.NewLB(t)
	cg := bpftest.Cgroup(t)
	if err := objs.AttachCgroup(cg); err != nil {
		t.Fatalf("attach cgroup: %v", err)
	}
	t.Cleanup(func() { objs.DetachCgroup(cg) })
	bpftest.EnterCgroup(t, cg)

	const n = 1000
	families := []struct {
		name          string
		vip           netip.Addr
		local, remote netip.Addr
	}{
		{"v4", netip.MustParseAddr("10.96.0.10"), lab.LocalV4, lab.RemoteV4},
		{"v6", netip.MustParseAddr("fd00:96::10"), lab.LocalV6, lab.RemoteV6},
	}
	svcID := uint32(1)
	for _, f := range families {
		for _, network := range []string{"tcp", "udp"} {
			proto := uint8(protoTCP)
			if network == "udp" {
				proto = protoUDP
			}
			t.Run(f.name+"/"+network, func(t *testing.T) {
				vip := netip.AddrPortFrom(f.vip, 80)
				id := svcID
				svcID++
				localID, remoteID := 10*id+1, 10*id+2
				// Two bands: local preferred, remote as the fallback band.
				bands := func(localBand, remoteBand int, localHealthy bool) []testBackend {
					return []testBackend{{localID, f.local, localBand, localHealthy}, {remoteID, f.remote, remoteBand, true}}
				}

				setService(t, objs, id, vip, proto, 0, bands(0, 1, true))
				if got := tally(t, lab, network, vip, n); got["local"] != n {
					t.Errorf("local band first, local healthy: %v, want all %d local", got, n)
				}

				setService(t, objs, id, vip, proto, 0, bands(0, 1, false))
				if got := tally(t, lab, network, vip, n); got["remote"] != n {
					t.Errorf("local band first, local unhealthy: %v, want all %d remote", got, n)
				}

				// Fallback: every backend unhealthy, the service flagged:
				// unhealthy ones are picked and counted.
				before := counters(t, objs)[bpf.CounterFallback]
				fb := bands(0, 1, false)
				fb[1].healthy = false
				setService(t, objs, id, vip, proto, bpf.ServiceFallback, fb)
				if got := tally(t, lab, network, vip, n); got["local"] != n {
					t.Errorf("fallback: %v, want all %d local (first band)", got, n)
				}
				if d := counters(t, objs)[bpf.CounterFallback] - before; d != n {
					t.Errorf("fallback counter rose by %d, want %d", d, n)
				}

				// Removed: the only local backend leaves the slots.
				objs.Slots.BatchDelete([]bpf.SlotKey{{SvcId: id, Slot: 0}, {SvcId: id, Slot: 1}})
				setService(t, objs, id, vip, proto, 0, bands(0, 0, true)[1:])
				if got := tally(t, lab, network, vip, n); got["remote"] != n {
					t.Errorf("no local backend: %v, want all %d remote", got, n)
				}

				setService(t, objs, id, vip, proto, 0, bands(1, 0, true))
				if got := tally(t, lab, network, vip, n); got["remote"] != n {
					t.Errorf("remote band first: %v, want all %d remote", got, n)
				}

				setService(t, objs, id, vip, proto, 0, bands(0, 0, true))
				got := tally(t, lab, network, vip, n)
				if l, r := got["local"], got["remote"]; l+r != n || l < n*45/100 || r < n*45/100 {
					t.Errorf("one band: %v, want a 50/50 split within 10%%", got)
				}
				t.Logf("one band split: %v", got)
			})
		}
	}
}

// TestSocketLBUnconnectedUDP covers sendmsg/recvmsg: replies to sendto() on
// an unconnected socket appear to come from the VIP, including sendto() to
// an ::ffff: address on an IPv6 socket, which runs the IPv4 hooks.
func TestSocketLBUnconnectedUDP(t *testing.T) {
	objs := load(t)
	lab := bpftest.NewLB(t)
	cg := bpftest.Cgroup(t)
	if err := objs.AttachCgroup(cg); err != nil {
		t.Fatalf("attach cgroup: %v", err)
	}
	t.Cleanup(func() { objs.DetachCgroup(cg) })
	bpftest.EnterCgroup(t, cg)

	vip4 := netip.MustParseAddrPort("10.96.0.20:53")
	vip6 := netip.MustParseAddrPort("[fd00:96::20]:53")
	setService(t, objs, 1, vip4, protoUDP, 0, []testBackend{{1, lab.LocalV4, 0, true}})
	setService(t, objs, 2, vip6, protoUDP, 0, []testBackend{{2, lab.LocalV6, 0, true}})

	cases := []struct {
		name, network, bind string
		to                  netip.AddrPort
	}{
		{"v4", "udp4", "0.0.0.0:0", vip4},
		{"v6", "udp6", "[::]:0", vip6},
		{"v4-mapped on v6 socket", "udp", "[::]:0", netip.AddrPortFrom(netip.AddrFrom16(vip4.Addr().As16()), vip4.Port())},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var pc net.PacketConn
			if err := bpftest.Do(lab.Client, func() (err error) {
				pc, err = net.ListenPacket(c.network, c.bind)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			pc.SetDeadline(time.Now().Add(2 * time.Second))
			if _, err := pc.WriteTo([]byte("?"), net.UDPAddrFromAddrPort(c.to)); err != nil {
				t.Fatalf("sendto %s: %v", c.to, err)
			}
			buf := make([]byte, 64)
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				t.Fatalf("recvfrom: %v", err)
			}
			got := from.(*net.UDPAddr).AddrPort()
			if string(buf[:n]) != "local" || got != c.to {
				t.Errorf("reply %q from %s, want \"local\" from %s", buf[:n], got, c.to)
			}
		})
	}
}

// TestSocketLBNetnsFilter checks DatapathConfig.NetnsCookie: with a cookie
// set, the socket hooks translate only for sockets of that network
// namespace, though every process of the cgroup runs them.
func TestSocketLBNetnsFilter(t *testing.T) {
	objs := load(t)
	lab := bpftest.NewLB(t)
	cg := bpftest.Cgroup(t)
	if err := objs.AttachCgroup(cg); err != nil {
		t.Fatalf("attach cgroup: %v", err)
	}
	t.Cleanup(func() { objs.DetachCgroup(cg) })
	bpftest.EnterCgroup(t, cg)

	vip := netip.MustParseAddrPort("10.96.0.30:80")
	setService(t, objs, 1, vip, protoTCP, 0, []testBackend{{1, lab.LocalV4, 0, true}})
	client := bpftest.NetNSCookie(t, lab.Client)
	other := bpftest.NetNSCookie(t, lab.Remote)
	if client == other {
		t.Fatalf("two namespaces share cookie %d", client)
	}
	for _, c := range []struct {
		name   string
		cookie uint64
		lb     bool
	}{
		{"all namespaces", 0, true},
		{"client namespace", client, true},
		{"another namespace", other, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := objs.SetDatapathConfig(bpf.DatapathConfig{NetnsCookie: c.cookie}); err != nil {
				t.Fatal(err)
			}
			name, peer, err := bpftest.Ask(lab.Client, "tcp", vip)
			switch {
			case c.lb && (err != nil || name != "local" || peer != vip):
				t.Errorf("connect to %s: %q from %s, %v; want \"local\" from the VIP", vip, name, peer, err)
			case !c.lb && err == nil:
				// The VIP is not routable in the client namespace.
				t.Errorf("connect to %s was load-balanced (%q) outside the configured namespace", vip, name)
			}
		})
	}
	objs.SetDatapathConfig(bpf.DatapathConfig{})
}
