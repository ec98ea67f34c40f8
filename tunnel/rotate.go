package tunnel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// KeyState is what a node publishes about its keys for the two-phase
// handover (see the package documentation).
type KeyState struct {
	// Current is the public key the device uses.
	Current wgtypes.Key
	// Next is the public key the device will switch to; zero when no
	// handover is pending.
	Next wgtypes.Key
	// Prepared are the peers' next public keys this device has installed
	// (its acknowledgements), sorted.
	Prepared []wgtypes.Key
}

// Keys returns the device's key state, for the caller to publish.
func (d *Device) Keys() KeyState {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := KeyState{Current: d.pub, Prepared: slices.Clone(d.prepared)}
	if d.next != (wgtypes.Key{}) {
		s.Next = d.next.PublicKey()
	}
	return s
}

// RotateKey replaces the node's private key at once (PrepareKey then
// CommitKey, with no wait for peers): sessions with peers stop until each
// peer is configured with the new public key. In a mesh, use Handover. If
// the key cannot be saved, the device returns to the old key.
func (d *Device) RotateKey() (wgtypes.Key, error) {
	if _, err := d.PrepareKey(); err != nil {
		return wgtypes.Key{}, err
	}
	return d.CommitKey()
}

// Handover rotates the key in two phases: it prepares the next key (phase
// one; the caller publishes Keys().Next, and peers install it beside the
// current one and acknowledge it in their Peer.Prepared), waits until
// HandoverReady, then switches (phase two). If ctx ends first, the key is
// not switched and ctx's error is returned; the next key stays pending, and
// a later Handover or CommitKey finishes the rotation.
func (d *Device) Handover(ctx context.Context) (wgtypes.Key, error) {
	if _, err := d.PrepareKey(); err != nil {
		return wgtypes.Key{}, err
	}
	for {
		d.mu.Lock()
		if d.handoverReadyLocked() {
			// Decide and switch under one hold of mu, so no Configure
			// (a peer's handover becoming known) slips in between.
			defer d.mu.Unlock()
			return d.commitLocked()
		}
		changed := d.changed
		d.mu.Unlock()
		select {
		case <-ctx.Done():
			return wgtypes.Key{}, fmt.Errorf("key handover: %w", ctx.Err())
		case <-changed:
		}
	}
}

// HandoverReady reports whether a pending next key may be switched to now:
// every peer passed to the last Configure lists it in Peer.Prepared, and no
// peer whose current public key sorts before ours has a handover of its
// own in flight (one not yet completed on this device). Without a pending
// key it reports false.
func (d *Device) HandoverReady() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.handoverReadyLocked()
}

func (d *Device) handoverReadyLocked() bool {
	if d.next == (wgtypes.Key{}) || d.closed {
		return false
	}
	return handoverReady(d.pub, d.next.PublicKey(), d.want, d.promoted)
}

// handoverReady is HandoverReady's rule for a node whose current public
// key is pub, pending next, given its peers and the next keys of peers
// whose handover completed here (promoted).
func handoverReady(pub, next wgtypes.Key, peers []Peer, promoted map[wgtypes.Key]bool) bool {
	for _, p := range peers {
		if !slices.Contains(p.Prepared, next) {
			return false // p could not answer our new key yet
		}
		if p.NextPublicKey != (wgtypes.Key{}) && !promoted[p.NextPublicKey] && keyLess(p.PublicKey, pub) {
			return false // p goes first: switching now would cross its switch
		}
	}
	return true
}

func keyLess(a, b wgtypes.Key) bool { return bytes.Compare(a[:], b[:]) < 0 }

// PrepareKey generates the next private key, saves it (file
// NextKeyFileName, so a restart resumes the handover) and offers the change
// on KeyChanges. If a next key is already pending it returns it unchanged.
// It returns the next public key.
//
// The key file is written without holding mu: on a busy disk its fsync takes
// up to a hundred milliseconds, and mu also serves the promotion of a
// peer's next key when its handshake arrives (onInitiation), which must
// not wait that long.
func (d *Device) PrepareKey() (wgtypes.Key, error) {
	d.prepareMu.Lock()
	defer d.prepareMu.Unlock()
	d.mu.Lock()
	if _, err := d.client(); err != nil {
		d.mu.Unlock()
		return wgtypes.Key{}, err
	}
	if d.next != (wgtypes.Key{}) {
		pub := d.next.PublicKey()
		d.mu.Unlock()
		return pub, nil
	}
	d.mu.Unlock()
	priv, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("prepare key: %w", err)
	}
	saving := time.Now()
	if err := saveKey(d.nextKeyPath, priv); err != nil {
		return wgtypes.Key{}, fmt.Errorf("prepare key: %w", err)
	}
	d.log.Debug("next key saved", "took", time.Since(saving))
	d.mu.Lock()
	defer d.mu.Unlock()
	// Only PrepareKey sets next, and prepareMu serializes it: next is still
	// zero. A Close meanwhile leaves the file, which a restart resumes.
	if _, err := d.client(); err != nil {
		return wgtypes.Key{}, err
	}
	d.next = priv
	d.notifyKeysLocked()
	d.log.Info("next key prepared", "publicKey", ShortKey(d.pub), "nextPublicKey", ShortKey(priv.PublicKey()))
	return priv.PublicKey(), nil
}

// CommitKey switches the device to the pending next key (phase two of the
// handover), replaces the key file, and offers the new public key on
// KeyChanges. Sessions with peers that have not installed the key stop
// until they do. It fails if no key is pending. If the key cannot be
// saved, the device returns to the old key and the next key stays pending.
func (d *Device) CommitKey() (wgtypes.Key, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.commitLocked()
}

func (d *Device) commitLocked() (wgtypes.Key, error) {
	wg, err := d.client()
	if err != nil {
		return wgtypes.Key{}, err
	}
	priv := d.next
	if priv == (wgtypes.Key{}) {
		return wgtypes.Key{}, errors.New("commit key: no next key prepared")
	}
	// While wireguard-go changes its key, an initiation may be addressed to
	// either key: the bind recognizes a switched peer's with both
	// (onInitiation), and with the new one as soon as it is in place.
	// Recognized with the old key only, an initiation to the new one would
	// complete on a standby entry without promotion, and the peer's first
	// data would be dropped.
	old := d.view.Load()
	d.view.Store(&keyView{priv: d.priv, alt: priv, standby: d.standby})
	if err := d.setPrivateKey(wg, priv); err != nil {
		d.view.Store(old)
		return wgtypes.Key{}, fmt.Errorf("commit key: %w", err)
	}
	d.view.Store(&keyView{priv: priv, standby: d.standby})
	if err := saveKey(d.keyPath, priv); err != nil {
		if rerr := d.setPrivateKey(wg, d.priv); rerr != nil {
			err = errors.Join(err, fmt.Errorf("restore old key: %w", rerr))
		}
		d.view.Store(old)
		return wgtypes.Key{}, fmt.Errorf("commit key: %w", err)
	}
	if err := os.Remove(d.nextKeyPath); err != nil && !os.IsNotExist(err) {
		d.log.Warn("remove next key file", "err", err)
	}
	oldPub := d.pub
	d.priv, d.pub, d.next = priv, priv.PublicKey(), wgtypes.Key{}
	if err := d.kickPeersLocked(wg); err != nil {
		d.log.Warn("start sessions after key change", "err", err)
	}
	d.notifyKeysLocked()
	d.log.Info("key rotated", "oldPublicKey", ShortKey(oldPub), "publicKey", ShortKey(d.pub))
	return d.pub, nil
}

// kickPeersLocked makes the device send a keepalive to every peer now, so
// that each new session starts with a keepalive rather than with data:
// the peer marks its standby key as switched (and moves the allowed IPs to
// it) on the first packet of the session, and drops a data packet that
// arrives before. Without it, a TCP stream in retransmission backoff sends
// one segment per timeout, each the first packet after the latest key
// change, each dropped: the stall doubles with every rotation. wireguard-go
// and the kernel send a keepalive when a peer's persistent keepalive is
// turned on; so it is turned off, on and back to its configured value.
// Called with mu held.
func (d *Device) kickPeersLocked(wg wgClient) error {
	off, on, want := time.Duration(0), time.Second, d.cfg.PersistentKeepalive
	var pcs []wgtypes.PeerConfig
	for _, p := range d.want {
		k := p.PublicKey
		if p.NextPublicKey != (wgtypes.Key{}) && d.promoted[p.NextPublicKey] {
			k = p.NextPublicKey
		}
		pcs = append(pcs,
			wgtypes.PeerConfig{PublicKey: k, UpdateOnly: true, PersistentKeepaliveInterval: &off},
			wgtypes.PeerConfig{PublicKey: k, UpdateOnly: true, PersistentKeepaliveInterval: &on},
			wgtypes.PeerConfig{PublicKey: k, UpdateOnly: true, PersistentKeepaliveInterval: &want})
	}
	if len(pcs) == 0 {
		return nil
	}
	return wg.ConfigureDevice(d.cfg.Name, wgtypes.Config{Peers: pcs})
}

// notifyKeysLocked offers the current public key on KeyChanges (latest
// wins) and wakes Handover waiters. Called with mu held.
func (d *Device) notifyKeysLocked() {
	// We are the only sender and hold mu, so after draining there is room.
	select {
	case <-d.keyChanges:
	default:
	}
	d.keyChanges <- d.pub
	d.wakeLocked()
}

// wakeLocked wakes everything waiting for the device's peers or keys to
// change (Handover). Called with mu held.
func (d *Device) wakeLocked() {
	close(d.changed)
	d.changed = make(chan struct{})
}

// DefaultSetKeyTimeout bounds a private key change in the device.
const DefaultSetKeyTimeout = 30 * time.Second

// ErrWedged is returned by every method of a Device whose WireGuard
// implementation stopped answering while its private key changed.
var ErrWedged = errors.New("tunnel device wedged")

// setPrivateKey sets the device's private key, waiting at most
// setKeyTimeout. wireguard-go's SetPrivateKey takes the device's identity
// lock and then each peer's handshake lock (shared), while a handshake
// response being consumed at the same moment (ConsumeMessageResponse)
// holds its peer's handshake lock (shared) and waits for the identity lock;
// with a third goroutine waiting to write that handshake (a new
// initiation, a keypair expiry), sync.RWMutex admits no new reader, and the
// three wait on each other for ever: the device answers nothing again, not
// even Close. Crossing key rotations made that coincidence show up about
// once in three runs of 2 × 50 rotations. A userspace device therefore
// changes its key while its bind holds handshake responses back
// (handshakeBind.quiesce). The bound stays as the guard for what that
// cannot rule out (a response queued longer than responseQuiet on a
// starved machine): past it the Device is marked wedged, and every later
// call fails with ErrWedged instead of queueing behind the lock. Called
// with mu held.
func (d *Device) setPrivateKey(wg wgClient, priv wgtypes.Key) error {
	done := make(chan error, 1)
	set := func() { done <- wg.ConfigureDevice(d.cfg.Name, wgtypes.Config{PrivateKey: &priv}) }
	if hb, ok := d.bind.(*handshakeBind); ok {
		go hb.quiesce(set)
	} else {
		go set()
	}
	timeout := d.setKeyTimeout
	if timeout == 0 {
		timeout = DefaultSetKeyTimeout
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("configure device: %w", err)
		}
		return nil
	case <-t.C:
		d.wedged = fmt.Errorf("%w: %s did not apply a new private key within %v (wireguard-go deadlocked between the key change and a handshake in flight); restart the agent to recreate the device", ErrWedged, d.cfg.Name, timeout)
		d.log.Error("tunnel device wedged", "err", d.wedged)
		return d.wedged
	}
}

// RotationSettle is how long after learning a peer's new key a scheduled
// rotation waits: the peer's key is still reaching the rest of the mesh,
// and a rotation of our own now would cross it, so that each side's
// handshake reaches a node that does not yet know the other's key.
const RotationSettle = 2 * time.Second

// DefaultHandoverTimeout is how long a scheduled rotation waits for its
// peers to acknowledge the next key when Config.HandoverTimeout is zero.
const DefaultHandoverTimeout = time.Minute

// rotationJitter spreads scheduled rotations over ±10 % of the interval,
// so nodes started together do not rotate in lockstep (crossing changes).
const rotationJitter = 0.1

// jittered returns interval scaled by a factor in [1-rotationJitter,
// 1+rotationJitter], r in [0, 1) choosing where.
func jittered(interval time.Duration, r float64) time.Duration {
	return time.Duration(float64(interval) * (1 - rotationJitter + 2*rotationJitter*r))
}

// settleWait returns how much longer a scheduled rotation must wait when
// a peer's key last changed at changed (zero: never).
func settleWait(now, changed time.Time) time.Duration {
	if changed.IsZero() {
		return 0
	}
	return max(0, RotationSettle-now.Sub(changed))
}

// rotateLoop rotates the key about every RotationInterval (jittered) until
// ctx ends, deferring a rotation while a peer's key change settles. Each
// rotation is a Handover; peers that have not acknowledged the next key
// within HandoverTimeout (down, partitioned) do not hold it back for ever:
// the key is switched anyway, and they resume once they learn it.
func (d *Device) rotateLoop(ctx context.Context) {
	sleep := func(dur time.Duration) bool {
		t := time.NewTimer(dur)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}
	timeout := d.cfg.HandoverTimeout
	if timeout == 0 {
		timeout = DefaultHandoverTimeout
	}
	for {
		if !sleep(jittered(d.cfg.RotationInterval, rand.Float64())) {
			return
		}
		for {
			d.mu.Lock()
			wait := settleWait(time.Now(), d.peerKeyChanged)
			d.mu.Unlock()
			if wait == 0 {
				break
			}
			if !sleep(wait) {
				return
			}
		}
		hctx, cancel := context.WithTimeout(ctx, timeout)
		_, err := d.Handover(hctx)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			d.log.Warn("peers did not acknowledge the next key in time; switching anyway", "timeout", timeout)
			_, err = d.CommitKey()
		}
		switch {
		case err == nil:
		case errors.Is(err, ErrClosed), ctx.Err() != nil:
			return
		default:
			d.log.Error("scheduled key rotation", "err", err)
		}
	}
}
