package bpf_test

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os/exec"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/braidmesh/braid/bpf"
	"github.com/braidmesh/braid/bpf/bpftest"
	"github.com/braidmesh/braid/internal/testenv"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

func vipN(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 97, byte(i >> 8), byte(i)}), 80)
}

// connectLatency connects to `to` from ns samples times and returns p50 and
// p99 of the connect() call. It uses blocking system calls on one locked
// thread with the collector off, so the figures are the kernel's path (the
// socket hook, or the iptables chains the SYN traverses) rather than Go's
// scheduler and netpoller; both modes are measured the same way.
func connectLatency(b *testing.B, ns netns.NsHandle, to netip.AddrPort, samples int) (p50, p99 time.Duration) {
	d := make([]time.Duration, 0, samples)
	// A raw sockaddr for RawSyscall: the connect does not go through Go's
	// syscall entry and exit, so the scheduler cannot add a wait for a P.
	sa := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: to.Addr().As4()}
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], to.Port())
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	err := bpftest.Do(ns, func() error {
		for i := 0; i < samples; i++ {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			start := time.Now()
			_, _, errno := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unsafe.Sizeof(sa))
			elapsed := time.Since(start)
			if errno != 0 {
				err = errno
			}
			// Reset instead of a FIN handshake, so no TIME_WAIT piles up.
			_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
			unix.Close(fd)
			if err != nil {
				return fmt.Errorf("connect %v: %w", to, err)
			}
			d = append(d, elapsed)
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	slices.Sort(d)
	return d[len(d)/2], d[len(d)*99/100]
}

// BenchmarkConnectLatency compares connect() to the last of N services
// through the socket-level LB with the same services as kube-proxy's two
// modes, beside a direct connect to the backend (no rules, no hook: the
// physical limit), all in one run:
//
//	direct/beside=N    connect to the backend's own address; nothing loaded
//	socklb/services=N  the cgroup connect4 hook
//	nftables/services=N  kube-proxy's nftables mode: one verdict map from
//	                   address . protocol . port to a per-service chain
//	iptables/services=N  kube-proxy's iptables mode (nft backend)
//
// Run with -benchtime 1x.
func BenchmarkConnectLatency(b *testing.B) {
	bpftest.RequireRoot(b)
	testenv.LookPath(b, "iptables-restore", "iptables")
	testenv.LookPath(b, "nft", "nftables")
	const samples = 10000
	for _, n := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("direct/beside=%d", n), func(b *testing.B) {
			client, server := bpftest.NetNS(b), bpftest.NetNS(b)
			p := netip.MustParsePrefix
			bpftest.Veth(b, client, "c", []netip.Prefix{p("10.203.0.1/24")}, server, "s", []netip.Prefix{p("10.203.0.2/24")})
			bpftest.Serve(b, server, "be", bpftest.BackendPort)
			backend := netip.AddrPortFrom(netip.MustParseAddr("10.203.0.2"), bpftest.BackendPort)
			for i := 0; i < b.N; i++ {
				p50, p99 := connectLatency(b, client, backend, samples)
				b.ReportMetric(float64(p50.Nanoseconds())/1e3, "p50-µs")
				b.ReportMetric(float64(p99.Nanoseconds())/1e3, "p99-µs")
			}
		})
		b.Run(fmt.Sprintf("socklb/services=%d", n), func(b *testing.B) {
			objs, err := bpf.Load(bpf.Config{PinDir: bpftest.PinDir(b), ServiceEntries: 16384, BackendEntries: 16384})
			if err != nil {
				b.Fatal(err)
			}
			defer func() { objs.Unpin(); objs.Close() }()
			client, server := bpftest.NetNS(b), bpftest.NetNS(b)
			p := netip.MustParsePrefix
			bpftest.Veth(b, client, "c", []netip.Prefix{p("10.203.0.1/24")}, server, "s", []netip.Prefix{p("10.203.0.2/24")})
			bpftest.Serve(b, server, "be", bpftest.BackendPort)
			bpftest.Route(b, client, netip.MustParsePrefix("0.0.0.0/0"), netip.MustParseAddr("10.203.0.2"))
			fam, w := bpf.AddrWords(netip.MustParseAddr("10.203.0.2"))
			if err := objs.Backends.Update(1, bpf.BackendValue{Addr: w, Port: bpf.Port(bpftest.BackendPort), Family: fam, Flags: bpf.BackendHealthy}); err != nil {
				b.Fatal(err)
			}
			var ks []bpf.ServiceKey
			var vs []bpf.ServiceValue
			var sk []bpf.SlotKey
			var sv []bpf.BackendID
			for i := 0; i < n; i++ {
				ks = append(ks, bpf.ServiceKeyFor(vipN(i), protoTCP))
				vs = append(vs, bpf.ServiceValue{SvcId: uint32(i + 1), Count: [bpf.NumBands]uint16{1}})
				sk = append(sk, bpf.SlotKey{SvcId: uint32(i + 1)})
				sv = append(sv, 1)
			}
			if _, err := objs.Slots.BatchUpdate(sk, sv); err != nil {
				b.Fatal(err)
			}
			if _, err := objs.Services.BatchUpdate(ks, vs); err != nil {
				b.Fatal(err)
			}
			cg := bpftest.Cgroup(b)
			if err := objs.AttachCgroup(cg); err != nil {
				b.Fatal(err)
			}
			defer objs.DetachCgroup(cg)
			bpftest.EnterCgroup(b, cg)
			for i := 0; i < b.N; i++ {
				p50, p99 := connectLatency(b, client, vipN(n-1), samples)
				b.ReportMetric(float64(p50.Nanoseconds())/1e3, "p50-µs")
				b.ReportMetric(float64(p99.Nanoseconds())/1e3, "p99-µs")
			}
		})
		b.Run(fmt.Sprintf("nftables/services=%d", n), func(b *testing.B) {
			client, server := bpftest.NetNS(b), bpftest.NetNS(b)
			p := netip.MustParsePrefix
			bpftest.Veth(b, client, "c", []netip.Prefix{p("10.203.0.1/24")}, server, "s", []netip.Prefix{p("10.203.0.2/24")})
			bpftest.Serve(b, server, "be", bpftest.BackendPort)
			bpftest.Route(b, client, netip.MustParsePrefix("0.0.0.0/0"), netip.MustParseAddr("10.203.0.2"))
			// As kube-proxy's nftables mode builds it (pkg/proxy/nftables):
			// the output hook jumps to services, which looks the packet up
			// in one verdict map and goes to the service's chain; that
			// picks an endpoint with numgen and goes to its DNAT chain.
			var rules strings.Builder
			rules.WriteString("table ip kube-proxy {\n")
			rules.WriteString("  chain nat-output {\n    type nat hook output priority -100; policy accept;\n    jump services\n  }\n")
			for i := 0; i < n; i++ {
				fmt.Fprintf(&rules, "  chain service-%d {\n    numgen random mod 1 vmap { 0 : goto endpoint-%d }\n  }\n", i, i)
				fmt.Fprintf(&rules, "  chain endpoint-%d {\n    meta l4proto tcp dnat to 10.203.0.2:%d\n  }\n", i, bpftest.BackendPort)
			}
			rules.WriteString("  map service-ips {\n    type ipv4_addr . inet_proto . inet_service : verdict\n    elements = {\n")
			for i := 0; i < n; i++ {
				v := vipN(i)
				fmt.Fprintf(&rules, "      %s . tcp . %d : goto service-%d,\n", v.Addr(), v.Port(), i)
			}
			rules.WriteString("    }\n  }\n")
			rules.WriteString("  chain services {\n    ip daddr . meta l4proto . th dport vmap @service-ips\n  }\n}\n")
			err := bpftest.Do(client, func() error {
				cmd := exec.Command("nft", "-f", "-")
				cmd.Stdin = strings.NewReader(rules.String())
				if out, err := cmd.CombinedOutput(); err != nil {
					return fmt.Errorf("%v: %s", err, out)
				}
				return nil
			})
			if err != nil {
				b.Fatalf("nft -f: %v", err)
			}
			for i := 0; i < b.N; i++ {
				p50, p99 := connectLatency(b, client, vipN(n-1), samples)
				b.ReportMetric(float64(p50.Nanoseconds())/1e3, "p50-µs")
				b.ReportMetric(float64(p99.Nanoseconds())/1e3, "p99-µs")
			}
		})
		b.Run(fmt.Sprintf("iptables/services=%d", n), func(b *testing.B) {
			client, server := bpftest.NetNS(b), bpftest.NetNS(b)
			p := netip.MustParsePrefix
			bpftest.Veth(b, client, "c", []netip.Prefix{p("10.203.0.1/24")}, server, "s", []netip.Prefix{p("10.203.0.2/24")})
			bpftest.Serve(b, server, "be", bpftest.BackendPort)
			bpftest.Route(b, client, netip.MustParsePrefix("0.0.0.0/0"), netip.MustParseAddr("10.203.0.2"))
			var rules strings.Builder
			rules.WriteString("*nat\n:KUBE-SERVICES - [0:0]\n")
			for i := 0; i < n; i++ {
				fmt.Fprintf(&rules, ":KUBE-SVC-%d - [0:0]\n:KUBE-SEP-%d - [0:0]\n", i, i)
			}
			rules.WriteString("-A OUTPUT -j KUBE-SERVICES\n")
			for i := 0; i < n; i++ {
				v := vipN(i)
				fmt.Fprintf(&rules, "-A KUBE-SERVICES -d %s/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-%d\n", v.Addr(), i)
				fmt.Fprintf(&rules, "-A KUBE-SVC-%d -j KUBE-SEP-%d\n", i, i)
				fmt.Fprintf(&rules, "-A KUBE-SEP-%d -p tcp -m tcp -j DNAT --to-destination 10.203.0.2:%d\n", i, bpftest.BackendPort)
			}
			rules.WriteString("COMMIT\n")
			err := bpftest.Do(client, func() error {
				cmd := exec.Command("iptables-restore")
				cmd.Stdin = strings.NewReader(rules.String())
				if out, err := cmd.CombinedOutput(); err != nil {
					return fmt.Errorf("%v: %s", err, out)
				}
				return nil
			})
			if err != nil {
				b.Fatalf("iptables-restore: %v", err)
			}
			for i := 0; i < b.N; i++ {
				p50, p99 := connectLatency(b, client, vipN(n-1), samples)
				b.ReportMetric(float64(p50.Nanoseconds())/1e3, "p50-µs")
				b.ReportMetric(float64(p99.Nanoseconds())/1e3, "p99-µs")
			}
		})
	}
}
