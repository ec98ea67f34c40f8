package broker

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/internal/testenv"
)

// TestConnectNamesTheCause checks that a join bundle with the wrong CA and a
// bundle pointing at a dead endpoint fail with errors naming the cause and a
// hint, not only etcd's "context deadline exceeded".
func TestConnectNamesTheCause(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "broker")
	ports := testenv.FreePorts(t, 2)
	b := startBroker(t, dir, ports[0], ports[1])
	creds, err := b.AddCluster(t.Context(), testGrant("east"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := EnsurePKI(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	wrongCA := creds
	wrongCA.CACertPEM = other.CACertPEM

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := ln.Addr().String()
	ln.Close() // nothing listens there now: connections are refused
	dead := creds
	dead.Endpoints = []string{"https://" + deadAddr}

	for _, tc := range []struct {
		name  string
		creds join.Credentials
		want  []string
	}{
		{"wrong CA", wrongCA, []string{"x509: certificate signed by unknown authority", "hint:", "join bundle"}},
		{"dead endpoint", dead, []string{"connection refused at " + deadAddr, "hint:"}},
	} {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		s, err := join.Connect(ctx, tc.creds, testLogger(t))
		if err == nil {
			s.Close()
			t.Errorf("%s: Connect succeeded", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: Connect error %q does not contain %q", tc.name, err, w)
			}
		}
		// The broker's own admin client path says the same.
		tlsCfg, _ := tc.creds.TLSConfig()
		_, err = AdminClient(ctx, AdminConfig{Endpoints: tc.creds.Endpoints, TLS: tlsCfg, Password: "unused", DialTimeout: time.Second})
		if err == nil || !strings.Contains(err.Error(), tc.want[0]) {
			t.Errorf("%s: AdminClient error %v, want it to contain %q", tc.name, err, tc.want[0])
		}
	}
}
