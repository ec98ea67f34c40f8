package tunnel

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Stats is a snapshot of the device for status output. Keys appear only in
// short form (ShortKey).
type Stats struct {
	Name        string
	Kernel      bool
	ListenPort  int
	PublicKey   string
	MTU         int
	PeerCount   int
	Peers       []PeerStats // sorted by Name, then PublicKey
	Strict      bool
	StrictDrops uint64 // packets dropped by strict mode since Open
}

// PeerStats describes one peer.
type PeerStats struct {
	Name          string
	PublicKey     string
	Endpoint      netip.AddrPort
	LastHandshake time.Time     // zero if none yet
	HandshakeAge  time.Duration // time since LastHandshake; zero if none yet
	RxBytes       int64
	TxBytes       int64
}

// Stats reads the device. It does device I/O and waits for a Configure or
// RotateKey in progress: call it from a collector, not a request handler.
func (d *Device) Stats() (Stats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	wg, err := d.client()
	if err != nil {
		return Stats{}, err
	}
	dev, err := wg.Device(d.cfg.Name)
	if err != nil {
		return Stats{}, fmt.Errorf("stats of %s: %w", d.cfg.Name, err)
	}
	d.namesMu.Lock()
	names := d.names
	d.namesMu.Unlock()

	now := time.Now()
	s := Stats{
		Name:       d.cfg.Name,
		Kernel:     d.kernel,
		ListenPort: dev.ListenPort,
		PublicKey:  ShortKey(dev.PublicKey),
		MTU:        d.cfg.MTU(),
		PeerCount:  len(dev.Peers),
		Strict:     d.strict != nil,
	}
	for _, p := range dev.Peers {
		ps := PeerStats{
			Name:          names[p.PublicKey],
			PublicKey:     ShortKey(p.PublicKey),
			Endpoint:      addrPortOf(p.Endpoint),
			LastHandshake: p.LastHandshakeTime,
			RxBytes:       p.ReceiveBytes,
			TxBytes:       p.TransmitBytes,
		}
		if !p.LastHandshakeTime.IsZero() {
			ps.HandshakeAge = now.Sub(p.LastHandshakeTime)
		}
		s.Peers = append(s.Peers, ps)
	}
	slices.SortFunc(s.Peers, func(a, b PeerStats) int {
		return cmp.Or(strings.Compare(a.Name, b.Name), strings.Compare(a.PublicKey, b.PublicKey))
	})
	if d.strict != nil {
		if s.StrictDrops, err = d.strict.dropped(); err != nil {
			return s, err
		}
	}
	return s, nil
}

// Dropped returns the number of packets strict mode has dropped since Open;
// zero without strict mode.
func (d *Device) Dropped() (uint64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, err := d.client(); err != nil {
		return 0, err
	}
	if d.strict == nil {
		return 0, nil
	}
	return d.strict.dropped()
}
