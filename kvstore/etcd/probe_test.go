package etcd_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/braidmesh/braid/kvstore/etcd"
	"github.com/braidmesh/braid/kvstore/etcd/etcdtest"
)

// TestNewNamesRefusedEndpoint checks that New against a stopped etcd says
// "connection refused at ADDRESS" with a hint, not only that its deadline
// passed, and that it connects once the server is back.
func TestNewNamesRefusedEndpoint(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	srv.Stop()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	_, err := etcd.New(ctx, etcd.Config{Endpoints: srv.Endpoints(), DialTimeout: time.Second})
	if err == nil {
		t.Fatal("New against a stopped server succeeded")
	}
	for _, want := range []string{"connection refused at " + srv.Addr(), "hint:"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("New error %q does not contain %q", err, want)
		}
	}
	srv.Restart(t)
	s, err := etcd.New(ctx, etcd.Config{Endpoints: srv.Endpoints(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("New after restart: %v", err)
	}
	s.Close()
}
