package remote_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/remote"
	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/kvstore/etcd"
	"github.com/braidmesh/braid/kvstore/etcd/etcdtest"
)

// TestStaleWithoutProgress follows a cluster over a real etcd through a
// proxy: while progress notifications arrive the cluster is synced and not
// stale; once the proxy silently cuts the consumer off (the etcd client
// retries without reporting an error) it turns stale, with the time it was
// last heard from; after healing it is fresh again.
func TestStaleWithoutProgress(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	proxy := etcdtest.NewProxy(t, srv.Addr())
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	pub, err := etcd.New(ctx, etcd.Config{Endpoints: srv.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	cons, err := etcd.New(ctx, etcd.Config{Endpoints: proxy.Endpoints(), ProgressInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()

	publishCluster(t, ctx, pub, cluster("a", 1), 2, 5*time.Second)
	w, err := remote.New(remote.Config{Self: "b", StaleAfter: 300 * time.Millisecond}, cons, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := w.Run(ctx); err != nil {
			t.Errorf("watcher: %v", err)
		}
	}()
	defer func() { cancel(); <-done }()

	status := func() (clustermesh.RemoteClusterStatus, error) {
		for _, st := range w.Status() {
			if st.Name == "a" {
				return st, nil
			}
		}
		return clustermesh.RemoteClusterStatus{}, errors.New("cluster a not in status")
	}
	fresh := func() error {
		st, err := status()
		if err != nil {
			return err
		}
		if !st.Synced || st.LastProgress.IsZero() || st.Stale {
			return fmt.Errorf("cluster a: synced %v, last progress %v, stale %v; want synced, progress, not stale", st.Synced, st.LastProgress, st.Stale)
		}
		return nil
	}
	testenv.Eventually(t, 20*time.Second, fresh)

	proxy.Partition()
	cutAt := time.Now()
	testenv.Eventually(t, 20*time.Second, func() error {
		st, err := status()
		if err != nil {
			return err
		}
		if !st.Stale {
			return fmt.Errorf("cluster a not stale (connected %v, last progress %v)", st.Connected, st.LastProgress)
		}
		if !st.Connected {
			return errors.New("cluster a disconnected: the partition was reported as an error")
		}
		if heard := st.LastHeard(); heard.IsZero() || heard.After(cutAt) && heard.Sub(cutAt) > time.Second {
			return fmt.Errorf("cluster a stale but last heard %v (cut at %v)", heard, cutAt)
		}
		return nil
	})

	proxy.Heal()
	testenv.Eventually(t, 30*time.Second, fresh)
}
