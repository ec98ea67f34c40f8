package tunnel

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/braidmesh/braid/internal/atomicfile"
)

// KeyFileName is the name of the private key file inside Config.StateDir.
const KeyFileName = "wireguard.key"

// NextKeyFileName holds, inside Config.StateDir, the next private key while
// a handover is pending (PrepareKey to CommitKey).
const NextKeyFileName = "wireguard.next.key"

// loadKeyIfExists reads a key file; a missing file is the zero key.
func loadKeyIfExists(path string) (wgtypes.Key, error) {
	if _, err := os.Stat(path); os.IsNotExist(err) {
		return wgtypes.Key{}, nil
	}
	return loadOrCreateKey(path)
}

// loadOrCreateKey reads the private key from path, creating it with a fresh
// key on first use. The file holds the base64 key and is mode 0600; a looser
// mode found on disk is tightened.
func loadOrCreateKey(path string) (wgtypes.Key, error) {
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		k, err := wgtypes.ParseKey(string(bytes.TrimSpace(b)))
		if err != nil {
			// Do not wrap the parse error: it may quote the file's content.
			return wgtypes.Key{}, fmt.Errorf("read private key %s: malformed key", path)
		}
		if err := os.Chmod(path, 0o600); err != nil {
			return wgtypes.Key{}, fmt.Errorf("read private key %s: %w", path, err)
		}
		return k, nil
	case os.IsNotExist(err):
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			return wgtypes.Key{}, fmt.Errorf("generate private key: %w", err)
		}
		if err := saveKey(path, k); err != nil {
			return wgtypes.Key{}, err
		}
		return k, nil
	default:
		return wgtypes.Key{}, fmt.Errorf("read private key %s: %w", path, err)
	}
}

// saveKey replaces the key file atomically: a crash leaves either the old or
// the new key, never a torn file, and the key is never readable by others.
func saveKey(path string, k wgtypes.Key) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("save private key: %w", err)
	}
	if err := atomicfile.WriteFile(path, []byte(k.String()+"\n"), 0o600); err != nil {
		return fmt.Errorf("save private key: %w", err)
	}
	return nil
}

// ShortKey returns the first eight characters of k's base64 form, enough to
// tell public keys apart in logs and status output. Never pass a private key.
func ShortKey(k wgtypes.Key) string {
	return k.String()[:8]
}
