//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/broker"
	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/clustermesh/status"
	"github.com/braidmesh/braid/internal/lab"
	"github.com/braidmesh/braid/internal/testenv"
)

// braid runs the braid CLI and returns what it printed (stdout, then
// stderr).
func braid(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var out, errOut bytes.Buffer
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "braid"), args...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("braid %s: %w: %s", args[0], err, strings.TrimSpace(errOut.String()))
	}
	return out.String() + errOut.String(), err
}

// TestJoinWithToken joins a third cluster to a running two-cluster lab
// mesh with `braid token create` and `braid join`, after checking that
// every bad token is refused with nothing changed; reaches its service from
// the others, checks `braid status -o json` and leaves with `braid leave`.
//
// The lab cannot run Braid's images: when join has stored the cluster's
// Secret, the test starts braid-operator and the agents with the bundle
// from it, as the pods join applied would (their containers run as the lab
// node's stand-ins). join waits, as it does by default, until north's
// operator has published everything and the agent of each of north's
// nodes reports synced in the status it publishes to the broker; the test
// checks that this holds on the broker when join returns.
func TestJoinWithToken(t *testing.T) {
	kubeBin := requireLab(t)
	ctx := context.Background()
	l, err := lab.Up(ctx, lab.Config{Clusters: 2, Nodes: 1, Spare: 1, Dir: t.TempDir(), KubeBin: kubeBin, Bin: bin,
		LeaseTTL: 10 * time.Second, Progress: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("tear down the lab: %v", err)
		}
		checkNoLeftovers(t, l.Run, l.Dir)
	})
	e := &labEnv{Lab: l, east: l.Cluster("east"), west: l.Cluster("west")}
	for _, c := range l.Clusters {
		e.mustKubectl(t, c, nil, "apply", "-f", "../deploy/examples/")
	}
	brokerDir := filepath.Join(l.Dir, "broker")
	adminCfg, err := broker.LocalAdminConfig(brokerDir, []string{l.Broker})
	if err != nil {
		t.Fatal(err)
	}
	admin, err := broker.AdminClient(ctx, adminCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	adminFlags := []string{"--data-dir", brokerDir, "--etcd-endpoints", l.Broker}

	north, err := l.AddCluster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if north.Name != "north" {
		t.Fatalf("the spare cluster is %s, want north", north.Name)
	}
	// The examples run in north before it joins; its web becomes part of
	// the global service once its operator publishes it.
	e.mustKubectl(t, north, nil, "apply", "-f", "../deploy/examples/")
	joinArgs := func(token string, c *lab.Cluster, id int) []string {
		return []string{"join", token, "--cluster", "north", "--id", fmt.Sprint(id),
			"--pod-cidr", north.PodCIDR.String(), "--service-cidr", north.ServiceCIDR.String(),
			"--kubeconfig", c.Kubeconfig, "--manifests", "../deploy", "--timeout", "3m"}
	}
	refused := func(t *testing.T, out string, err error, want string) {
		t.Helper()
		if err == nil {
			t.Fatalf("accepted; want refused with %q:\n%s", want, out)
		}
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("refused with %v; want an error containing %q", err, want)
		}
	}
	// Nothing of north may exist in the broker's etcd, and a cluster
	// refused must have nothing of Braid.
	unchanged := func(t *testing.T, c *lab.Cluster) {
		t.Helper()
		keys := append([]string{join.MemberKey("north"), clustermesh.ClusterKey("north"), clustermesh.GrantKey("north")},
			clustermesh.OwnedPrefixes("north")...)
		for _, k := range keys {
			resp, err := admin.Get(ctx, k, clientv3.WithPrefix(), clientv3.WithCountOnly())
			if err != nil {
				t.Fatal(err)
			}
			if resp.Count != 0 {
				t.Errorf("refused join left %d keys at %s in the broker", resp.Count, k)
			}
		}
		if _, err := admin.UserGet(ctx, broker.ClusterUser("north")); !errors.Is(err, rpctypes.ErrUserNotFound) {
			t.Errorf("refused join: etcd user %s: %v, want not found", broker.ClusterUser("north"), err)
		}
		if _, err := c.Client.CoreV1().Namespaces().Get(ctx, "braid-system", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("refused join: namespace braid-system in cluster %s: %v, want not found", c.Name, err)
		}
	}

	// A token for a name in the mesh is not even issued.
	out, err := braid(t, append([]string{"token", "create", "--cluster", "east"}, adminFlags...)...)
	refused(t, out, err, `cluster name "east" is taken`)

	out, err = braid(t, append([]string{"token", "create", "--cluster", "north", "--ttl", "10m"}, adminFlags...)...)
	if err != nil {
		t.Fatal(err)
	}
	token := strings.SplitN(out, "\n", 2)[0]
	tok, err := join.ParseToken(token)
	if err != nil {
		t.Fatalf("token create printed %q: %v", out, err)
	}
	if tok.JoinURL != l.BrokerJoin {
		t.Errorf("token names join endpoint %s, the broker's is %s", tok.JoinURL, l.BrokerJoin)
	}

	t.Run("RefusedWithNothingChanged", func(t *testing.T) {
		out, err := braid(t, joinArgs(token, north, int(e.east.ID))...)
		refused(t, out, err, fmt.Sprintf("cluster ID %d taken by cluster \"east\"", e.east.ID))
		unchanged(t, north)

		forged := tok
		forged.CAFingerprint = strings.Repeat("ab", 32)
		out, err = braid(t, joinArgs(forged.String(), north, int(north.ID))...)
		refused(t, out, err, join.ErrFingerprintMismatch.Error())
		unchanged(t, north)

		issued := time.Now()
		out, err = braid(t, append([]string{"token", "create", "--cluster", "north", "--ttl", "1ms"}, adminFlags...)...)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Until(issued.Add(time.Millisecond))) // the token's expiry, not a guess: it has passed after this
		out, err = braid(t, joinArgs(strings.SplitN(out, "\n", 2)[0], north, int(north.ID))...)
		refused(t, out, err, "token expired at")
		unchanged(t, north)
	})
	if t.Failed() {
		t.FailNow()
	}

	// The join. When it has stored the Secret, run Braid with the bundle
	// in it; join itself waits for the operator and agents.
	start := time.Now()
	var joinOut bytes.Buffer
	cmd := exec.Command(filepath.Join(bin, "braid"), joinArgs(token, north, int(north.ID))...)
	cmd.Stdout, cmd.Stderr = &joinOut, &joinOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	joined := make(chan error, 1)
	go func() { joined <- cmd.Wait() }()
	bundle := filepath.Join(t.TempDir(), "north.join.json")
	var secretData map[string][]byte
	testenv.Eventually(t, 3*time.Minute, func() error {
		s, err := north.Client.CoreV1().Secrets("braid-system").Get(ctx, "braid-join", metav1.GetOptions{})
		if err != nil {
			select {
			case err := <-joined:
				t.Fatalf("braid join ended before storing its Secret: %v\n%s", err, joinOut.String())
			default:
			}
			return err
		}
		secretData = s.Data
		return nil
	})
	if err := os.WriteFile(bundle, secretData["join.json"], 0o600); err != nil {
		t.Fatal(err)
	}
	if err := north.StartBraid(bundle); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-joined:
		if err != nil {
			t.Fatalf("braid join: %v\n%s", err, joinOut.String())
		}
	case <-time.After(4 * time.Minute):
		_ = cmd.Process.Kill()
		t.Fatalf("braid join still runs after 4 minutes (its --timeout is 3m):\n%s", joinOut.String())
	}
	t.Logf("braid join output:\n%s", joinOut.String())
	// join said so, and the broker agrees: north's operator published every
	// kind and each node's agent reports synced.
	for _, n := range north.Nodes {
		if want := fmt.Sprintf("node %s: synced", n.Name); !strings.Contains(joinOut.String(), want) {
			t.Errorf("braid join output lacks %q", want)
		}
	}
	if want := fmt.Sprintf("every agent synced (%d nodes)", len(north.Nodes)); !strings.Contains(joinOut.String(), want) {
		t.Errorf("braid join output lacks %q", want)
	}
	checkJoinedOnBroker(t, ctx, admin, north)
	if pods, err := e.kubectl(t, north, nil, "-n", "braid-system", "get", "pods", "-o", "wide"); err == nil {
		t.Logf("north's braid-system pods (stand-ins):\n%s", pods)
	}
	if err := l.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("measurement: braid join of a third cluster until every operator and agent synced it: %v (issue 12's goal: under 30 s)",
		time.Since(start).Round(100*time.Millisecond))

	t.Run("NoPasswordWritten", func(t *testing.T) {
		var creds join.Credentials
		if err := json.Unmarshal(secretData["join.json"], &creds); err != nil {
			t.Fatal(err)
		}
		if creds.Password != "" || creds.Username != "" || len(creds.CertPEM) == 0 || len(creds.KeyPEM) == 0 {
			t.Errorf("join bundle: username %q, password set %v, certificate %d bytes, key %d bytes; want a certificate and key only",
				creds.Username, creds.Password != "", len(creds.CertPEM), len(creds.KeyPEM))
		}
		secrets, err := north.Client.CoreV1().Secrets("braid-system").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range secrets.Items {
			for k, v := range s.Data {
				if bytes.Contains(bytes.ToLower(v), []byte(`"password"`)) {
					t.Errorf("Secret %s key %s holds a password field", s.Name, k)
				}
			}
		}
	})

	t.Run("ReachableFromTheOthers", func(t *testing.T) {
		for _, c := range l.Clusters {
			for _, d := range []string{"web", "client"} {
				e.mustKubectl(t, c, nil, "rollout", "status", "deployment/"+d, "--timeout=180s")
			}
		}
		for _, c := range []*lab.Cluster{e.east, e.west} {
			vip := e.vip(t, c, "web")
			testenv.Eventually(t, 90*time.Second, func() error {
				id, err := e.call(t, c, "http://"+vip+":8080/")
				if err != nil {
					return err
				}
				if id.Cluster != "north" {
					return fmt.Errorf("cluster %s's client was answered by %s, not yet by north", c.Name, id.Cluster)
				}
				return nil
			})
			t.Logf("measurement: north's web answers cluster %s's client %v after braid join began", c.Name, time.Since(start).Round(100*time.Millisecond))
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	t.Run("ReusedTokenRefused", func(t *testing.T) {
		// Against west, which never joined with a token: only the broker
		// can refuse it.
		out, err := braid(t, joinArgs(token, e.west, int(north.ID))...)
		refused(t, out, err, "token already used")
		if _, err := e.west.Client.CoreV1().Namespaces().Get(ctx, "braid-system", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("refused join: namespace braid-system in west: %v, want not found", err)
		}
		resp, err := admin.Get(ctx, join.MemberKey("north"))
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("north's member record after the refused reuse: %v %v", resp, err)
		}
		var m join.Member
		if err := json.Unmarshal(resp.Kvs[0].Value, &m); err != nil || m.Config.ID != north.ID || len(m.Serials) != 1 {
			t.Errorf("north's member record changed by the refused reuse: %+v %v", m, err)
		}
	})

	t.Run("StatusJSON", func(t *testing.T) { e.checkStatusJSON(t, north) })

	t.Run("Leave", func(t *testing.T) {
		out, err := braid(t, "leave", "--kubeconfig", north.Kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("braid leave:\n%s", out)
		north.StopBraid() // leave deleted the Deployment and DaemonSet: their pods end
		unchanged := []string{join.MemberKey("north"), clustermesh.ClusterKey("north"), clustermesh.GrantKey("north")}
		for _, k := range append(unchanged, clustermesh.OwnedPrefixes("north")...) {
			resp, err := admin.Get(ctx, k, clientv3.WithPrefix(), clientv3.WithCountOnly())
			if err != nil || resp.Count != 0 {
				t.Errorf("after leave: %d keys at %s in the broker (%v)", resp.Count, k, err)
			}
		}
		if _, err := admin.UserGet(ctx, broker.ClusterUser("north")); !errors.Is(err, rpctypes.ErrUserNotFound) {
			t.Errorf("after leave: etcd user %s: %v, want not found", broker.ClusterUser("north"), err)
		}
		if _, err := north.Client.CoreV1().Secrets("braid-system").Get(ctx, "braid-join", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("after leave: Secret braid-join: %v, want not found", err)
		}
		if _, err := north.Client.AppsV1().Deployments("braid-system").Get(ctx, "braid-operator", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("after leave: Deployment braid-operator: %v, want not found", err)
		}
		// Its services vanish from the others: their agents drop north,
		// then no connection reaches it.
		client := &http.Client{Timeout: 2 * time.Second}
		for _, c := range []*lab.Cluster{e.east, e.west} {
			testenv.Eventually(t, 60*time.Second, func() error {
				snap, err := status.Fetch(ctx, client, c.Nodes[0].StatusURL)
				if err != nil {
					return err
				}
				for _, r := range snap.Remotes {
					if r.Name == "north" && !r.Gone {
						return fmt.Errorf("%s's agent still has north", c.Name)
					}
				}
				return nil
			})
			vip := e.vip(t, c, "web")
			for range 10 {
				id, err := e.call(t, c, "http://"+vip+":8080/")
				if err != nil {
					t.Fatalf("cluster %s's web after north left: %v", c.Name, err)
				}
				if id.Cluster == "north" {
					t.Fatalf("cluster %s's client was answered by north after it left", c.Name)
				}
			}
		}
	})
	e.failed(t)
}

// checkJoinedOnBroker checks, once `braid join` has returned, that the
// broker's etcd holds what join waited for: a sync marker of north's for
// every kind, and a status from the agent of each of north's nodes that
// says synced. (The page shows the same a moment later: checkStatusJSON.)
func checkJoinedOnBroker(t *testing.T, ctx context.Context, admin *clientv3.Client, north *lab.Cluster) {
	t.Helper()
	owner := &clustermesh.ClusterConfig{Name: north.Name, ID: north.ID}
	resp, err := admin.Get(ctx, clustermesh.SyncedPrefix(north.Name), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	synced := map[clustermesh.Kind]bool{}
	for _, kv := range resp.Kvs {
		kind, _, err := clustermesh.DecodeSyncMarker(owner, string(kv.Key), kv.Value)
		if err != nil {
			t.Errorf("sync marker %s: %v", kv.Key, err)
			continue
		}
		synced[kind] = true
	}
	for _, k := range clustermesh.Kinds {
		if !synced[k] {
			t.Errorf("join returned before %s's operator synced %s", north.Name, k)
		}
	}
	for _, n := range north.Nodes {
		key := clustermesh.NodeStatusKey(north.Name, n.Name)
		resp, err := admin.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) != 1 {
			t.Errorf("join returned before node %s/%s's agent published its status", north.Name, n.Name)
			continue
		}
		s, err := clustermesh.DecodeNodeStatus(owner, key, resp.Kvs[0].Value)
		if err != nil {
			t.Errorf("node %s/%s's status: %v", north.Name, n.Name, err)
			continue
		}
		if !s.Synced {
			t.Errorf("join returned before node %s/%s's agent reported synced: %+v", north.Name, n.Name, s)
		}
	}
}

// checkStatusJSON runs `braid status -o json` against the broker and checks
// the document field by field: three clusters with their IDs and ranges,
// synced and healthy, a node each with its agent's tunnels to the others,
// and the global service web with backends in every cluster.
func (e *labEnv) checkStatusJSON(t *testing.T, north *lab.Cluster) {
	// The document's fields, as cmd/braid/cli.Document defines them; the
	// test spells them out so that a renamed field fails it.
	var doc struct {
		APIVersion string       `json:"apiVersion"`
		Kind       string       `json:"kind"`
		Source     string       `json:"source"`
		Healthy    bool         `json:"healthy"`
		Problems   []string     `json:"problems"`
		Mesh       *status.Mesh `json:"mesh"`
	}
	var m status.Mesh
	testenv.Eventually(t, 60*time.Second, func() error {
		out, err := braid(t, "status", "-o", "json", "--url", e.BrokerStatus)
		if err != nil {
			return err
		}
		doc.Mesh = nil
		if err := json.Unmarshal([]byte(out), &doc); err != nil {
			return fmt.Errorf("braid status -o json printed %q: %w", out, err)
		}
		if doc.Mesh == nil {
			return fmt.Errorf("braid status -o json printed no mesh: %s", out)
		}
		m = *doc.Mesh
		if !doc.Healthy {
			return fmt.Errorf("braid status: not healthy yet: %v", doc.Problems)
		}
		// Agents publish their status every 10 s: wait until every node's
		// shows a tunnel to every other cluster, those to north (which
		// carried the calls) with a handshake.
		for _, c := range m.Clusters {
			if len(c.Nodes) != 1 || !c.Nodes[0].Agent || len(c.Nodes[0].Tunnels) != 2 || !c.Healthy {
				return fmt.Errorf("cluster %s not yet healthy with one node and two tunnels: %+v", c.Name, c)
			}
			for _, tu := range c.Nodes[0].Tunnels {
				if c.Name != north.Name && strings.HasPrefix(tu.Peer, "north/") && tu.HandshakeAgeSeconds < 0 {
					return fmt.Errorf("cluster %s's tunnel to %s has no handshake yet", c.Name, tu.Peer)
				}
			}
		}
		return nil
	})
	if doc.APIVersion != "braid.io/status/v1" || doc.Kind != "Status" || doc.Source != e.BrokerStatus || !doc.Healthy || len(doc.Problems) != 0 {
		t.Errorf("document: apiVersion %q kind %q source %q healthy %v problems %v", doc.APIVersion, doc.Kind, doc.Source, doc.Healthy, doc.Problems)
	}
	if m.APIVersion != status.MeshAPIVersion || m.Source != "broker" || !m.Ready || m.Time.IsZero() {
		t.Errorf("header: apiVersion %q source %q ready %v time %v", m.APIVersion, m.Source, m.Ready, m.Time)
	}
	if len(m.Errors) != 0 {
		t.Errorf("errors: %+v", m.Errors)
	}
	want := []*lab.Cluster{e.east, e.west, north}
	if len(m.Clusters) != len(want) {
		t.Fatalf("%d clusters, want %d: %+v", len(m.Clusters), len(want), m.Clusters)
	}
	for _, lc := range want {
		i := slices.IndexFunc(m.Clusters, func(c status.MeshCluster) bool { return c.Name == lc.Name })
		if i < 0 {
			t.Errorf("cluster %s missing", lc.Name)
			continue
		}
		c := m.Clusters[i]
		if c.ID != lc.ID || len(c.PodCIDRs) != 1 || c.PodCIDRs[0] != lc.PodCIDR ||
			len(c.ServiceCIDRs) != 1 || c.ServiceCIDRs[0] != lc.ServiceCIDR {
			t.Errorf("cluster %s: id %d pods %v services %v; want %d %v %v", c.Name, c.ID, c.PodCIDRs, c.ServiceCIDRs, lc.ID, lc.PodCIDR, lc.ServiceCIDR)
		}
		for _, k := range clustermesh.Kinds {
			if !c.Synced[k] {
				t.Errorf("cluster %s: kind %s not synced", c.Name, k)
			}
		}
		if !c.Healthy || len(c.Problems) != 0 || c.SyncAgeSeconds < 0 {
			t.Errorf("cluster %s: healthy %v problems %v sync age %v", c.Name, c.Healthy, c.Problems, c.SyncAgeSeconds)
		}
		n := c.Nodes[0]
		if n.Name != lc.Nodes[0].Name || !slices.Contains(n.IPs, lc.Nodes[0].IP) || !n.Synced || len(n.Problems) != 0 {
			t.Errorf("cluster %s node: %+v, want %s at %s, synced, no problems", c.Name, n, lc.Nodes[0].Name, lc.Nodes[0].IP)
		}
		var peers []string
		for _, tu := range n.Tunnels {
			peers = append(peers, tu.Peer)
		}
		slices.Sort(peers)
		var wantPeers []string
		for _, o := range want {
			if o != lc {
				wantPeers = append(wantPeers, string(o.Name)+"/"+o.Nodes[0].Name)
			}
		}
		slices.Sort(wantPeers)
		if !slices.Equal(peers, wantPeers) {
			t.Errorf("cluster %s node %s tunnels to %v, want %v", c.Name, n.Name, peers, wantPeers)
		}
	}
	// Traffic went east → north and west → north: those tunnels have a
	// handshake and bytes.
	for _, c := range m.Clusters {
		if c.Name == north.Name {
			continue
		}
		for _, tu := range c.Nodes[0].Tunnels {
			if strings.HasPrefix(tu.Peer, "north/") && (tu.HandshakeAgeSeconds < 0 || tu.TxBytes == 0 || tu.RxBytes == 0) {
				t.Errorf("cluster %s's tunnel to %s: handshake age %v, tx %d rx %d; want a handshake and bytes both ways",
					c.Name, tu.Peer, tu.HandshakeAgeSeconds, tu.TxBytes, tu.RxBytes)
			}
		}
	}
	i := slices.IndexFunc(m.Services, func(s status.GlobalService) bool { return s.Namespace == "default" && s.Name == "web" })
	if i < 0 {
		t.Fatalf("global service default/web missing: %+v", m.Services)
	}
	web := m.Services[i]
	for _, lc := range want {
		j := slices.IndexFunc(web.Backends, func(b status.ClusterBackends) bool { return b.Cluster == lc.Name })
		if j < 0 {
			t.Errorf("web: no backends of cluster %s: %+v", lc.Name, web.Backends)
			continue
		}
		if b := web.Backends[j]; b.Ready < 1 || b.Ready != b.Total || !b.Shared {
			t.Errorf("web: cluster %s's backends %+v, want every one ready and shared", lc.Name, b)
		}
		if web.Tiers[lc.Name] == "" {
			t.Errorf("web: no tier for cluster %s: %v", lc.Name, web.Tiers)
		}
	}
	if len(web.Conflicts) != 0 {
		t.Errorf("web: conflicts %v", web.Conflicts)
	}
}
