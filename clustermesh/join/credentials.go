package join

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/internal/atomicfile"
)

// Credentials let one cluster use the broker: where it is, which CA signs its
// GossipKeySize is the size of a mesh gossip key: AES-256.
const GossipKeySize = 32

// Credentials let one cluster use the broker: where it is, which CA signs its
// certificate, the mesh's gossip keys, and how the cluster authenticates: a
// client certificate whose common name is its etcd user (CertPEM, KeyPEM;
// what `braid join` issues, no password) or a password (Username, Password;
// what `braid broker add-cluster` writes). Saved to a file they are the
// cluster's join bundle. String and LogValue leave out the password and key.
type Credentials struct {
	Cluster   clustermesh.ClusterName
	Endpoints []string // e.g. https://broker.example:2379
	CACertPEM []byte
	Username  string
	Password  string
	// GossipKeys are the mesh's gossip keys (AES-256, 32 bytes each), the
	// first one primary. Every cluster gets the same ones: the broker
	// generates the first once (see AddCluster).
	GossipKeys [][]byte
	CertPEM    []byte
	KeyPEM     []byte
	// JoinURL and CAFingerprint are set for clusters that joined with a
	// token: where to renew the certificate and leave.
	JoinURL       string
	CAFingerprint string
}

// bundle is the JSON form of Credentials; the CA stays readable PEM.
type bundle struct {
	Cluster   clustermesh.ClusterName `json:"cluster"`
	Endpoints []string                `json:"endpoints"`
	CACert    string                  `json:"caCert"`
	Username  string                  `json:"username,omitempty"`
	Password  string                  `json:"password,omitempty"`
	// GossipKeys are base64 (std) encoded.
	GossipKeys [][]byte `json:"gossipKeys,omitempty"`
	Cert       string   `json:"cert,omitempty"`
	Key        string   `json:"key,omitempty"`
	JoinURL    string   `json:"joinURL,omitempty"`
	CAPin      string   `json:"caFingerprint,omitempty"`
}

// MarshalJSON encodes c as a join bundle.
func (c Credentials) MarshalJSON() ([]byte, error) {
	return json.Marshal(bundle{c.Cluster, c.Endpoints, string(c.CACertPEM), c.Username, c.Password, c.GossipKeys,
		string(c.CertPEM), string(c.KeyPEM), c.JoinURL, c.CAFingerprint})
}

// UnmarshalJSON decodes a join bundle; it does not validate it.
func (c *Credentials) UnmarshalJSON(b []byte) error {
	var w bundle
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*c = Credentials{w.Cluster, w.Endpoints, []byte(w.CACert), w.Username, w.Password, w.GossipKeys,
		[]byte(w.Cert), []byte(w.Key), w.JoinURL, w.CAPin}
	return nil
}

// String describes c without its password.
func (c Credentials) String() string {
	return fmt.Sprintf("cluster %s as %s at %s", c.Cluster, c.user(), strings.Join(c.Endpoints, ","))
}

// user is the etcd user c authenticates as.
func (c Credentials) user() string {
	if c.Username == "" && len(c.CertPEM) > 0 {
		return User(c.Cluster) + " (certificate)"
	}
	return c.Username
}

// LogValue logs c without its password.
func (c Credentials) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("cluster", string(c.Cluster)),
		slog.String("user", c.user()),
		slog.Any("endpoints", c.Endpoints),
	)
}

// Validate reports what is missing or malformed in c.
func (c Credentials) Validate() error {
	if err := c.Cluster.Validate(); err != nil {
		return err
	}
	var errs []error
	if len(c.Endpoints) == 0 {
		errs = append(errs, errors.New("no endpoints"))
	}
	hasPassword := c.Username != "" && c.Password != ""
	hasCert := len(c.CertPEM) > 0 || len(c.KeyPEM) > 0
	if !hasPassword && !hasCert {
		errs = append(errs, errors.New("no client certificate and no username or password"))
	}
	if hasCert {
		if _, err := tls.X509KeyPair(c.CertPEM, c.KeyPEM); err != nil {
			errs = append(errs, fmt.Errorf("client certificate: %w", err))
		}
	}
	if _, err := ClientTLSConfig(c.CACertPEM); err != nil {
		errs = append(errs, err)
	}
	for i, k := range c.GossipKeys {
		if len(k) != GossipKeySize {
			errs = append(errs, fmt.Errorf("gossip key %d is %d bytes, want %d (AES-256); re-issue the bundle with braid broker add-cluster", i, len(k), GossipKeySize))
		}
	}
	return errors.Join(errs...)
}

// TLSConfig returns a client TLS configuration that trusts only c's CA and
// presents c's client certificate, if it has one.
func (c Credentials) TLSConfig() (*tls.Config, error) {
	cfg, err := ClientTLSConfig(c.CACertPEM)
	if err != nil {
		return nil, fmt.Errorf("credentials for cluster %s: %w", c.Cluster, err)
	}
	if len(c.CertPEM) > 0 {
		cert, err := tls.X509KeyPair(c.CertPEM, c.KeyPEM)
		if err != nil {
			return nil, fmt.Errorf("credentials for cluster %s: client certificate: %w", c.Cluster, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// maxBundleSize bounds the join bundle LoadCredentials reads; real ones
// are a few KiB (a CA certificate, endpoints, a user or a certificate).
const maxBundleSize = 1 << 20

// NotAfter is when c's client certificate expires; zero without one.
func (c Credentials) NotAfter() time.Time {
	cert, err := parseCert(c.CertPEM)
	if err != nil {
		return time.Time{}
	}
	return cert.NotAfter
}

// Save writes c as a join bundle to path, readable only by its owner (0600)
// whatever the umask or the mode of a file it replaces, replacing any file
// there atomically.
func (c Credentials) Save(path string) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return fmt.Errorf("save credentials for cluster %s: %w", c.Cluster, err)
	}
	if err := atomicfile.WriteFile(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("save credentials for cluster %s: %w", c.Cluster, err)
	}
	return nil
}

// LoadCredentials reads and validates the join bundle at path. It warns on
// log (nil discards) when the file is readable by its group or others: the
// bundle holds the cluster's password. That is a warning, not a refusal,
// because Kubernetes mounts Secrets with mode 0644 unless told otherwise.
func LoadCredentials(path string, log *slog.Logger) (Credentials, error) {
	f, err := os.Open(path)
	if err != nil {
		return Credentials{}, fmt.Errorf("load credentials: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Mode().Perm()&0o077 != 0 && log != nil {
		log.Warn("join bundle is readable by others: it holds the cluster's password",
			"path", path, "mode", fmt.Sprintf("%#o", fi.Mode().Perm()),
			"hint", "chmod 600 it; for a Kubernetes Secret volume set defaultMode: 0400")
	}
	b, err := io.ReadAll(io.LimitReader(f, maxBundleSize+1))
	if err != nil {
		return Credentials{}, fmt.Errorf("load credentials %s: %w", path, err)
	}
	if len(b) > maxBundleSize {
		return Credentials{}, fmt.Errorf("load credentials %s: larger than %d bytes: not a join bundle", path, maxBundleSize)
	}
	var c Credentials
	if err := json.Unmarshal(b, &c); err != nil {
		return Credentials{}, fmt.Errorf("load credentials %s: %w", path, err)
	}
	if err := c.Validate(); err != nil {
		return Credentials{}, fmt.Errorf("load credentials %s: %w", path, err)
	}
	return c, nil
}

// ClientTLSConfig returns a client TLS configuration that trusts only the
// CA certificates in caPEM.
func ClientTLSConfig(caPEM []byte) (*tls.Config, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("parse CA certificate: no PEM certificate found")
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}
