// Command testloader plays the agent's datapath process in restart tests:
// it loads the datapath from a pin directory (reusing pinned maps), attaches
// or atomically replaces the socket-LB programs on a cgroup, writes one
// service, prints "ready" and waits for SIGTERM or SIGKILL. It never unpins,
// so the datapath outlives it, as it must outlive a restarting agent.
package main

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/braidmesh/braid/bpf"
)

func main() {
	pin := flag.String("pin", "", "pin directory")
	cgroup := flag.String("cgroup", "", "cgroup v2 directory to attach to")
	vip := flag.String("vip", "", "service frontend addr:port (TCP)")
	backends := flag.String("backends", "", "comma-separated backend addr:port list")
	flag.Parse()
	if err := run(*pin, *cgroup, *vip, *backends); err != nil {
		fmt.Fprintln(os.Stderr, "testloader:", err)
		os.Exit(1)
	}
}

func run(pin, cgroup, vip, backends string) error {
	objs, err := bpf.Load(bpf.Config{PinDir: pin, IPCacheEntries: 1024, ServiceEntries: 1024, BackendEntries: 1024})
	if err != nil {
		return err
	}
	defer objs.Close()
	if err := objs.AttachCgroup(cgroup); err != nil {
		return err
	}
	fe, err := netip.ParseAddrPort(vip)
	if err != nil {
		return err
	}
	var counts [bpf.NumBands]uint16
	for i, s := range strings.Split(backends, ",") {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return err
		}
		fam, w := bpf.AddrWords(ap.Addr())
		id := uint32(i + 1)
		if err := objs.Backends.Update(id, bpf.BackendValue{Addr: w, Port: bpf.Port(ap.Port()), Family: fam, Flags: bpf.BackendHealthy, Tier: uint8(bpf.TierCluster)}); err != nil {
			return err
		}
		if err := objs.Slots.Update(bpf.SlotKey{SvcId: 1, Slot: uint32(i)}, id); err != nil {
			return err
		}
		counts[0]++
	}
	if err := objs.Services.Update(bpf.ServiceKeyFor(fe, 6), bpf.ServiceValue{SvcId: 1, Count: counts}); err != nil {
		return err
	}
	fmt.Println("ready")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return nil
}
