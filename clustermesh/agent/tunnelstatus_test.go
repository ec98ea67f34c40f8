package agent

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/braidmesh/braid/tunnel"
)

type statsSeq struct {
	stats tunnel.Stats
	err   error
}

func (s *statsSeq) Stats() (tunnel.Stats, error) { return s.stats, s.err }

func TestTunnelSamplerMeasuresSilenceFromTheLastReceivedByte(t *testing.T) {
	dev := &statsSeq{}
	s := newTunnelSampler(dev, &tunnel.Config{PersistentKeepalive: 25 * time.Second}, netip.MustParseAddr("10.0.0.1"))
	s.underlay = func(netip.Addr) (string, int) { return "eth0", 1500 }
	s.pathMTU = func(a netip.Addr) int {
		if a == netip.MustParseAddr("10.0.0.2") {
			return 1400
		}
		return 0
	}
	t0 := time.Unix(1000, 0)
	peer := func(rx int64, hs time.Time) tunnel.PeerStats {
		return tunnel.PeerStats{Name: "west/w0", PublicKey: "abc", Endpoint: netip.MustParseAddrPort("10.0.0.2:51820"), RxBytes: rx, LastHandshake: hs}
	}
	dev.stats = tunnel.Stats{Name: "wg0", ListenPort: 51820, MTU: 1440, Strict: true, StrictDrops: 3, Peers: []tunnel.PeerStats{peer(100, t0)}}

	got := s.sample(t0)
	if got.UnderlayDevice != "eth0" || got.UnderlayMTU != 1500 || got.Overhead != tunnel.Overhead4 || got.KeepaliveSeconds != 25 || got.StrictDrops != 3 {
		t.Fatalf("device fields: %+v", got)
	}
	if p := got.Peers[0]; p.SilentSeconds != 0 || p.HandshakeAgeSeconds != 0 || p.Endpoint != "10.0.0.2:51820" || p.PathMTU != 1400 {
		t.Fatalf("first sample: %+v", p)
	}
	// Nothing received for 40 s: silent 40 s.
	if p := s.sample(t0.Add(40 * time.Second)).Peers[0]; p.SilentSeconds != 40 || p.HandshakeAgeSeconds != 40 {
		t.Fatalf("after 40 s without bytes: %+v", p)
	}
	// Bytes arrive: silence resets.
	dev.stats.Peers = []tunnel.PeerStats{peer(148, t0)}
	if p := s.sample(t0.Add(45 * time.Second)).Peers[0]; p.SilentSeconds != 0 {
		t.Fatalf("after bytes arrived: %+v", p)
	}
	// A rotated key is a new peer, heard from when first seen.
	dev.stats.Peers = []tunnel.PeerStats{{Name: "west/w0", PublicKey: "def"}}
	if p := s.sample(t0.Add(50 * time.Second)).Peers[0]; p.SilentSeconds != 0 || p.HandshakeAgeSeconds != -1 {
		t.Fatalf("rotated key: %+v", p)
	}
	if len(s.heard) != 1 {
		t.Fatalf("the departed key is still tracked: %v", s.heard)
	}
	// A failed read keeps the last sample and says why.
	dev.err = errors.New("device gone")
	if got := s.sample(t0.Add(55 * time.Second)); got.Error != "device gone" || len(got.Peers) != 1 {
		t.Fatalf("failed read: %+v", got)
	}
}
