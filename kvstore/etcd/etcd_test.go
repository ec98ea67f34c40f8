package etcd_test

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/braidmesh/braid/kvstore/etcd"
	"github.com/braidmesh/braid/kvstore/etcd/etcdtest"
	"github.com/braidmesh/braid/kvstore/kvstoretest"
)

// newStore connects a store to endpoints and closes it when t ends.
func newStore(t testing.TB, endpoints []string) *etcd.Store {
	t.Helper()
	s, err := etcd.New(t.Context(), etcd.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	kvstoretest.Run(t, func(t *testing.T) kvstoretest.Harness {
		srv := etcdtest.Start(t)
		proxy := etcdtest.NewProxy(t, srv.Addr())
		store := newStore(t, proxy.Endpoints()) // through the proxy, to be partitioned
		peer := newStore(t, srv.Endpoints())
		return kvstoretest.Harness{
			Store: store,
			Peer:  peer,
			Compact: func(ctx context.Context, rev int64) error {
				_, err := peer.Client().Compact(ctx, rev, clientv3.WithCompactPhysical())
				return err
			},
			// Open watch streams hold up the server's shutdown for 5 s; cut
			// them first, as a crash would.
			Restart: func(t *testing.T) {
				proxy.Partition()
				srv.Restart(t)
				proxy.Heal()
			},
			Partition: func(t *testing.T) func() {
				proxy.Partition()
				return proxy.Heal
			},
		}
	})
}
