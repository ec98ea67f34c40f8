package broker

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/internal/atomicfile"
)

// Validity of what EnsurePKI issues. A server certificate is reissued (with a
// new key, by the same CA) when fewer than serverRenewBefore remain.
const (
	caValidity        = 10 * 365 * 24 * time.Hour
	serverValidity    = 5 * 365 * 24 * time.Hour
	serverRenewBefore = 90 * 24 * time.Hour
)

// File names inside a PKI directory.
const (
	caCertFile     = "ca.crt"
	caKeyFile      = "ca.key"
	serverCertFile = "server.crt"
	serverKeyFile  = "server.key"
	crlFile        = "crl.pem"
)

// defaultSANs are always in the server certificate, so that clients on the
// broker's own machine can verify it.
var defaultSANs = []string{"127.0.0.1", "::1", "localhost"}

// PKI is a CA and a server certificate it signed, as files in Dir.
type PKI struct {
	Dir string
	// CACertPEM is the CA certificate that clients must trust.
	CACertPEM []byte
	// CAFile, CertFile and KeyFile are paths of the CA certificate and of
	// the server's certificate and private key (PEM). The server
	// certificate is valid for both server and client authentication, so
	// etcd members may also use it for peer TLS.
	CAFile, CertFile, KeyFile string
	// CRLFile lists revoked client certificates; etcd reads it on every
	// connection that presents one.
	CRLFile string

	caCert *x509.Certificate
	caKey  crypto.Signer
}

// EnsurePKI loads the CA in dir, creating it on first use, and makes sure the
// server certificate there is valid for 127.0.0.1, ::1, localhost and sans (IP addresses or
// DNS names), reissuing it if it is not or expires soon. Private keys are
// written with mode 0600, dir with 0700. A CA certificate without its key, or
// the reverse, is an error: EnsurePKI never replaces a CA.
//
// EnsurePKI is not safe to run concurrently on the same dir.
func EnsurePKI(dir string, sans []string) (*PKI, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create pki dir: %w", err)
	}
	p := &PKI{
		Dir:      dir,
		CAFile:   filepath.Join(dir, caCertFile),
		CertFile: filepath.Join(dir, serverCertFile),
		KeyFile:  filepath.Join(dir, serverKeyFile),
		CRLFile:  filepath.Join(dir, crlFile),
	}
	caCert, caKey, err := loadOrCreateCA(dir)
	if err != nil {
		return nil, err
	}
	p.CACertPEM = pemBlock("CERTIFICATE", caCert.Raw)
	p.caCert, p.caKey = caCert, caKey
	if err := p.ensureCRL(); err != nil {
		return nil, err
	}

	ips, names, err := splitSANs(append(slices.Clone(defaultSANs), sans...))
	if err != nil {
		return nil, err
	}
	if ok, err := serverCertCurrent(p, caCert, ips, names); err != nil {
		return nil, err
	} else if ok {
		return p, nil
	}
	if err := issueServerCert(p, caCert, caKey, ips, names); err != nil {
		return nil, err
	}
	return p, nil
}

// TLSConfig returns a client TLS configuration that trusts only the CA.
func (p *PKI) TLSConfig() (*tls.Config, error) { return join.ClientTLSConfig(p.CACertPEM) }

func loadOrCreateCA(dir string) (*x509.Certificate, crypto.Signer, error) {
	certPath, keyPath := filepath.Join(dir, caCertFile), filepath.Join(dir, caKeyFile)
	certPEM, certErr := os.ReadFile(certPath)
	keyPEM, keyErr := os.ReadFile(keyPath)
	switch {
	case certErr == nil && keyErr == nil:
		cert, err := parseCert(certPEM)
		if err != nil {
			return nil, nil, fmt.Errorf("load CA %s: %w", certPath, err)
		}
		key, err := parseKey(keyPEM)
		if err != nil {
			return nil, nil, fmt.Errorf("load CA key %s: %w", keyPath, err)
		}
		if !publicKeysEqual(cert.PublicKey, key.Public()) {
			return nil, nil, fmt.Errorf("load CA %s: key %s does not match", certPath, keyPath)
		}
		return cert, key, nil
	case errors.Is(certErr, fs.ErrNotExist) && errors.Is(keyErr, fs.ErrNotExist):
		// First start: create below.
	case certErr != nil && !errors.Is(certErr, fs.ErrNotExist):
		return nil, nil, fmt.Errorf("load CA: %w", certErr)
	case keyErr != nil && !errors.Is(keyErr, fs.ErrNotExist):
		return nil, nil, fmt.Errorf("load CA key: %w", keyErr)
	default:
		return nil, nil, fmt.Errorf("load CA in %s: one of %s and %s is missing; refusing to replace the CA", dir, caCertFile, caKeyFile)
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("create CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          newSerial(),
		Subject:               pkix.Name{CommonName: "braid broker CA", Organization: []string{"braid"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("create CA certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CA key: %w", err)
	}
	// Key first: a CA certificate on disk always has its key next to it.
	if err := atomicfile.WriteFile(keyPath, pemBlock("PRIVATE KEY", keyDER), 0o600); err != nil {
		return nil, nil, fmt.Errorf("write CA key: %w", err)
	}
	if err := atomicfile.WriteFile(certPath, pemBlock("CERTIFICATE", der), 0o644); err != nil {
		return nil, nil, fmt.Errorf("write CA certificate: %w", err)
	}
	return cert, key, nil
}

// serverCertCurrent reports whether the server certificate in p exists, was
// signed by ca, matches its key, covers ips and names and is not about to
// expire.
func serverCertCurrent(p *PKI, ca *x509.Certificate, ips []net.IP, names []string) (bool, error) {
	certPEM, err := os.ReadFile(p.CertFile)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("load server certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(p.KeyFile)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("load server key: %w", err)
	}
	cert, err := parseCert(certPEM)
	if err != nil {
		return false, nil // unreadable: reissue
	}
	key, err := parseKey(keyPEM)
	if err != nil || !publicKeysEqual(cert.PublicKey, key.Public()) {
		return false, nil
	}
	if cert.CheckSignatureFrom(ca) != nil || time.Until(cert.NotAfter) < serverRenewBefore {
		return false, nil
	}
	for _, ip := range ips {
		if !slices.ContainsFunc(cert.IPAddresses, ip.Equal) {
			return false, nil
		}
	}
	for _, n := range names {
		if !slices.Contains(cert.DNSNames, n) {
			return false, nil
		}
	}
	return true, nil
}

func issueServerCert(p *PKI, ca *x509.Certificate, caKey crypto.Signer, ips []net.IP, names []string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("create server key: %w", err)
	}
	now := time.Now()
	notAfter := now.Add(serverValidity)
	if notAfter.After(ca.NotAfter) {
		notAfter = ca.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: newSerial(),
		Subject:      pkix.Name{CommonName: "braid broker", Organization: []string{"braid"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		// Client auth too: etcd members present this certificate to peers.
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: ips,
		DNSNames:    names,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return fmt.Errorf("create server certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("create server key: %w", err)
	}
	if err := atomicfile.WriteFile(p.KeyFile, pemBlock("PRIVATE KEY", keyDER), 0o600); err != nil {
		return fmt.Errorf("write server key: %w", err)
	}
	if err := atomicfile.WriteFile(p.CertFile, pemBlock("CERTIFICATE", der), 0o644); err != nil {
		return fmt.Errorf("write server certificate: %w", err)
	}
	return nil
}

// splitSANs sorts sans into IP addresses and DNS names, dropping duplicates
// and empty entries.
func splitSANs(sans []string) ([]net.IP, []string, error) {
	var ips []net.IP
	var names []string
	for _, s := range sans {
		if s == "" {
			continue
		}
		if ip := net.ParseIP(s); ip != nil {
			if ip.IsUnspecified() {
				return nil, nil, fmt.Errorf("SAN %q: unspecified address cannot be a certificate name", s)
			}
			if !slices.ContainsFunc(ips, ip.Equal) {
				ips = append(ips, ip)
			}
			continue
		}
		if !slices.Contains(names, s) {
			names = append(names, s)
		}
	}
	return ips, names, nil
}

func parseCert(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(blk.Bytes)
}

func parseKey(b []byte) (crypto.Signer, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, errors.New("no PEM PKCS#8 private key")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key of type %T cannot sign", k)
	}
	return s, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func newSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return n
}

func pemDecode(b []byte) ([]byte, []byte) {
	blk, rest := pem.Decode(b)
	if blk == nil {
		return nil, rest
	}
	return blk.Bytes, rest
}
