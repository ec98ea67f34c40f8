package broker

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/braidmesh/braid/internal/atomicfile"
)

// Validity of client certificates. DefaultClientCertValidity applies to
// certificates issued to clusters; operators renew them when a third of it
// remains (see RenewDue).
const (
	DefaultClientCertValidity = 90 * 24 * time.Hour
	crlValidity               = 10 * 365 * 24 * time.Hour
)

// crlMu serializes CRL rewrites within the process.
var crlMu sync.Mutex

// SignClient issues a client certificate for user (its common name, which
// etcd takes as the user name) over pub, valid for validity (zero means
// DefaultClientCertValidity) and never beyond the CA. It carries no SANs:
// etcd checks a client certificate's SANs against the peer address.
func (p *PKI) SignClient(pub any, user string, validity time.Duration) (*x509.Certificate, []byte, error) {
	if p.caKey == nil {
		return nil, nil, errors.New("sign client certificate: CA key not loaded")
	}
	if validity == 0 {
		validity = DefaultClientCertValidity
	}
	now := time.Now()
	notAfter := now.Add(validity)
	if notAfter.After(p.caCert.NotAfter) {
		notAfter = p.caCert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: newSerial(),
		Subject:      pkix.Name{CommonName: user, Organization: []string{"braid"}},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, pub, p.caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("sign client certificate for %s: %w", user, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("sign client certificate for %s: %w", user, err)
	}
	return cert, pemBlock("CERTIFICATE", der), nil
}

// IssueClient creates a key and a client certificate for user, returning
// both as PEM.
func (p *PKI) IssueClient(user string, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("issue client certificate for %s: %w", user, err)
	}
	_, certPEM, err = p.SignClient(key.Public(), user, validity)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("issue client certificate for %s: %w", user, err)
	}
	return certPEM, pemBlock("PRIVATE KEY", keyDER), nil
}

// ensureCRL writes an empty revocation list if there is none.
func (p *PKI) ensureCRL() error {
	if _, err := os.Stat(p.CRLFile); err == nil {
		return nil
	}
	return p.Revoke()
}

// Revoke adds serials to the CRL, which etcd and the join endpoint consult
// on every connection. Already listed serials are kept.
func (p *PKI) Revoke(serials ...*big.Int) error {
	crlMu.Lock()
	defer crlMu.Unlock()
	var entries []x509.RevocationListEntry
	number := big.NewInt(1)
	if b, err := os.ReadFile(p.CRLFile); err == nil {
		if old, err := x509.ParseRevocationList(pemOrDER(b)); err == nil {
			entries = old.RevokedCertificateEntries
			number = new(big.Int).Add(old.Number, big.NewInt(1))
		}
	}
	now := time.Now()
	for _, s := range serials {
		if slices.ContainsFunc(entries, func(e x509.RevocationListEntry) bool { return e.SerialNumber.Cmp(s) == 0 }) {
			continue
		}
		entries = append(entries, x509.RevocationListEntry{SerialNumber: s, RevocationTime: now})
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number:                    number,
		ThisUpdate:                now,
		NextUpdate:                now.Add(crlValidity),
		RevokedCertificateEntries: entries,
	}, p.caCert, p.caKey)
	if err != nil {
		return fmt.Errorf("write CRL: %w", err)
	}
	// etcd parses the file as DER.
	if err := atomicfile.WriteFile(p.CRLFile, der, 0o644); err != nil {
		return fmt.Errorf("write CRL: %w", err)
	}
	return nil
}

// Revoked reports whether cert's serial is in the CRL.
func (p *PKI) Revoked(cert *x509.Certificate) (bool, error) {
	b, err := os.ReadFile(p.CRLFile)
	if err != nil {
		return false, fmt.Errorf("read CRL: %w", err)
	}
	crl, err := x509.ParseRevocationList(pemOrDER(b))
	if err != nil {
		return false, fmt.Errorf("read CRL: %w", err)
	}
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber.Cmp(cert.SerialNumber) == 0 {
			return true, nil
		}
	}
	return false, nil
}

func pemOrDER(b []byte) []byte {
	if blk, _ := pemDecode(b); blk != nil {
		return blk
	}
	return b
}

// LoadPKI loads the CA in dir, which must exist, without writing anything:
// for commands that issue client certificates next to a running broker.
func LoadPKI(dir string) (*PKI, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, caCertFile))
	if err != nil {
		return nil, fmt.Errorf("load PKI: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, caKeyFile))
	if err != nil {
		return nil, fmt.Errorf("load PKI: %w", err)
	}
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("load PKI %s: %w", dir, err)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load PKI %s: %w", dir, err)
	}
	return &PKI{
		Dir: dir, CACertPEM: certPEM,
		CAFile: filepath.Join(dir, caCertFile), CertFile: filepath.Join(dir, serverCertFile), KeyFile: filepath.Join(dir, serverKeyFile),
		CRLFile: filepath.Join(dir, crlFile),
		caCert:  cert, caKey: key,
	}, nil
}
