package etcd_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/kvstore/etcd"
	"github.com/braidmesh/braid/kvstore/etcd/etcdtest"
)

// enableAuth turns on etcd's authentication with a root user (password
// "rootpw") and user, whose password is password and who may read and
// write only under "user/".
func enableAuth(t *testing.T, ctx context.Context, admin *clientv3.Client, user, password string) {
	t.Helper()
	prefix := user + "/"
	for i, step := range []func() error{
		func() error { _, err := admin.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := admin.RoleAdd(ctx, user); return err },
		func() error {
			_, err := admin.RoleGrantPermission(ctx, user, prefix, clientv3.GetPrefixRangeEnd(prefix), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := admin.UserAdd(ctx, user, password); return err },
		func() error { _, err := admin.UserGrantRole(ctx, user, user); return err },
		func() error { _, err := admin.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatalf("auth setup step %d: %v", i, err)
		}
	}
}

// TestPermissionDenied checks that etcd's authorization errors reach callers
// as kvstore.ErrPermissionDenied, from calls, New and watches.
func TestPermissionDenied(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	admin := newStore(t, srv.Endpoints()).Client()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	enableAuth(t, ctx, admin, "cluster1", "pw1")

	_, err := etcd.New(ctx, etcd.Config{Endpoints: srv.Endpoints(), Username: "cluster1", Password: "wrong"})
	if !errors.Is(err, kvstore.ErrPermissionDenied) {
		t.Errorf("New with a wrong password: error = %v, want ErrPermissionDenied", err)
	}

	s, err := etcd.New(ctx, etcd.Config{Endpoints: srv.Endpoints(), Username: "cluster1", Password: "pw1"})
	if err != nil {
		t.Fatalf("New with a restricted user: %v", err)
	}
	defer s.Close()
	if err := s.Put(ctx, "cluster1/a", []byte("v"), 0); err != nil {
		t.Fatalf("Put inside the granted prefix: %v", err)
	}
	if err := s.Put(ctx, "cluster2/a", []byte("v"), 0); !errors.Is(err, kvstore.ErrPermissionDenied) {
		t.Errorf("Put outside the granted prefix: error = %v, want ErrPermissionDenied", err)
	}
	if _, err := s.Get(ctx, "cluster2/a"); !errors.Is(err, kvstore.ErrPermissionDenied) {
		t.Errorf("Get outside the granted prefix: error = %v, want ErrPermissionDenied", err)
	}
	if _, _, err := s.List(ctx, "cluster2/"); !errors.Is(err, kvstore.ErrPermissionDenied) {
		t.Errorf("List outside the granted prefix: error = %v, want ErrPermissionDenied", err)
	}

	w := s.Watch(ctx, "cluster2/")
	select {
	case ev := <-w:
		if ev.Kind != kvstore.EventError || !errors.Is(ev.Err, kvstore.ErrPermissionDenied) {
			t.Errorf("watch outside the granted prefix: first event %+v, want EventError with ErrPermissionDenied", ev)
		}
	case <-ctx.Done():
		t.Fatal("no event from a watch outside the granted prefix")
	}
	w = s.Watch(ctx, "cluster1/")
	if ev := <-w; ev.Kind != kvstore.EventUpsert || ev.Key != "cluster1/a" {
		t.Errorf("watch inside the granted prefix: first event %+v, want upsert of cluster1/a", ev)
	}
}

// TestWatchAfterAuthChange checks that a watch made after users or roles
// changed works without an error event, on etcd with JWT tokens: etcd
// checks a new watch against its stream's token, whose auth revision the
// change made old, so the store must put it on a new stream. Watches made
// before the change keep working.
func TestWatchAfterAuthChange(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "token.key")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := etcdtest.Start(t, etcdtest.WithConfig(func(c *embed.Config) {
		c.AuthToken = "jwt,priv-key=" + keyFile + ",sign-method=ES256"
	}))
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	admin := newStore(t, srv.Endpoints()).Client()
	enableAuth(t, ctx, admin, "c1", "pw1")
	root, err := etcd.New(ctx, etcd.Config{Endpoints: srv.Endpoints(), Username: "root", Password: "rootpw"})
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	s, err := etcd.New(ctx, etcd.Config{Endpoints: srv.Endpoints(), Username: "c1", Password: "pw1"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	// next returns the next event that is not a progress notification,
	// failing on an error event.
	next := func(name string, w <-chan kvstore.Event) kvstore.Event {
		t.Helper()
		for {
			select {
			case ev := <-w:
				if ev.Kind == kvstore.EventError {
					t.Fatalf("%s: error event: %v", name, ev.Err)
				}
				if ev.Kind != kvstore.EventProgress {
					return ev
				}
			case <-ctx.Done():
				t.Fatalf("%s: no event", name)
			}
		}
	}
	before := s.Watch(ctx, "c1/a/")
	if ev := next("watch before", before); ev.Kind != kvstore.EventListDone {
		t.Fatalf("watch before: first event %+v, want EventListDone", ev)
	}
	// An event through it: its stream is open, with the current token.
	if err := s.Put(ctx, "c1/a/0", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	if ev := next("watch before", before); ev.Kind != kvstore.EventUpsert || ev.Key != "c1/a/0" {
		t.Fatalf("watch before: %+v, want upsert of c1/a/0", ev)
	}
	// Any change to users or roles makes every token's auth revision old.
	if _, err := root.Client().UserAdd(ctx, "c2", "pw2"); err != nil {
		t.Fatal(err)
	}
	after := s.Watch(ctx, "c1/b/")
	if ev := next("watch after", after); ev.Kind != kvstore.EventListDone {
		t.Fatalf("watch after: first event %+v, want EventListDone", ev)
	}
	for _, k := range []string{"c1/a/x", "c1/b/x"} {
		if err := s.Put(ctx, k, []byte("v"), 0); err != nil {
			t.Fatal(err)
		}
	}
	if ev := next("watch before", before); ev.Kind != kvstore.EventUpsert || ev.Key != "c1/a/x" {
		t.Errorf("watch before: %+v, want upsert of c1/a/x", ev)
	}
	if ev := next("watch after", after); ev.Kind != kvstore.EventUpsert || ev.Key != "c1/b/x" {
		t.Errorf("watch after: %+v, want upsert of c1/b/x", ev)
	}
}
