package pinnedtls_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/braidmesh/braid/internal/lab/pinnedtls"
)

func TestClientAcceptsOnlyThePinnedServer(t *testing.T) {
	ok := func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok")) }
	pinned := httptest.NewTLSServer(http.HandlerFunc(ok))
	defer pinned.Close()
	// httptest's servers share one certificate: give the other its own.
	other := httptest.NewUnstartedServer(http.HandlerFunc(ok))
	other.TLS = &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}}
	other.StartTLS()
	defer other.Close()

	certFile := filepath.Join(t.TempDir(), "kube-scheduler.crt")
	client := pinnedtls.Client(certFile)
	defer client.CloseIdleConnections()

	if _, err := client.Get(pinned.URL); err == nil || !strings.Contains(err.Error(), "read the serving certificate") {
		t.Fatalf("GET before the certificate file exists: %v, want an error reading it", err)
	}
	leaf := pinned.TLS.Certificates[0].Certificate[0]
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf}), 0o600); err != nil {
		t.Fatal(err)
	}
	resp, err := client.Get(pinned.URL)
	if err != nil {
		t.Fatalf("GET the pinned server: %v", err)
	}
	resp.Body.Close()
	if _, err := client.Get(other.URL); err == nil || !strings.Contains(err.Error(), "another process answers") {
		t.Fatalf("GET another server: %v, want the certificate refused", err)
	}
}

func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "other"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
