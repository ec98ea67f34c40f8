package etcd_test

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/kvstore/etcd"
	"github.com/braidmesh/braid/kvstore/etcd/etcdtest"
)

// TestPermissionDenied checks that etcd's authorization errors reach callers
// as kvstore.ErrPermissionDenied, from calls, New and watches.
func TestPermissionDenied(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	admin := newStore(t, srv.Endpoints()).Client()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	steps := []func() error{
		func() error { _, err := admin.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := admin.RoleAdd(ctx, "cluster1"); return err },
		func() error {
			_, err := admin.RoleGrantPermission(ctx, "cluster1", "cluster1/", clientv3.GetPrefixRangeEnd("cluster1/"), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := admin.UserAdd(ctx, "cluster1", "pw1"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "cluster1", "cluster1"); return err },
		func() error { _, err := admin.AuthEnable(ctx); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("auth setup step %d: %v", i, err)
		}
	}

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
