//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/broker"
	"github.com/braidmesh/braid/clustermesh/remote"
	"github.com/braidmesh/braid/clustermesh/sim"
	"github.com/braidmesh/braid/clustermesh/status"
	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/kvstore/etcd"
)

type meshCluster struct {
	cfg    clustermesh.ClusterConfig
	join   string
	status string // base URL
	proc   *proc
}

// TestThreeClustersOneBroker runs a broker and three braid-operator
// processes with simulated clusters, then kills and restarts them.
func TestThreeClustersOneBroker(t *testing.T) {
	dir := t.TempDir()
	clientPort, peerPort := testenv.FreePort(t), testenv.FreePort(t)
	endpoint := url(clientPort)
	dataDir := filepath.Join(dir, "broker")
	start(t, "braid", "broker", "--data-dir", dataDir, "--listen", endpoint, "--listen-peer", url(peerPort), "--log-level", "warn")

	const ttl = 2 * time.Second
	var clusters []*meshCluster
	for i, name := range []string{"a", "b", "c"} {
		id := i + 1
		c := &meshCluster{cfg: clustermesh.ClusterConfig{Name: clustermesh.ClusterName(name), ID: clustermesh.ClusterID(id),
			PodCIDRs: []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/16", id))}}}
		c.join = filepath.Join(dir, name+".join.json")
		testenv.Eventually(t, 30*time.Second, func() error {
			_, err := execOut("braid", "broker", "add-cluster", name, "--data-dir", dataDir, "--etcd-endpoints", endpoint, "--out", c.join,
				"--cluster-id", fmt.Sprint(id), "--pod-cidr", c.cfg.PodCIDRs[0].String())
			return err
		})
		state, err := sim.Generate(c.cfg, 5, 6, []string{"web", "api"})
		if err != nil {
			t.Fatal(err)
		}
		stateFile := filepath.Join(dir, name+".state.json")
		if err := sim.WriteStateFile(stateFile, state); err != nil {
			t.Fatal(err)
		}
		port := testenv.FreePort(t)
		c.status = fmt.Sprintf("http://127.0.0.1:%d", port)
		c.proc = start(t, "braid-operator", "--join", c.join, "--cluster-id", fmt.Sprint(id), "--pod-cidr", c.cfg.PodCIDRs[0].String(),
			"--state-file", stateFile, "--lease-ttl", ttl.String(), "--status-addr", fmt.Sprintf("127.0.0.1:%d", port), "--log-level", "warn")
		clusters = append(clusters, c)
	}

	// A consumer outside the mesh, with root credentials, records every
	// change it sees for the whole run.
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	adminCfg, err := broker.LocalAdminConfig(dataDir, []string{endpoint})
	if err != nil {
		t.Fatal(err)
	}
	admin, err := broker.AdminClient(ctx, adminCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	rootStore := etcd.NewFromClient(admin)
	consumer, err := remote.New(remote.Config{}, rootStore, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu      sync.Mutex
		deletes = map[clustermesh.ClusterName]int{}
	)
	changes := consumer.Subscribe(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = consumer.Run(ctx) }()
	go func() {
		defer wg.Done()
		for ch := range changes {
			if ch.Type == remote.Delete {
				mu.Lock()
				deletes[ch.Cluster]++
				mu.Unlock()
			}
		}
	}()
	defer wg.Wait()
	defer cancel()

	sees := func(c *meshCluster, want map[clustermesh.ClusterName]string) func() error {
		return func() error {
			s, err := status.Fetch(ctx, http.DefaultClient, c.status)
			if err != nil {
				return err
			}
			got := map[clustermesh.ClusterName]string{}
			for _, r := range s.Remotes {
				switch {
				case r.Gone:
					got[r.Name] = "gone"
				case r.Synced && r.Connected:
					got[r.Name] = "synced"
				default:
					got[r.Name] = "syncing"
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				return fmt.Errorf("cluster %s sees %v, want %v", c.cfg.Name, got, want)
			}
			return nil
		}
	}
	for _, c := range clusters {
		want := map[clustermesh.ClusterName]string{}
		for _, o := range clusters {
			if o != c {
				want[o.cfg.Name] = "synced"
			}
		}
		testenv.Eventually(t, 30*time.Second, sees(c, want))
	}
	t.Log("each cluster sees the other two synced")

	out := run(t, "braid", "status", "--url", clusters[0].status)
	for _, name := range []string{"b", "c"} {
		if !statusRowSays(out, name, "synced") {
			t.Errorf("braid status output lacks remote %s synced:\n%s", name, out)
		}
	}

	// Restarts: killed and restarted within the TTL, and stopped cleanly
	// and restarted. No consumer may see a delete.
	b := clusters[1]
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		b.proc.restart(t, sig)
		testenv.Eventually(t, 30*time.Second, func() error {
			s, err := status.Fetch(ctx, http.DefaultClient, b.status)
			if err != nil {
				return err
			}
			if !s.Publish.Registered || len(s.Publish.Synced) != len(clustermesh.Kinds) {
				return fmt.Errorf("restarted b not published yet: %+v", s.Publish)
			}
			return nil
		})
		testenv.Eventually(t, 30*time.Second, sees(clusters[0], map[clustermesh.ClusterName]string{"b": "synced", "c": "synced"}))
	}
	// Nothing may expire: every key of b's is on one lease that is still
	// alive past the time it would have expired unrenewed.
	testenv.Eventually(t, 30*time.Second, leaseOutlivesTTL(ctx, rootStore, admin, "b"))
	if err := sees(clusters[0], map[clustermesh.ClusterName]string{"b": "synced", "c": "synced"})(); err != nil {
		t.Error(err)
	}

	// An entry forged under b's prefix with root credentials, claiming
	// cluster c's identity range, is rejected and counted.
	forged := clustermesh.Identity{ID: 3<<16 + 77, Cluster: "b", Labels: map[string]string{"app": "forged"}}
	val, _ := json.Marshal(forged)
	if err := rootStore.Put(ctx, forged.Key(), val, 0); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		s, err := status.Fetch(ctx, http.DefaultClient, clusters[0].status)
		if err != nil {
			return err
		}
		for _, r := range s.Remotes {
			if r.Name == "b" && r.Invalid >= 1 && strings.Contains(r.LastError, "outside cluster") {
				return nil
			}
		}
		return fmt.Errorf("a's status does not count the forged entry: %+v", s.Remotes)
	})
	// The consumer must have seen (and counted) the entry before its
	// snapshot can show that it was not applied.
	testenv.Eventually(t, 10*time.Second, func() error {
		for _, r := range consumer.Status() {
			if r.Name == "b" && r.Invalid >= 1 && strings.Contains(r.LastError, "outside cluster") {
				return nil
			}
		}
		return fmt.Errorf("the consumer does not count the forged entry: %+v", consumer.Status())
	})
	if _, ok := consumer.Snapshot().Clusters["b"].Identities[forged.ID]; ok {
		t.Fatal("forged identity applied by a consumer")
	}
	// The consumer has now seen b's entries up to the forged one, written
	// after the restarts.
	mu.Lock()
	if n := deletes["b"]; n != 0 {
		t.Errorf("restarting b's operator made consumers see %d deletes", n)
	}
	mu.Unlock()
	_ = rootStore.Delete(ctx, forged.Key())

	// c dies: after its lease TTL, the others show it gone and its
	// entries are drained.
	c := clusters[2]
	killed := time.Now()
	c.proc.stop(syscall.SIGKILL)
	for _, o := range clusters[:2] {
		want := map[clustermesh.ClusterName]string{"c": "gone"}
		for _, x := range clusters[:2] {
			if x != o {
				want[x.cfg.Name] = "synced"
			}
		}
		testenv.Eventually(t, ttl+15*time.Second, sees(o, want))
	}
	t.Logf("c killed: marked gone by a and b after %v (lease TTL %v)", time.Since(killed).Round(time.Millisecond), ttl)
	mu.Lock()
	if deletes["c"] == 0 {
		t.Error("no deletes seen for the dead cluster c")
	}
	if deletes["b"] != 0 || deletes["a"] != 0 {
		t.Errorf("deletes for live clusters: %v", deletes)
	}
	mu.Unlock()
}

// leaseOutlivesTTL returns a check that passes once every key cluster owns
// is bound to a lease and every one of those leases is still alive a full
// granted TTL after the check first saw it: the running process renews
// them, so none of the cluster's keys can expire.
func leaseOutlivesTTL(ctx context.Context, store kvstore.Store, cli *clientv3.Client, cluster clustermesh.ClusterName) func() error {
	seen := map[kvstore.LeaseID]time.Time{} // lease -> when it has outlived its TTL
	return func() error {
		leases := map[kvstore.LeaseID]int{}
		for _, p := range append(clustermesh.OwnedPrefixes(cluster), clustermesh.ClusterKey(cluster)) {
			kvs, _, err := store.List(ctx, p)
			if err != nil {
				return err
			}
			for _, kv := range kvs {
				leases[kv.Lease]++
			}
		}
		if len(leases) == 0 || leases[0] > 0 {
			return fmt.Errorf("%s's keys are on leases %v, want every key on a lease", cluster, leases)
		}
		for lease := range leases {
			ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(lease))
			if err != nil {
				return err
			}
			if ttl.TTL <= 0 {
				return fmt.Errorf("%s's lease %x is gone (TTL %d)", cluster, lease, ttl.TTL)
			}
			deadline, ok := seen[lease]
			if !ok {
				deadline = time.Now().Add(time.Duration(ttl.GrantedTTL) * time.Second)
				seen[lease] = deadline
			}
			if time.Now().Before(deadline) {
				return fmt.Errorf("%s's lease %x alive; waiting past its TTL of %ds", cluster, lease, ttl.GrantedTTL)
			}
		}
		return nil
	}
}

func execOut(name string, args ...string) (string, error) {
	cmd := execCommand(name, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %v: %w: %s", name, args, err, out)
	}
	return string(out), nil
}

// statusRowSays reports whether braid status output has a remote row for
// cluster name whose state column (the third) is state.
func statusRowSays(out, name, state string) bool {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == name && f[2] == state {
			return true
		}
	}
	return false
}
