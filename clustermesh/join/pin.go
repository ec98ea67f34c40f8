package join

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/braidmesh/braid/clustermesh"
)

// ErrFingerprintMismatch is wrapped when the broker does not present a CA
// with the token's fingerprint.
var ErrFingerprintMismatch = errors.New("broker CA does not match the token's fingerprint")

// PinnedTLSConfig returns a client TLS configuration that accepts a server
// only if its chain holds a CA certificate whose SHA-256 is fingerprint and
// that CA signed the leaf for serverName. client, if not nil, is presented
// as the client certificate.
func PinnedTLSConfig(fingerprint, serverName string, client *tls.Certificate) *tls.Config {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: serverName,
		// The chain is verified in VerifyConnection against the pinned CA,
		// not against the system roots.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyPinned(cs.PeerCertificates, fingerprint, serverName)
		},
	}
	if client != nil {
		cfg.Certificates = []tls.Certificate{*client}
	}
	return cfg
}

func verifyPinned(chain []*x509.Certificate, fingerprint, serverName string) error {
	if len(chain) == 0 {
		return fmt.Errorf("%w: no certificate presented", ErrFingerprintMismatch)
	}
	var ca *x509.Certificate
	for _, c := range chain {
		if c.IsCA && certFingerprint(c.Raw) == fingerprint {
			ca = c
			break
		}
	}
	if ca == nil {
		return fmt.Errorf("%w (want sha256 %s…): check the token came from this broker, or that you reach the right host", ErrFingerprintMismatch, short(fingerprint))
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, DNSName: serverName}); err != nil {
		return fmt.Errorf("%w: %v", ErrFingerprintMismatch, err)
	}
	return nil
}

func short(fp string) string {
	if len(fp) > 16 {
		return fp[:16]
	}
	return fp
}

// NewKey generates a cluster's private key (ECDSA P-256) and a certificate
// request for cluster's etcd user. It returns the key as PKCS#8 PEM and the
// request as PEM.
func NewKey(cluster clustermesh.ClusterName) (keyPEM, csrPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key for cluster %s: %w", cluster, err)
	}
	return keyAndCSR(cluster, key)
}

func keyAndCSR(cluster clustermesh.ClusterName, key *ecdsa.PrivateKey) ([]byte, []byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: User(cluster), Organization: []string{"braid"}},
	}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate request for cluster %s: %w", cluster, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encode key for cluster %s: %w", cluster, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// User is the etcd user (and role) of cluster name; its client
// certificates carry it as their common name.
func User(name clustermesh.ClusterName) string { return "cluster-" + string(name) }

// ParseCSR decodes a PEM certificate request and checks its signature and
// that it asks for cluster's user.
func ParseCSR(csrPEM []byte, cluster clustermesh.ClusterName) (*x509.CertificateRequest, error) {
	blk, _ := pem.Decode(csrPEM)
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("certificate request: no PEM CERTIFICATE REQUEST")
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("certificate request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("certificate request: %w", err)
	}
	if csr.Subject.CommonName != User(cluster) {
		return nil, fmt.Errorf("certificate request: common name %q, want %q", csr.Subject.CommonName, User(cluster))
	}
	return csr, nil
}
