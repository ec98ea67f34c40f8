package broker

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/internal/testenv"
	bolt "go.etcd.io/bbolt"
	"go.etcd.io/etcd/api/v3/authpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/crypto/bcrypt"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
)

// TestBrokerTokensAreJWTs checks that etcd hands clients JWTs signed with
// the broker's own key (kept 0600 in its data directory), that etcd checks
// their signature, and that a token issued before a restart of the broker
// still works after it.
func TestBrokerTokensAreJWTs(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "broker")
	ports := testenv.FreePorts(t, 2)
	b := startBroker(t, dir, ports[0], ports[1])
	keyFile := filepath.Join(dir, pkiDir, tokenKeyFile)
	checkMode(t, keyFile, 0o600)
	keyPEM := readFile(t, keyFile)
	pub := readTokenPublicKey(t, filepath.Join(dir, pkiDir, tokenPubFile))

	ctx := t.Context()
	creds, err := b.AddCluster(ctx, testGrant("east"))
	if err != nil {
		t.Fatal(err)
	}
	cli := clusterClient(t, creds)
	if _, err := cli.Put(ctx, clustermesh.ClusterKey("east"), "v1"); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Authenticate(ctx, creds.Username, creds.Password)
	if err != nil {
		t.Fatal(err)
	}
	token := resp.Token
	claims := verifyJWT(t, token, pub)
	if claims["username"] != creds.Username {
		t.Errorf("token claims %v, want username %s", claims, creds.Username)
	}
	exp, ok := claims["exp"].(float64)
	if left := time.Until(time.Unix(int64(exp), 0)); !ok || left <= 0 || left > TokenTTL {
		t.Errorf("token expires in %v, want within TokenTTL %v", left, TokenTTL)
	}

	// A token whose claims were changed fails etcd's signature check:
	// the same signature over a payload naming root.
	parts := strings.Split(token, ".")
	forged := map[string]any{"username": RootUser, "revision": claims["revision"], "exp": claims["exp"]}
	fp, err := json.Marshal(forged)
	if err != nil {
		t.Fatal(err)
	}
	forgedToken := parts[0] + "." + base64.RawURLEncoding.EncodeToString(fp) + "." + parts[2]

	withToken := func(tok string) (*clientv3.GetResponse, error) {
		// A fresh connection each time: the broker restarts in between.
		anon := anonymousClient(t, creds.Endpoints, creds)
		return anon.Get(metadata.AppendToOutgoingContext(ctx, rpctypes.TokenFieldNameGRPC, tok), clustermesh.ClusterKey("east"))
	}
	if got, err := withToken(token); err != nil || len(got.Kvs) != 1 {
		t.Fatalf("get with the token alone: %v, %v", got, err)
	}
	if _, err := withToken(forgedToken); !errors.Is(err, rpctypes.ErrInvalidAuthToken) {
		t.Errorf("get with a token with forged claims: %v, want %v", err, rpctypes.ErrInvalidAuthToken)
	}

	b.stop()
	startBroker(t, dir, ports[0], ports[1])
	if !bytes.Equal(keyPEM, readFile(t, keyFile)) {
		t.Fatal("token signing key changed on restart")
	}
	checkMode(t, keyFile, 0o600)
	// The token from before the restart still authenticates: same key,
	// same auth revision.
	got, err := withToken(token)
	if err != nil || len(got.Kvs) != 1 || string(got.Kvs[0].Value) != "v1" {
		t.Fatalf("get with the token from before the restart: %v, %v", got, err)
	}
	// And new tokens are signed with the same key.
	resp2, err := clusterClient(t, creds).Authenticate(ctx, creds.Username, creds.Password)
	if err != nil {
		t.Fatal(err)
	}
	verifyJWT(t, resp2.Token, pub)
}

// TestEnsureTokenKey checks that the key is created once, reused, its
// public half restored, and that an unusable key file is refused naming it.
func TestEnsureTokenKey(t *testing.T) {
	dir := t.TempDir()
	k1, err := EnsureTokenKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	checkMode(t, k1.KeyFile, 0o600)
	checkMode(t, k1.PubFile, 0o644)
	key := readFile(t, k1.KeyFile)
	if err := os.Remove(k1.PubFile); err != nil {
		t.Fatal(err)
	}
	k2, err := EnsureTokenKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(key, readFile(t, k2.KeyFile)) || !k2.Public.Equal(k1.Public) {
		t.Error("EnsureTokenKey replaced the key")
	}
	if !readTokenPublicKey(t, k2.PubFile).Equal(k1.Public) {
		t.Error("public key file not restored")
	}
	opt := k2.authTokenOption()
	if !strings.HasPrefix(opt, "jwt,") || !strings.Contains(opt, "sign-method=ES256") || strings.Contains(opt, "PRIVATE") {
		t.Errorf("auth token option %q", opt)
	}

	if err := os.WriteFile(k1.KeyFile, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := EnsureTokenKey(dir); err == nil || !strings.Contains(err.Error(), k1.KeyFile) || !strings.Contains(err.Error(), "remove it") {
		t.Errorf("corrupt key: %v, want an error naming %s and the fix", err, k1.KeyFile)
	}
}

// verifyJWT checks that token is three base64url segments, an ES256 JWT
// whose signature pub verifies, and returns its claims.
func verifyJWT(t *testing.T, token string, pub *ecdsa.PublicKey) map[string]any {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d segments, want a JWT's 3", len(parts))
	}
	var seg [3][]byte
	for i, p := range parts {
		b, err := base64.RawURLEncoding.DecodeString(p)
		if err != nil {
			t.Fatalf("token segment %d is not base64url: %v", i, err)
		}
		seg[i] = b
	}
	var header struct{ Alg, Typ string }
	if err := json.Unmarshal(seg[0], &header); err != nil || header.Alg != "ES256" {
		t.Fatalf("token header %q (%v), want alg ES256", seg[0], err)
	}
	var claims map[string]any
	if err := json.Unmarshal(seg[1], &claims); err != nil {
		t.Fatalf("token claims %q: %v", seg[1], err)
	}
	if len(seg[2]) != 64 {
		t.Fatalf("ES256 signature of %d bytes, want 64", len(seg[2]))
	}
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	r, s := new(big.Int).SetBytes(seg[2][:32]), new(big.Int).SetBytes(seg[2][32:])
	if !ecdsa.Verify(pub, sum[:], r, s) {
		t.Fatal("token signature does not verify with the broker's public key")
	}
	return claims
}

func readTokenPublicKey(t *testing.T, path string) *ecdsa.PublicKey {
	t.Helper()
	blk, _ := pem.Decode(readFile(t, path))
	if blk == nil || blk.Type != "PUBLIC KEY" {
		t.Fatalf("%s: no PEM public key", path)
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	ek, ok := k.(*ecdsa.PublicKey)
	if !ok {
		t.Fatalf("%s: %T, want ECDSA", path, k)
	}
	return ek
}

// anonymousClient connects over TLS without credentials, so requests carry
// only the token the test puts in their metadata.
func anonymousClient(t *testing.T, endpoints []string, c interface {
	TLSConfig() (*tls.Config, error)
}) *clientv3.Client {
	t.Helper()
	tlsCfg, err := c.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, TLS: tlsCfg, DialTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// TestPasswordHashCost checks that etcd hashes cluster passwords at
// bcrypt's lowest cost: every stream a client opens authenticates again,
// and the passwords are random 128-bit secrets that stretching cannot
// protect further. It reads the hash from etcd's stopped database.
func TestPasswordHashCost(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "broker")
	ports := testenv.FreePorts(t, 2)
	b := startBroker(t, dir, ports[0], ports[1])
	creds, err := b.AddCluster(t.Context(), testGrant("east"))
	if err != nil {
		t.Fatal(err)
	}
	b.stop()

	db, err := bolt.Open(filepath.Join(dir, etcdDir, "member", "snap", "db"), 0o600, &bolt.Options{ReadOnly: true, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var user authpb.User
	if err := db.View(func(tx *bolt.Tx) error {
		bkt := tx.Bucket([]byte("authUsers"))
		if bkt == nil {
			return errors.New("no authUsers bucket")
		}
		v := bkt.Get([]byte(creds.Username))
		if v == nil {
			return fmt.Errorf("no user %s", creds.Username)
		}
		return proto.Unmarshal(v, &user)
	}); err != nil {
		t.Fatal(err)
	}
	cost, err := bcrypt.Cost(user.Password)
	if err != nil {
		t.Fatalf("password hash of %s: %v", creds.Username, err)
	}
	if cost != bcrypt.MinCost {
		t.Errorf("bcrypt cost %d, want %d", cost, bcrypt.MinCost)
	}
}
