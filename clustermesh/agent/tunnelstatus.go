package agent

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/braidmesh/braid/clustermesh/status"
	"github.com/braidmesh/braid/tunnel"
)

// TunnelSampleInterval is how often the agent reads its WireGuard device
// for Snapshot's Tunnel: reading it is device I/O, which the status page
// must never wait for.
const TunnelSampleInterval = 5 * time.Second

// tunnelStatsReader is the part of *tunnel.Device the sampler reads.
type tunnelStatsReader interface {
	Stats() (tunnel.Stats, error)
}

// tunnelSampler turns successive device reads into a status.TunnelStatus,
// tracking per peer when its received bytes last grew. It is used by one
// goroutine.
type tunnelSampler struct {
	dev       tunnelStatsReader
	keepalive time.Duration
	overhead  int
	nodeIP    netip.Addr
	// underlay returns the name and MTU of the link holding an address;
	// nil means the agent's network namespace's (underlayLink).
	underlay func(netip.Addr) (string, int)
	// pathMTU returns the path MTU the kernel learned towards an address
	// (0: none); nil skips it (the device is in another namespace).
	pathMTU func(netip.Addr) int

	heard map[string]heardFrom // by peer name and key
	last  status.TunnelStatus
}

type heardFrom struct {
	rx int64
	at time.Time
}

func newTunnelSampler(dev tunnelStatsReader, cfg *tunnel.Config, nodeIP netip.Addr) *tunnelSampler {
	overhead := tunnel.Overhead4
	if cfg.UnderlayIPv6 {
		overhead = tunnel.Overhead6
	}
	return &tunnelSampler{dev: dev, keepalive: cfg.PersistentKeepalive, overhead: overhead, nodeIP: nodeIP,
		underlay: underlayLink, pathMTU: learnedPathMTU, heard: map[string]heardFrom{}}
}

// sample reads the device once at now and returns the status.
func (s *tunnelSampler) sample(now time.Time) status.TunnelStatus {
	st, err := s.dev.Stats()
	if err != nil {
		out := s.last
		out.Peers = slices.Clone(out.Peers)
		out.Error = err.Error()
		return out
	}
	out := status.TunnelStatus{
		Device: st.Name, ListenPort: st.ListenPort, MTU: st.MTU, Overhead: s.overhead,
		KeepaliveSeconds: s.keepalive.Seconds(), Strict: st.Strict, StrictDrops: st.StrictDrops, SampledAt: now,
	}
	if s.nodeIP.IsValid() && s.underlay != nil {
		out.UnderlayDevice, out.UnderlayMTU = s.underlay(s.nodeIP)
	}
	seen := make(map[string]bool, len(st.Peers))
	for _, p := range st.Peers {
		id := p.Name + "/" + p.PublicKey
		seen[id] = true
		h, ok := s.heard[id]
		if !ok || p.RxBytes != h.rx {
			// First sight counts as heard: silence is measured from when
			// the peer was configured.
			h = heardFrom{rx: p.RxBytes, at: now}
			s.heard[id] = h
		}
		tp := status.TunnelPeer{Name: p.Name, HandshakeAgeSeconds: -1, SilentSeconds: now.Sub(h.at).Seconds(),
			RxBytes: p.RxBytes, TxBytes: p.TxBytes}
		if p.Endpoint.IsValid() {
			tp.Endpoint = p.Endpoint.String()
			if s.pathMTU != nil {
				tp.PathMTU = s.pathMTU(p.Endpoint.Addr())
			}
		}
		if !p.LastHandshake.IsZero() {
			tp.HandshakeAgeSeconds = now.Sub(p.LastHandshake).Seconds()
		}
		out.Peers = append(out.Peers, tp)
	}
	for id := range s.heard {
		if !seen[id] {
			delete(s.heard, id)
		}
	}
	s.last = out
	return out
}

// underlayLink returns the name and MTU of the interface holding ip in the
// agent's network namespace; "" and 0 when none does.
func underlayLink(ip netip.Addr) (string, int) {
	ifs, err := net.Interfaces()
	if err != nil {
		return "", 0
	}
	for _, ifi := range ifs {
		addrs, err := ifi.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if got, ok := netip.AddrFromSlice(n.IP); ok && got.Unmap() == ip.Unmap() {
					return ifi.Name, ifi.MTU
				}
			}
		}
	}
	return "", 0
}

// learnedPathMTU returns the MTU of the route the kernel uses towards ip
// when it carries one: a path MTU learned from ICMP, or one configured on
// the route. Zero otherwise.
func learnedPathMTU(ip netip.Addr) int {
	routes, err := netlink.RouteGet(ip.AsSlice())
	if err != nil || len(routes) == 0 {
		return 0
	}
	return routes[0].MTU
}

// sampleTunnel samples dev every TunnelSampleInterval into the agent's
// snapshot until ctx is done.
func (a *Agent) sampleTunnel(ctx context.Context, dev tunnelStatsReader) {
	var nodeIP netip.Addr
	if len(a.cfg.NodeIPs) > 0 {
		nodeIP = a.cfg.NodeIPs[0]
	}
	s := newTunnelSampler(dev, a.cfg.Tunnel, nodeIP)
	if !sameNetns(a.cfg.Tunnel.Netns) {
		s.pathMTU = nil // the device's routes are not ours to read
	}
	t := time.NewTicker(TunnelSampleInterval)
	defer t.Stop()
	for {
		ts := s.sample(time.Now())
		a.mu.Lock()
		a.tunnel = &ts
		a.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
