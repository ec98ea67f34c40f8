// Package pinnedtls makes HTTPS clients that accept one server: the one
// whose certificate is in a given file. The lab checks the health of
// Kubernetes components that serve with a self-signed certificate they write
// to their --cert-dir on a port picked free beforehand; another process can
// take that port first, and an unpinned check would then take its answer
// for the component's (the component exits unable to bind, after the lab
// called it healthy).
package pinnedtls

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
)

// Client returns an HTTPS client whose handshakes succeed only with a server
// presenting the first certificate of the PEM file certFile. The file is read
// at every handshake: it may not exist yet when the client is made.
func Client(certFile string) *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{
		// The certificate is self-signed and names hosts other than the
		// one dialed; VerifyConnection checks it instead.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return match(certFile, cs.PeerCertificates)
		},
	}}}
}

// match returns nil if peer's leaf certificate is the first certificate of
// the PEM file certFile, else an error naming the file.
func match(certFile string, peer []*x509.Certificate) error {
	b, err := os.ReadFile(certFile)
	if err != nil {
		return fmt.Errorf("read the serving certificate: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return fmt.Errorf("%s holds no PEM certificate", certFile)
	}
	if len(peer) == 0 || !bytes.Equal(peer[0].Raw, block.Bytes) {
		return fmt.Errorf("the server's certificate is not the one in %s: another process answers on the port", certFile)
	}
	return nil
}
