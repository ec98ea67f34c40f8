package broker

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/braidmesh/braid/internal/atomicfile"
)

// File names of the token signing key pair inside a PKI directory.
const (
	tokenKeyFile = "token.key"
	tokenPubFile = "token.pub"
)

// TokenSignMethod is how etcd signs the tokens it hands clients: ECDSA
// P-256 with SHA-256 (JWT "ES256").
const TokenSignMethod = "ES256"

// TokenTTL is how long a token etcd hands a client stays valid. Clients
// authenticate again when it has expired (etcd's client does so on its
// own); removing a cluster invalidates its tokens at once (the auth
// revision they carry is then too old), whatever is left of their TTL.
const TokenTTL = 10 * time.Minute

// TokenKey is the key pair etcd signs and checks client tokens with, as
// PEM files: the private key (PKCS#8, mode 0600) and its public key (PKIX,
// 0644).
type TokenKey struct {
	KeyFile, PubFile string
	// Public is the key that verifies the tokens.
	Public *ecdsa.PublicKey
}

// authTokenOption is etcd's --auth-token value for k: JWTs signed with
// the key pair, so they stay valid across restarts of the broker.
func (k *TokenKey) authTokenOption() string {
	return fmt.Sprintf("jwt,pub-key=%s,priv-key=%s,sign-method=%s,ttl=%v", k.PubFile, k.KeyFile, TokenSignMethod, TokenTTL)
}

// EnsureTokenKey loads the token signing key in dir (a PKI directory),
// creating it on first use, and rewrites its public key file if that is
// missing or does not match. The key is never replaced: tokens issued
// before a restart stay valid after it. A key file that cannot be read as
// an ECDSA P-256 key is an error naming the file.
//
// EnsureTokenKey is not safe to run concurrently on the same dir.
func EnsureTokenKey(dir string) (*TokenKey, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create pki dir: %w", err)
	}
	k := &TokenKey{KeyFile: filepath.Join(dir, tokenKeyFile), PubFile: filepath.Join(dir, tokenPubFile)}
	priv, err := loadTokenKey(k.KeyFile)
	if errors.Is(err, fs.ErrNotExist) {
		if priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			return nil, fmt.Errorf("generate token signing key: %w", err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(priv)
		if err != nil {
			return nil, fmt.Errorf("encode token signing key: %w", err)
		}
		if err := atomicfile.WriteFile(k.KeyFile, pemBlock("PRIVATE KEY", der), 0o600); err != nil {
			return nil, fmt.Errorf("write token signing key: %w", err)
		}
	} else if err != nil {
		return nil, err
	}
	if err := os.Chmod(k.KeyFile, 0o600); err != nil {
		return nil, fmt.Errorf("token signing key: %w", err)
	}
	k.Public = &priv.PublicKey

	pubDER, err := x509.MarshalPKIXPublicKey(k.Public)
	if err != nil {
		return nil, fmt.Errorf("encode token public key: %w", err)
	}
	want := pemBlock("PUBLIC KEY", pubDER)
	if have, err := os.ReadFile(k.PubFile); err != nil || string(have) != string(want) {
		if err := atomicfile.WriteFile(k.PubFile, want, 0o644); err != nil {
			return nil, fmt.Errorf("write token public key: %w", err)
		}
	}
	return k, nil
}

// loadTokenKey reads the private key at path; a missing file is returned
// as is (fs.ErrNotExist).
func loadTokenKey(path string) (*ecdsa.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("read token signing key: %w", err)
	}
	bad := func(why string) error {
		return fmt.Errorf("token signing key %s: %s; remove it to create a new one (clients then authenticate again)", path, why)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, bad("no PEM PKCS#8 private key")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, bad(err.Error())
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, bad(fmt.Sprintf("a %T, want an ECDSA P-256 key", k))
	}
	if ek.Curve != elliptic.P256() {
		return nil, bad(fmt.Sprintf("curve %s, want P-256", ek.Curve.Params().Name))
	}
	return ek, nil
}
