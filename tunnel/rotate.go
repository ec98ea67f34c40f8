package tunnel

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// RotateKey replaces the node's private key: the device switches to the new
// key, the key file is replaced, and the new public key is returned and
// offered on KeyChanges. Sessions with peers end; they resume once each
// peer has been configured with the new public key (the caller publishes
// it; remote nodes pass it to their Configure), and TCP retransmits what
// was lost meanwhile. If the key cannot be saved, the device returns to the
// old key.
func (d *Device) RotateKey() (wgtypes.Key, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	wg, err := d.client()
	if err != nil {
		return wgtypes.Key{}, err
	}
	priv, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("rotate key: %w", err)
	}
	if err := wg.ConfigureDevice(d.cfg.Name, wgtypes.Config{PrivateKey: &priv}); err != nil {
		return wgtypes.Key{}, fmt.Errorf("rotate key: configure device: %w", err)
	}
	if err := saveKey(d.keyPath, priv); err != nil {
		old := d.priv
		if rerr := wg.ConfigureDevice(d.cfg.Name, wgtypes.Config{PrivateKey: &old}); rerr != nil {
			err = errors.Join(err, fmt.Errorf("restore old key: %w", rerr))
		}
		return wgtypes.Key{}, fmt.Errorf("rotate key: %w", err)
	}
	old := d.pub
	d.priv, d.pub = priv, priv.PublicKey()
	// Latest wins: we are the only sender and hold mu, so after draining
	// there is room.
	select {
	case <-d.keyChanges:
	default:
	}
	d.keyChanges <- d.pub
	d.log.Info("key rotated", "oldPublicKey", ShortKey(old), "publicKey", ShortKey(d.pub))
	return d.pub, nil
}

// RotationSettle is how long after learning a peer's new key a scheduled
// rotation waits: the peer's key is still reaching the rest of the mesh,
// and a rotation of our own now would cross it, so that each side's
// handshake reaches a node that does not yet know the other's key.
const RotationSettle = 2 * time.Second

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
// ctx ends, deferring a rotation while a peer's key change settles.
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
		if _, err := d.RotateKey(); err != nil {
			if errors.Is(err, ErrClosed) {
				return
			}
			d.log.Error("scheduled key rotation", "err", err)
		}
	}
}
