package broker

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Files of the key etcd signs its auth tokens with, inside the PKI directory.
const (
	jwtKeyFile = "jwt.key"
	jwtPubFile = "jwt.pub"
	// jwtTTL is how long an auth token is valid; clients re-authenticate.
	jwtTTL = "10m"
)

// jwtKey locates the broker's token signing key. etcd issues JWTs signed
// with it rather than simple tokens, which etcd's debug apply log would
// print and which live in etcd's memory only.
type jwtKey struct{ keyFile, pubFile string }

// option is etcd's --auth-token value.
func (k jwtKey) option() string {
	return "jwt,pub-key=" + k.pubFile + ",priv-key=" + k.keyFile + ",sign-method=ES256,ttl=" + jwtTTL
}

// ensureJWTKey returns the signing key in dir, creating one (mode 0600) if
// there is none.
func ensureJWTKey(dir string) (jwtKey, error) {
	k := jwtKey{keyFile: filepath.Join(dir, jwtKeyFile), pubFile: filepath.Join(dir, jwtPubFile)}
	if strings.ContainsAny(dir, ",=") {
		return k, fmt.Errorf("token signing key: data directory %s contains ',' or '=', which etcd's --auth-token cannot carry; choose another path", dir)
	}
	_, keyErr := os.Stat(k.keyFile)
	_, pubErr := os.Stat(k.pubFile)
	switch {
	case keyErr == nil && pubErr == nil:
		return k, nil
	case !errors.Is(keyErr, fs.ErrNotExist) || !errors.Is(pubErr, fs.ErrNotExist):
		return k, fmt.Errorf("token signing key in %s: one of %s and %s is missing or unreadable; remove both to make a new key", dir, jwtKeyFile, jwtPubFile)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return k, fmt.Errorf("token signing key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return k, fmt.Errorf("token signing key: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return k, fmt.Errorf("token signing key: %w", err)
	}
	if err := writeFileAtomic(k.keyFile, pemBlock("PRIVATE KEY", der), 0o600); err != nil {
		return k, fmt.Errorf("token signing key: %w", err)
	}
	if err := writeFileAtomic(k.pubFile, pemBlock("PUBLIC KEY", pub), 0o644); err != nil {
		return k, fmt.Errorf("token signing key: %w", err)
	}
	return k, nil
}
