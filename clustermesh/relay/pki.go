package relay

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/braidmesh/braid/internal/atomicfile"
)

// Files in Config.DataDir.
const (
	caCertFile     = "ca.crt"
	caKeyFile      = "ca.key"
	serverCertFile = "server.crt"
	serverKeyFile  = "server.key"
	secretsFile    = "secrets.json"
	// AgentsFile is the agents' join bundle (join.Credentials as JSON,
	// mode 0600): the relay's endpoints, its CA and the read-only agent
	// user's password. braid-agent --relay reads it.
	AgentsFile = "agents.json"
	etcdDir    = "etcd"
)

// secrets are the etcd users' passwords, created on first start.
type secrets struct {
	Root  string `json:"root"`
	Agent string `json:"agent"`
}

func loadOrCreateSecrets(dir string) (secrets, error) {
	path := filepath.Join(dir, secretsFile)
	b, err := os.ReadFile(path)
	if err == nil {
		var s secrets
		if err := json.Unmarshal(b, &s); err != nil || s.Root == "" || s.Agent == "" {
			return secrets{}, fmt.Errorf("relay secrets %s: malformed; remove the data directory to start afresh", path)
		}
		return s, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return secrets{}, fmt.Errorf("relay secrets: %w", err)
	}
	s := secrets{Root: rand.Text(), Agent: rand.Text()}
	b, _ = json.Marshal(s)
	if err := atomicfile.WriteFile(path, b, 0o600); err != nil {
		return secrets{}, fmt.Errorf("relay secrets: %w", err)
	}
	return s, nil
}

// ensurePKI makes sure dir holds a CA (created once) and a server
// certificate it signed for sans plus loopback, issued afresh on every
// start so that a changed listen address is always covered. It returns
// the CA certificate's PEM.
func ensurePKI(dir string, sans []string) ([]byte, error) {
	caPEM, err := os.ReadFile(filepath.Join(dir, caCertFile))
	var ca *x509.Certificate
	var caKey *ecdsa.PrivateKey
	switch {
	case err == nil:
		if ca, caKey, err = loadCA(dir, caPEM); err != nil {
			return nil, err
		}
	case errors.Is(err, fs.ErrNotExist):
		if caPEM, ca, caKey, err = createCA(dir); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("relay CA: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("relay server key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "braid-relay"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(5 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:     []string{"localhost"},
	}
	for _, s := range sans {
		if ip := net.ParseIP(s); ip != nil {
			if !ip.IsUnspecified() {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			}
		} else if s != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, s)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("relay server certificate: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("relay server key: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, serverKeyFile), pemBlock("EC PRIVATE KEY", keyDER), 0o600); err != nil {
		return nil, fmt.Errorf("relay server key: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, serverCertFile), pemBlock("CERTIFICATE", der), 0o644); err != nil {
		return nil, fmt.Errorf("relay server certificate: %w", err)
	}
	return caPEM, nil
}

func createCA(dir string) ([]byte, *x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("relay CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "braid-relay-ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("relay CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("relay CA: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("relay CA key: %w", err)
	}
	// The key first: a CA certificate without its key would be unusable.
	if err := atomicfile.WriteFile(filepath.Join(dir, caKeyFile), pemBlock("EC PRIVATE KEY", keyDER), 0o600); err != nil {
		return nil, nil, nil, fmt.Errorf("relay CA key: %w", err)
	}
	caPEM := pemBlock("CERTIFICATE", der)
	if err := atomicfile.WriteFile(filepath.Join(dir, caCertFile), caPEM, 0o644); err != nil {
		return nil, nil, nil, fmt.Errorf("relay CA: %w", err)
	}
	return caPEM, cert, key, nil
}

func loadCA(dir string, caPEM []byte) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	block, _ := pem.Decode(caPEM)
	if block == nil {
		return nil, nil, fmt.Errorf("relay CA %s: no PEM certificate; remove the data directory to start afresh", filepath.Join(dir, caCertFile))
	}
	ca, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("relay CA: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, caKeyFile))
	if err != nil {
		return nil, nil, fmt.Errorf("relay CA key: %w", err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, nil, fmt.Errorf("relay CA key %s: no PEM key", filepath.Join(dir, caKeyFile))
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("relay CA key: %w", err)
	}
	return ca, key, nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127)) // crypto/rand.Reader never fails
	return n
}
