//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/broker"
	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/clustermesh/publish"
	"github.com/braidmesh/braid/clustermesh/remote"
	"github.com/braidmesh/braid/internal/etcdlab"
	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/kvstore/etcd"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestSyncSurvivesExternalMemberLoss runs Braid's publisher and remote
// watcher, with per-cluster credentials, against a real three-member etcd
// cluster (separate processes, TLS, authentication enabled by the broker
// code) and kills the leader halfway through a stream of changes: every
// change reaches the other cluster, none is lost or turned into a delete.
func TestSyncSurvivesExternalMemberLoss(t *testing.T) {
	bin := etcdlab.Binary(t)
	pki, err := broker.EnsurePKI(filepath.Join(t.TempDir(), "pki"), []string{"127.0.0.1", "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	members := etcdlab.StartCluster(t, bin, etcdlab.TLS{CertFile: pki.CertFile, KeyFile: pki.KeyFile, CAFile: pki.CAFile}, 3)
	tlsCfg, err := pki.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	const rootPassword = "e2e-root-password"
	acfg := broker.AdminConfig{Endpoints: etcdlab.Endpoints(members), TLS: tlsCfg, Password: rootPassword}
	var adminClient *clientv3.Client
	testenv.Eventually(t, 30*time.Second, func() error {
		c, err := broker.AdminClient(ctx, acfg)
		if err != nil {
			return err
		}
		if err := broker.EnableAuth(ctx, c, rootPassword); err != nil {
			c.Close()
			return err
		}
		adminClient = c
		return nil
	})
	defer adminClient.Close()

	connect := func(g clustermesh.Grant) *etcd.Store {
		creds, err := broker.AddCluster(ctx, adminClient, g)
		if err != nil {
			t.Fatal(err)
		}
		creds.Endpoints, creds.CACertPEM = etcdlab.Endpoints(members), pki.CACertPEM
		s, err := join.Connect(ctx, creds, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	storeA := connect(clustermesh.Grant{Name: "a", ID: 1, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}})
	storeB := connect(clustermesh.Grant{Name: "b", ID: 2, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16")}})

	a := clustermesh.ClusterConfig{Name: "a", ID: 1, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}}
	pub, err := publish.New(publish.Config{Cluster: a, LeaseTTL: 10 * time.Second}, storeA, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range clustermesh.Kinds {
		_ = pub.Replace(k, nil)
	}
	w, err := remote.New(remote.Config{Self: "b"}, storeB, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	changes := w.Subscribe(ctx)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{}, 2)
	go func() { _ = pub.Run(runCtx); done <- struct{}{} }()
	go func() { _ = w.Run(runCtx); done <- struct{}{} }()
	defer func() { stop(); <-done; <-done }()

	deletes := 0
	lastPort := map[string]uint16{}
	seen := func(d time.Duration, until func() bool) {
		t.Helper()
		deadline := time.After(d)
		for !until() {
			select {
			case ch := <-changes:
				switch ch.Type {
				case remote.Delete:
					deletes++
				case remote.Upsert:
					if svc, ok := ch.Record.(clustermesh.Service); ok {
						p, _ := svc.Backends[0].Port("http")
						if p < lastPort[svc.Name] {
							t.Fatalf("%s went back from port %d to %d", svc.Name, lastPort[svc.Name], p)
						}
						lastPort[svc.Name] = p
					}
				}
			case <-deadline:
				t.Fatalf("not seen within %v: %d services, counter at %d", d, len(lastPort), lastPort["counter"])
			}
		}
	}
	service := func(name string, port uint16) *clustermesh.Service {
		return &clustermesh.Service{Cluster: "a", Namespace: "default", Name: name, Global: true, Shared: true, Affinity: clustermesh.AffinityNone,
			Ports:    []clustermesh.ServicePort{{Name: "http", Port: 80, Protocol: clustermesh.TCP}},
			Backends: []clustermesh.Backend{{IP: netip.MustParseAddr("10.1.0.2"), Ports: []clustermesh.BackendPort{{Name: "http", Port: port}}, Ready: true, Serving: true}}}
	}

	const n = 300
	for i := 1; i <= n; i++ {
		if err := pub.Upsert(service(fmt.Sprintf("svc-%d", i), 1000)); err != nil {
			t.Fatal(err)
		}
		if err := pub.Upsert(service("counter", uint16(1000+i))); err != nil {
			t.Fatal(err)
		}
		if i == n/2 {
			leader := leaderOf(t, ctx, adminClient, members)
			t.Logf("killing the leader, %s, after %d changes", leader.Name, i)
			leader.Stop(t, syscall.SIGKILL, 5*time.Second)
		}
		time.Sleep(2 * time.Millisecond)
	}
	seen(60*time.Second, func() bool { return len(lastPort) == n+1 && lastPort["counter"] == 1000+n })
	if deletes != 0 {
		t.Fatalf("%d deletes reached the consumer", deletes)
	}
	if st := pub.Status(); st.LastError != "" {
		t.Logf("publisher retried after: %s (%d failures)", st.LastError, st.Failures)
	}
}

func leaderOf(t *testing.T, ctx context.Context, c *clientv3.Client, ms []*etcdlab.Member) *etcdlab.Member {
	t.Helper()
	for _, m := range ms {
		st, err := c.Status(ctx, m.Endpoint)
		if err == nil && st.Header.MemberId == st.Leader {
			return m
		}
	}
	t.Fatal("no leader found")
	return nil
}
