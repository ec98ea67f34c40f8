package tunnel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Configure makes the device's peer set equal to want and routes every
// peer's pod CIDRs through the device. Unchanged peers are not sent, so
// their sessions and counters survive; stale peers are removed. Calling it
// twice with the same want performs no writes.
//
// A peer with a NextPublicKey gets a second, standby entry for that key: no
// allowed IPs and no keepalive, so it carries nothing and starts nothing,
// but it answers the peer's handshake once the peer switches to the key.
// When that handshake completes, the device moves the peer's allowed IPs to
// the new key and drops the old one at once, without waiting for the mesh
// to report the switch (see the package documentation).
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
	seen := make(map[wgtypes.Key]bool, len(want))
	valid := make([]Peer, 0, len(want))
	for _, p := range want {
		if err := p.validate(); err != nil {
			errs = append(errs, fmt.Errorf("configure peer %s: %w", ShortKey(p.PublicKey), err))
			continue
		}
		if p.PublicKey == d.pub || p.NextPublicKey == d.pub {
			errs = append(errs, fmt.Errorf("configure peer %s: own public key", ShortKey(p.PublicKey)))
			continue
		}
		if seen[p.PublicKey] || (p.NextPublicKey != (wgtypes.Key{}) && seen[p.NextPublicKey]) {
			errs = append(errs, fmt.Errorf("configure peer %s: duplicate public key", ShortKey(p.PublicKey)))
			continue
		}
		seen[p.PublicKey] = true
		if p.NextPublicKey != (wgtypes.Key{}) {
			seen[p.NextPublicKey] = true
		}
		valid = append(valid, p)
	}
	d.want = valid
	return errors.Join(append(errs, d.applyLocked(wg)...)...)
}

// applyLocked makes the device match d.want, d.promoted deciding which of a
// peer's keys carries its traffic. Called with mu held.
func (d *Device) applyLocked(wg wgClient) []error {
	var errs []error
	desired := make(map[wgtypes.Key]Peer, len(d.want))
	names := make(map[wgtypes.Key]string, len(d.want))
	promoted := make(map[wgtypes.Key]bool)
	standby := make(map[wgtypes.Key]bool)
	for _, p := range d.want {
		next := p.NextPublicKey
		if next == (wgtypes.Key{}) && d.standby[p.PublicKey] && !d.promoted[p.PublicKey] {
			// The mesh reports the peer's switch before its handshake
			// reached this node. Until it does, the old key keeps the
			// traffic and the new one stands by, as before the switch:
			// moved now, this node's traffic would start a handshake
			// towards the new key crossing the peer's own (see onResponse).
			if old, ok := d.heldKey(p.Name, p.PublicKey); ok {
				p.PublicKey, p.NextPublicKey, next = old, p.PublicKey, p.PublicKey
			}
		}
		switch {
		case next == (wgtypes.Key{}):
			if d.promoted[p.PublicKey] && !d.live[p.PublicKey] {
				// The mesh already reports the peer's switch, but its new
				// session is not confirmed here yet: its keepalive stays
				// off until it is. Turned on now, it would make this side
				// start a handshake that crosses the peer's in flight; both
				// sides would end up responders waiting for each other, with
				// no new initiation allowed for 5 s (REKEY_TIMEOUT).
				promoted[p.PublicKey] = true
				p.quiet = true
			}
		case d.promoted[next]:
			// The peer switched: its next key carries its traffic.
			promoted[next] = true
			p.PublicKey, p.NextPublicKey = next, wgtypes.Key{}
			p.quiet = !d.live[next]
		default:
			standby[next] = true
			desired[next] = Peer{Name: p.Name + " (next)", PublicKey: next, Endpoint: p.Endpoint, standby: true}
			names[next] = p.Name + " (next)"
		}
		desired[p.PublicKey] = p
		names[p.PublicKey] = p.Name
	}
	live := make(map[wgtypes.Key]bool)
	for k := range d.live {
		if promoted[k] {
			live[k] = true
		}
	}
	d.promoted, d.standby, d.live = promoted, standby, live
	d.view.Store(&keyView{priv: d.priv, standby: standby})

	dev, err := wg.Device(d.cfg.Name)
	if err != nil {
		return append(errs, fmt.Errorf("configure device %s: read: %w", d.cfg.Name, err))
	}
	changes := peerDiff(dev.Peers, desired, d.cfg.PersistentKeepalive)
	var failed map[wgtypes.Key]bool
	if len(changes) > 0 {
		var perrs []error
		perrs, failed = d.applyPeers(wg, changes)
		errs = append(errs, perrs...)
		d.log.Debug("peers configured", "changes", len(changes), "peers", len(desired))
	}
	// What we acknowledge: next keys that the device holds.
	var prepared []wgtypes.Key
	for k := range desired {
		if (standby[k] || promoted[k]) && !failed[k] {
			prepared = append(prepared, k)
		}
	}
	slices.SortFunc(prepared, func(a, b wgtypes.Key) int { return bytes.Compare(a[:], b[:]) })
	if !slices.Equal(prepared, d.prepared) {
		d.prepared = prepared
		d.notifyKeysLocked()
	}
	d.wakeLocked()

	var routes []netip.Prefix
	for _, p := range desired {
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
	return errs
}

// heldKey returns the key that carried the traffic of the peer named name
// in the last apply, if it is not next. Called with mu held.
func (d *Device) heldKey(name string, next wgtypes.Key) (wgtypes.Key, bool) {
	if name == "" {
		return wgtypes.Key{}, false
	}
	for k, n := range d.names {
		if n == name && k != next {
			return k, true
		}
	}
	return wgtypes.Key{}, false
}

// PromotePoll is how often, while a peer's next key stands by, the device
// looks for the handshake that shows the peer switched to it. After a
// handshake message arrives (userspace devices see them), it looks every
// promoteFastPoll for promoteFastFor.
const PromotePoll = 10 * time.Millisecond

const (
	promoteFastPoll = time.Millisecond
	promoteFastFor  = 50 * time.Millisecond
)

// promoteLoop watches standby keys until ctx ends: when a peer completes a
// handshake with its next key, that key takes over the peer's allowed IPs
// and the old key is removed. Only the holder of the next private key can
// complete that handshake, so the switch needs no word from the mesh. The
// first packet of the peer's new session (its keepalive, with a persistent
// keepalive set) is what marks the handshake complete on this side; data
// right behind it is dropped until the switch, so the look is quick.
func (d *Device) promoteLoop(ctx context.Context) {
	var fastUntil time.Time
	for {
		d.mu.Lock()
		idle, changed := len(d.standby) == 0 && len(d.promoted) == len(d.live), d.changed
		d.mu.Unlock()
		if idle {
			select {
			case <-ctx.Done():
				return
			case <-changed:
			case <-d.handshakes:
			case r := <-d.promoteReqs:
				d.promoteNow(r)
			}
			continue
		}
		wait := PromotePoll
		if time.Now().Before(fastUntil) {
			wait = promoteFastPoll
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-d.handshakes:
			fastUntil = time.Now().Add(promoteFastFor)
		case r := <-d.promoteReqs:
			t.Stop()
			d.promoteNow(r)
			continue
		case <-t.C:
		}
		t.Stop()
		d.mu.Lock()
		if err := d.promoteLocked(); err != nil && !errors.Is(err, ErrClosed) && !errors.Is(err, ErrWedged) {
			d.log.Warn("promote next keys", "err", err)
		}
		d.mu.Unlock()
	}
}

// keyView is what onInitiation reads without mu: the private key and the
// peers' next keys on standby. Never modified once stored.
type keyView struct {
	priv wgtypes.Key
	// alt, while the device's key changes, is the other key an initiation
	// may be addressed to.
	alt     wgtypes.Key
	standby map[wgtypes.Key]bool
}

// promoteReq asks the promotion loop to promote key, closing done after.
type promoteReq struct {
	key  wgtypes.Key
	done chan struct{}
}

// promoteWait bounds how long a handshake response waits in the bind for
// the promotion of the key it answers. Sent unpromoted, it completes a
// session on the standby entry, which has no allowed IPs: the sender's
// first data packets are dropped until the polled promotion, and TCP
// backs off. Holding the response a little longer costs less; mu is held
// for tens of milliseconds at a time on a loaded machine (a key change, a
// Configure's device I/O). Longer holds cost more than they save: the
// sender's packets wait in its staged queue meanwhile, which drops the
// oldest past 128 (two runs of the rotation benchmark with 1 s gave 2.4
// and 9.1 s stalls, four with 250 ms 0.5–3.2 s). The wait blocks one of
// wireguard-go's handshake workers, holding no lock but the device's
// network read lock.
const promoteWait = 250 * time.Millisecond

// pendingTTL is how long an initiation from a standby key waits for its
// response (onResponse) before it is forgotten; wireguard-go answers at
// once or not at all.
const pendingTTL = 10 * time.Second

// pendingPromotion is a standby key whose initiation wireguard-go has not
// answered yet.
type pendingPromotion struct {
	key wgtypes.Key
	at  time.Time
}

// onInitiation runs in the bind's receive path for every handshake
// initiation, before wireguard-go sees it. If the initiation comes from a
// standby key (its sender proved it holds the key: see initiatorKey), the
// peer is switching: the initiation's sender index is noted, and the key
// is promoted when wireguard-go answers (onResponse). It never blocks.
func (d *Device) onInitiation(msg []byte) {
	v := d.view.Load()
	if v == nil || len(v.standby) == 0 {
		return
	}
	k, ok := initiatorKey(v.priv, msg)
	if !ok && v.alt != (wgtypes.Key{}) {
		k, ok = initiatorKey(v.alt, msg)
	}
	if !ok || !v.standby[k] {
		return
	}
	idx := [4]byte(msg[4:8]) // the initiator's sender index
	now := time.Now()
	d.pendingMu.Lock()
	defer d.pendingMu.Unlock()
	for i, p := range d.pending {
		if now.Sub(p.at) > pendingTTL {
			delete(d.pending, i)
		}
	}
	d.pending[idx] = pendingPromotion{key: k, at: now}
}

// onResponse runs in the bind's send path for every handshake response
// wireguard-go sends, before it leaves. A response to an initiation from a
// standby key promotes that key first (the allowed IPs move to it, the old
// entry goes): the sender can use the session only once it has the
// response, so none of its packets on the new session is dropped, and
// until the promotion this node's traffic keeps the old session, which the
// sender still receives. Promoted at the initiation instead, the new entry
// would carry this node's traffic before its session exists, and that
// traffic would start a handshake of this node's crossing the sender's:
// both would then wait as responders, with no new initiation allowed for
// 5 s (wireguard-go's REKEY_TIMEOUT). It waits for the promotion loop at
// most promoteWait, and never past Close.
func (d *Device) onResponse(msg []byte) {
	idx := [4]byte(msg[8:12]) // the receiver index: the initiator's sender index
	d.pendingMu.Lock()
	p, ok := d.pending[idx]
	delete(d.pending, idx)
	d.pendingMu.Unlock()
	if !ok {
		return
	}
	r := promoteReq{key: p.key, done: make(chan struct{})}
	start := time.Now()
	t := time.NewTimer(promoteWait)
	defer t.Stop()
	select {
	case d.promoteReqs <- r:
	case <-t.C:
		d.log.Debug("handshake response to a standby key sent unpromoted: promotion loop busy", "publicKey", ShortKey(p.key), "waited", time.Since(start))
		return
	case <-d.closing:
		return
	}
	select {
	case <-r.done:
		d.log.Debug("handshake response to a standby key: sender promoted first", "publicKey", ShortKey(p.key), "took", time.Since(start))
	case <-t.C:
		d.log.Debug("handshake response to a standby key sent unpromoted: promotion not done", "publicKey", ShortKey(p.key), "waited", time.Since(start))
	case <-d.closing:
	}
}

// promoteNow promotes r.key if it still stands by.
func (d *Device) promoteNow(r promoteReq) {
	defer close(r.done)
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.standby[r.key] {
		return
	}
	wg, err := d.client()
	if err != nil {
		return
	}
	d.promoted[r.key] = true
	d.log.Debug("peer switching to its next key", "publicKey", ShortKey(r.key))
	if errs := d.applyLocked(wg); len(errs) > 0 {
		d.log.Warn("promote next key", "err", errors.Join(errs...))
	}
}

// promoteLocked promotes standby keys that completed a handshake. Called
// with mu held.
func (d *Device) promoteLocked() error {
	if len(d.standby) == 0 && len(d.promoted) == len(d.live) {
		return nil
	}
	wg, err := d.client()
	if err != nil {
		return err
	}
	dev, err := wg.Device(d.cfg.Name)
	if err != nil {
		return fmt.Errorf("read %s: %w", d.cfg.Name, err)
	}
	var found bool
	for _, p := range dev.Peers {
		k := p.PublicKey
		if (d.standby[k] || (d.promoted[k] && !d.live[k])) && !p.LastHandshakeTime.IsZero() {
			d.promoted[k], d.live[k] = true, true
			found = true
			d.log.Info("peer switched to its next key", "publicKey", ShortKey(k))
		}
	}
	if !found {
		return nil
	}
	return errors.Join(d.applyLocked(wg)...)
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
// change is retried alone to name the peer at fault and apply the rest. It
// returns the errors and the keys whose change failed.
func (d *Device) applyPeers(wg wgClient, changes []wgtypes.PeerConfig) ([]error, map[wgtypes.Key]bool) {
	if err := wg.ConfigureDevice(d.cfg.Name, wgtypes.Config{Peers: changes}); err == nil {
		return nil, nil
	}
	var errs []error
	failed := make(map[wgtypes.Key]bool)
	for _, pc := range changes {
		if err := wg.ConfigureDevice(d.cfg.Name, wgtypes.Config{Peers: []wgtypes.PeerConfig{pc}}); err != nil {
			errs = append(errs, fmt.Errorf("configure peer %s: %w", ShortKey(pc.PublicKey), err))
			failed[pc.PublicKey] = true
		}
	}
	return errs, failed
}
