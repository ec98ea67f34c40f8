package tunnel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Peer is one remote node as the mesh describes it.
type Peer struct {
	// Name identifies the node in logs and Stats; it is not sent to the device.
	Name      string
	PublicKey wgtypes.Key
	// Endpoint is the node's IP and WireGuard port.
	Endpoint netip.AddrPort
	// PodCIDRs are the node's pod CIDRs; Configure routes them through the device.
	PodCIDRs []netip.Prefix
	// NextPublicKey is the key the node announced it will switch to (phase
	// one of its handover); zero if none. Configure installs it on standby.
	NextPublicKey wgtypes.Key
	// Prepared are the next keys of other nodes that this node has
	// installed, as it published them: when they include our Keys().Next,
	// this peer is ready for our switch.
	Prepared []wgtypes.Key

	// standby marks a next key's entry: no allowed IPs, no keepalive.
	standby bool
	// quiet marks a next key that took over the allowed IPs on its
	// sender's initiation, before the session exists: no keepalive yet,
	// whose turning on would start a handshake of our own that crosses
	// the sender's.
	quiet bool
}

// AllowedIPs returns the prefixes the peer may send from and receives:
// its pod CIDRs and its node IP as a host prefix, sorted and deduplicated.
func (p Peer) AllowedIPs() []netip.Prefix {
	out := make([]netip.Prefix, 0, len(p.PodCIDRs)+1)
	for _, c := range p.PodCIDRs {
		out = append(out, c.Masked())
	}
	if a := p.Endpoint.Addr().Unmap(); a.IsValid() {
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return normPrefixes(out)
}

// allowedIPs is what the device entry gets: none for a standby key.
func (p Peer) allowedIPs() []netip.Prefix {
	if p.standby {
		return nil
	}
	return p.AllowedIPs()
}

// keepalive is the entry's persistent keepalive: none for a standby key,
// which must not start handshakes towards a key not yet in use.
func (p Peer) keepalive(ka time.Duration) time.Duration {
	if p.standby || p.quiet {
		return 0
	}
	return ka
}

func (p Peer) validate() error {
	if p.PublicKey == (wgtypes.Key{}) {
		return errors.New("zero public key")
	}
	if p.NextPublicKey == p.PublicKey {
		return errors.New("next public key equals the current one")
	}
	if !p.Endpoint.IsValid() || p.Endpoint.Port() == 0 {
		return fmt.Errorf("invalid endpoint %v", p.Endpoint)
	}
	for _, c := range p.PodCIDRs {
		if !c.IsValid() {
			return fmt.Errorf("invalid pod cidr %v", c)
		}
	}
	return nil
}

// normPrefixes returns ps masked, unmapped, sorted and without duplicates.
func normPrefixes(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		if !p.IsValid() {
			continue
		}
		a := p.Addr()
		bits := p.Bits()
		if a.Is4In6() {
			a = a.Unmap()
			bits -= 96
		}
		out = append(out, netip.PrefixFrom(a, bits).Masked())
	}
	slices.SortFunc(out, comparePrefix)
	return slices.Compact(out)
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

func toIPNets(ps []netip.Prefix) []net.IPNet {
	out := make([]net.IPNet, len(ps))
	for i, p := range ps {
		out[i] = net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
	}
	return out
}

func fromIPNets(ns []net.IPNet) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ns))
	for _, n := range ns {
		a, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			continue
		}
		ones, _ := n.Mask.Size()
		if a.Is4In6() && len(n.Mask) == net.IPv4len {
			a = a.Unmap()
		}
		out = append(out, netip.PrefixFrom(a, ones))
	}
	return normPrefixes(out)
}

func addrPortOf(u *net.UDPAddr) netip.AddrPort {
	if u == nil {
		return netip.AddrPort{}
	}
	ap := u.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// peerDiff computes the peer configs that make have equal to want: removals
// first, then additions and changes. Unchanged peers are absent, so a
// second call with the same want yields nothing.
func peerDiff(have []wgtypes.Peer, want map[wgtypes.Key]Peer, keepalive time.Duration) []wgtypes.PeerConfig {
	var removes, upserts []wgtypes.PeerConfig
	seen := make(map[wgtypes.Key]bool, len(have))
	for _, h := range have {
		seen[h.PublicKey] = true
		w, ok := want[h.PublicKey]
		if !ok {
			removes = append(removes, wgtypes.PeerConfig{PublicKey: h.PublicKey, Remove: true})
			continue
		}
		pc := wgtypes.PeerConfig{PublicKey: h.PublicKey, UpdateOnly: true}
		changed := false
		if addrPortOf(h.Endpoint) != unmapAP(w.Endpoint) {
			pc.Endpoint = net.UDPAddrFromAddrPort(unmapAP(w.Endpoint))
			changed = true
		}
		if wa := w.allowedIPs(); !slices.Equal(fromIPNets(h.AllowedIPs), wa) {
			pc.ReplaceAllowedIPs = true
			pc.AllowedIPs = toIPNets(wa)
			changed = true
		}
		if ka := w.keepalive(keepalive); h.PersistentKeepaliveInterval != ka {
			pc.PersistentKeepaliveInterval = &ka
			changed = true
		}
		if changed {
			upserts = append(upserts, pc)
		}
	}
	for _, k := range sortedKeys(want) {
		if seen[k] {
			continue
		}
		w := want[k]
		var ka *time.Duration
		if v := w.keepalive(keepalive); v != 0 {
			ka = &v
		}
		upserts = append(upserts, wgtypes.PeerConfig{
			PublicKey:                   k,
			PersistentKeepaliveInterval: ka,
			Endpoint:                    net.UDPAddrFromAddrPort(unmapAP(w.Endpoint)),
			ReplaceAllowedIPs:           true,
			AllowedIPs:                  toIPNets(w.allowedIPs()),
		})
	}
	return append(removes, upserts...)
}

func unmapAP(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func sortedKeys(m map[wgtypes.Key]Peer) []wgtypes.Key {
	keys := make([]wgtypes.Key, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b wgtypes.Key) int {
		return slices.Compare(a[:], b[:])
	})
	return keys
}
