package join

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/braidmesh/braid/clustermesh"
)

// AdminPrefix is where the broker keeps what only its root user may read:
// tokens, members, the join endpoint. It is outside clustermesh.Root on
// purpose: cluster roles read everything under Root.
const AdminPrefix = "braid-admin/v1/"

// TokensPrefix holds one TokenRecord per token, keyed by token ID.
const TokensPrefix = AdminPrefix + "tokens/"

// MembersPrefix holds one Member per cluster that joined with a token.
const MembersPrefix = AdminPrefix + "members/"

// BrokerKey holds the BrokerInfo a running broker publishes for `braid token
// create`.
const BrokerKey = AdminPrefix + "broker"

// TokenKey is where token id's record is stored.
func TokenKey(id string) string { return TokensPrefix + id }

// MemberKey is where cluster name's Member is stored.
func MemberKey(name clustermesh.ClusterName) string { return MembersPrefix + string(name) }

// tokenPrefix starts every encoded token; the digit is the format version.
const tokenPrefix = "braid1."

// ErrBadToken is wrapped by ParseToken for anything that is not a token.
var ErrBadToken = errors.New("malformed join token")

// Token is what `braid token create` prints and `braid join` consumes.
type Token struct {
	// Cluster is the only cluster the token may join.
	Cluster clustermesh.ClusterName `json:"c"`
	// Endpoints are the broker's etcd client URLs.
	Endpoints []string `json:"e"`
	// JoinURL is the broker's join endpoint (https).
	JoinURL string `json:"j"`
	// CAFingerprint is the hex SHA-256 of the broker CA's DER certificate.
	CAFingerprint string `json:"ca"`
	// ID names the token's record; Secret proves possession.
	ID     string `json:"id"`
	Secret string `json:"s"`
}

// NewToken returns a token for cluster with a fresh ID and secret.
func NewToken(cluster clustermesh.ClusterName, info BrokerInfo) Token {
	id := make([]byte, 8)
	_, _ = rand.Read(id) // crypto/rand does not fail on supported platforms
	return Token{
		Cluster:       cluster,
		Endpoints:     info.Endpoints,
		JoinURL:       info.JoinURL,
		CAFingerprint: info.CAFingerprint,
		ID:            hex.EncodeToString(id),
		Secret:        rand.Text(),
	}
}

// String encodes t. The result is a secret until the token is used.
func (t Token) String() string {
	b, _ := json.Marshal(t) // plain strings cannot fail to marshal
	return tokenPrefix + base64.RawURLEncoding.EncodeToString(b)
}

// ParseToken decodes and checks a token printed by Token.String.
func ParseToken(s string) (Token, error) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(s), tokenPrefix)
	if !ok {
		return Token{}, fmt.Errorf("%w: does not start with %q (copy the whole line `braid token create` printed)", ErrBadToken, tokenPrefix)
	}
	b, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil {
		return Token{}, fmt.Errorf("%w: %v", ErrBadToken, err)
	}
	var t Token
	if err := json.Unmarshal(b, &t); err != nil {
		return Token{}, fmt.Errorf("%w: %v", ErrBadToken, err)
	}
	var errs []error
	if err := t.Cluster.Validate(); err != nil {
		errs = append(errs, err)
	}
	if len(t.Endpoints) == 0 {
		errs = append(errs, errors.New("no broker endpoints"))
	}
	if u, err := url.Parse(t.JoinURL); err != nil || u.Scheme != "https" || u.Host == "" {
		errs = append(errs, fmt.Errorf("join URL %q is not https://host:port", t.JoinURL))
	}
	if fp, err := hex.DecodeString(t.CAFingerprint); err != nil || len(fp) != sha256.Size {
		errs = append(errs, errors.New("CA fingerprint is not a hex SHA-256"))
	}
	if t.ID == "" || t.Secret == "" {
		errs = append(errs, errors.New("no token ID or secret"))
	}
	if err := errors.Join(errs...); err != nil {
		return Token{}, fmt.Errorf("%w: %v", ErrBadToken, err)
	}
	return t, nil
}

// BrokerInfo is what a broker publishes at BrokerKey.
type BrokerInfo struct {
	Endpoints     []string `json:"endpoints"`
	JoinURL       string   `json:"joinURL"`
	CAFingerprint string   `json:"caFingerprint"`
}

// TokenRecord is a token as the broker stores it.
type TokenRecord struct {
	Cluster clustermesh.ClusterName `json:"cluster"`
	// SecretSHA256 is the hex SHA-256 of the token's secret.
	SecretSHA256 string    `json:"secretSHA256"`
	Expires      time.Time `json:"expires"`
	Created      time.Time `json:"created"`
	// Used is set, with compare-and-swap, by the join that consumed it.
	Used   bool      `json:"used,omitempty"`
	UsedAt time.Time `json:"usedAt,omitzero"`
}

// Record returns the record to store for t, valid for ttl from now.
func (t Token) Record(now time.Time, ttl time.Duration) TokenRecord {
	return TokenRecord{Cluster: t.Cluster, SecretSHA256: hashSecret(t.Secret), Expires: now.Add(ttl), Created: now}
}

func hashSecret(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// Check reports why secret may not use r to join cluster at now. The
// errors name the fix.
func (r TokenRecord) Check(secret string, cluster clustermesh.ClusterName, now time.Time) error {
	if subtle.ConstantTimeCompare([]byte(hashSecret(secret)), []byte(r.SecretSHA256)) != 1 {
		return errors.New("token secret does not match (copy the whole token)")
	}
	if r.Used {
		return fmt.Errorf("token already used at %s: tokens join one cluster once; create a new one with `braid token create --cluster %s`", r.UsedAt.UTC().Format(time.RFC3339), r.Cluster)
	}
	if !now.Before(r.Expires) {
		return fmt.Errorf("token expired at %s: create a new one with `braid token create --cluster %s`", r.Expires.UTC().Format(time.RFC3339), r.Cluster)
	}
	if r.Cluster != cluster {
		return fmt.Errorf("token is for cluster %q, not %q: pass --cluster %s or create a token for %s", r.Cluster, cluster, r.Cluster, cluster)
	}
	return nil
}

// Member is a cluster that joined with a token, as the broker stores it.
type Member struct {
	Config clustermesh.ClusterConfig `json:"config"`
	// Serials are the hex serial numbers of every certificate issued to
	// the cluster; leaving revokes them all.
	Serials  []string  `json:"serials"`
	NotAfter time.Time `json:"notAfter"`
	Joined   time.Time `json:"joined"`
}

// Fingerprint returns the hex SHA-256 of the first PEM certificate in
// certPEM.
func Fingerprint(certPEM []byte) (string, error) {
	blk, _ := pem.Decode(certPEM)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return "", errors.New("fingerprint: no PEM certificate")
	}
	if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
		return "", fmt.Errorf("fingerprint: %w", err)
	}
	return certFingerprint(blk.Bytes), nil
}

func certFingerprint(der []byte) string {
	h := sha256.Sum256(der)
	return hex.EncodeToString(h[:])
}
