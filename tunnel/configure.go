package tunnel

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Configure makes the device's peer set equal to want and routes every
// peer's pod CIDRs through the device. Unchanged peers are not sent, so
// their sessions and counters survive; stale peers are removed. Calling it
// twice with the same want performs no writes.
//
// A peer that fails validation or that the device rejects is reported as
// "configure peer KEYPREFIX: ..." (errors.Join for several); the other
// peers are still applied. A peer whose key is the device's own is rejected.
func (d *Device) Configure(want []Peer) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	wg, err := d.client()
	if err != nil {
		return err
	}

	var errs []error
	desired := make(map[wgtypes.Key]Peer, len(want))
	for _, p := range want {
		if err := p.validate(); err != nil {
			errs = append(errs, fmt.Errorf("configure peer %s: %w", ShortKey(p.PublicKey), err))
			continue
		}
		if p.PublicKey == d.pub {
			errs = append(errs, fmt.Errorf("configure peer %s: own public key", ShortKey(p.PublicKey)))
			continue
		}
		if _, dup := desired[p.PublicKey]; dup {
			errs = append(errs, fmt.Errorf("configure peer %s: duplicate public key", ShortKey(p.PublicKey)))
			continue
		}
		desired[p.PublicKey] = p
	}

	dev, err := wg.Device(d.cfg.Name)
	if err != nil {
		return fmt.Errorf("configure device %s: read: %w", d.cfg.Name, err)
	}
	changes := peerDiff(dev.Peers, desired, d.cfg.PersistentKeepalive)
	if len(changes) > 0 {
		errs = append(errs, d.applyPeers(wg, changes)...)
		d.log.Debug("peers configured", "changes", len(changes), "peers", len(desired))
	}

	names := make(map[wgtypes.Key]string, len(desired))
	var routes []netip.Prefix
	for k, p := range desired {
		names[k] = p.Name
		routes = append(routes, p.PodCIDRs...)
	}
	routes = normPrefixes(routes)
	d.namesMu.Lock()
	if keyChanged(d.names, names) {
		d.peerKeyChanged = time.Now()
	}
	d.names = names
	d.namesMu.Unlock()

	// Guard new remote CIDRs before routing them, so a route never exists
	// without its strict rule.
	if d.strict != nil {
		if err := d.strict.guard(routes); err != nil {
			errs = append(errs, err)
		}
	}
	if err := d.syncRoutes(routes); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// keyChanged reports whether a named peer in next has a key it did not
// have in prev: that peer rotated its key.
func keyChanged(prev, next map[wgtypes.Key]string) bool {
	had := make(map[string]bool, len(prev))
	for _, name := range prev {
		if name != "" {
			had[name] = true
		}
	}
	for k, name := range next {
		if _, same := prev[k]; !same && had[name] {
			return true
		}
	}
	return false
}

// applyPeers sends changes in one request; if the device rejects it, each
// change is retried alone to name the peer at fault and apply the rest.
func (d *Device) applyPeers(wg wgClient, changes []wgtypes.PeerConfig) []error {
	if err := wg.ConfigureDevice(d.cfg.Name, wgtypes.Config{Peers: changes}); err == nil {
		return nil
	}
	var errs []error
	for _, pc := range changes {
		if err := wg.ConfigureDevice(d.cfg.Name, wgtypes.Config{Peers: []wgtypes.PeerConfig{pc}}); err != nil {
			errs = append(errs, fmt.Errorf("configure peer %s: %w", ShortKey(pc.PublicKey), err))
		}
	}
	return errs
}
