package tunnel

import (
	"context"
	"errors"
	"fmt"
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

// rotateLoop rotates the key every RotationInterval until ctx ends.
func (d *Device) rotateLoop(ctx context.Context) {
	t := time.NewTicker(d.cfg.RotationInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := d.RotateKey(); err != nil {
				if errors.Is(err, ErrClosed) {
					return
				}
				d.log.Error("scheduled key rotation", "err", err)
			}
		}
	}
}
