package meshsim

import (
	"errors"
	"log/slog"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/broker"
	"github.com/braidmesh/braid/kvstore/etcd/etcdtest"
)

// TestRawKeyGrantsSurviveTheBrokersRoleSync grants the raw key as Run
// does and then syncs the cluster roles as a starting broker does (it may
// do so after its root user first answers, so after Run's grants): the
// first consumer cluster must still write the raw key, the second read
// and not write it.
func TestRawKeyGrantsSurviveTheBrokersRoleSync(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithoutFsync())
	ctx := t.Context()
	admin, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	const rootPassword = "root-password-for-the-test"
	if err := broker.EnableAuth(ctx, admin, rootPassword); err != nil {
		t.Fatal(err)
	}
	admin.Close()
	if admin, err = clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), Username: broker.RootUser, Password: rootPassword}); err != nil {
		t.Fatal(err)
	}
	defer admin.Close()

	var consumers []*simCluster
	var creds [][2]string
	for id := range clustermesh.ClusterID(2) {
		c, err := newSimCluster(id+1, shape{nodes: 1, endpoints: 1})
		if err != nil {
			t.Fatal(err)
		}
		cr, err := broker.AddCluster(ctx, admin, c.cfg.Grant())
		if err != nil {
			t.Fatal(err)
		}
		consumers = append(consumers, c)
		creds = append(creds, [2]string{cr.Username, cr.Password})
	}
	if err := grantRawKey(ctx, admin, consumers); err != nil {
		t.Fatal(err)
	}
	if _, err := broker.SyncClusterRoles(ctx, admin); err != nil {
		t.Fatal(err)
	}

	client := func(i int) *clientv3.Client {
		c, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), Username: creds[i][0], Password: creds[i][1]})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	writer, reader := client(0), client(1)
	if _, err := writer.Put(ctx, rawKey, "1"); err != nil {
		t.Fatalf("first consumer cluster puts the raw key after the role sync: %v", err)
	}
	if resp, err := reader.Get(ctx, rawKey); err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("second consumer cluster reads the raw key after the role sync: %v %v", resp, err)
	}
	if _, err := reader.Put(ctx, rawKey, "2"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("second consumer cluster puts the raw key: %v, want %v", err, rpctypes.ErrPermissionDenied)
	}

	revokeRawKey(ctx, admin, slog.New(slog.DiscardHandler))
	if _, err := writer.Put(ctx, rawKey, "3"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("after revokeRawKey the first consumer cluster puts the raw key: %v, want %v", err, rpctypes.ErrPermissionDenied)
	}
}
