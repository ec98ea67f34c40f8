package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/internal/testenv"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// freePorts returns n distinct loopback TCP ports that were free a moment ago.

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testBroker struct {
	*Broker
	stop func() // cancels Run and waits for it; idempotent
}

// startBroker runs a broker on dir with the given client and peer ports and
// waits until it is ready.
func startBroker(t *testing.T, dir string, clientPort, peerPort int) *testBroker {
	t.Helper()
	return startBrokerConfig(t, Config{
		DataDir:    dir,
		ClientURLs: []string{fmt.Sprintf("https://127.0.0.1:%d", clientPort)},
		PeerURL:    fmt.Sprintf("https://127.0.0.1:%d", peerPort),
	})
}

// startBrokerConfig runs a broker with cfg plus fast raft timings and the
// test's logger.
func startBrokerConfig(t *testing.T, cfg Config) *testBroker {
	t.Helper()
	cfg.HeartbeatInterval, cfg.ElectionTimeout, cfg.Logger = 10*time.Millisecond, 100*time.Millisecond, testLogger(t)
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	var stopped bool
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("broker run: %v", err)
		}
	}
	t.Cleanup(stop)
	select {
	case <-b.Ready():
	case err := <-done:
		stopped = true
		t.Fatalf("broker exited before ready: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("broker not ready after 30s")
	}
	return &testBroker{b, stop}
}

// clusterClient connects with c's credentials.
func clusterClient(t *testing.T, c join.Credentials) *clientv3.Client {
	t.Helper()
	tlsCfg, err := c.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	cli, err := newClient(t.Context(), c.Endpoints, tlsCfg, c.Username, c.Password, 0, nil)
	if err != nil {
		t.Fatalf("connect as %s: %v", c.Username, err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func checkMode(t *testing.T, path string, want fs.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("%s: mode %v, want %v", path, got, want)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestBrokerRestartReusesState(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "broker")
	ports := testenv.FreePorts(t, 2)
	b := startBroker(t, dir, ports[0], ports[1])

	creds, err := b.AddCluster(t.Context(), testGrant("east"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := clusterClient(t, creds).Put(t.Context(), clustermesh.ClusterKey("east"), "v1"); err != nil {
		t.Fatal(err)
	}

	files := []string{"pki/ca.crt", "pki/ca.key", "pki/server.crt", "pki/server.key", "root.json"}
	before := map[string][]byte{}
	for _, f := range files {
		before[f] = readFile(t, filepath.Join(dir, f))
	}
	for _, f := range []string{"pki/ca.key", "pki/server.key", "root.json"} {
		checkMode(t, filepath.Join(dir, f), 0o600)
	}
	checkMode(t, dir, 0o700)
	checkMode(t, filepath.Join(dir, "pki"), 0o700)
	if !bytes.Equal(creds.CACertPEM, before["pki/ca.crt"]) {
		t.Error("credentials carry a CA other than pki/ca.crt")
	}
	if bytes.Contains(before["root.json"], []byte(creds.Password)) {
		t.Error("cluster password stored in root.json")
	}

	b.stop()
	if err := b.Run(t.Context()); err == nil {
		t.Error("second Run on one Broker succeeded")
	}
	if _, err := b.AddCluster(t.Context(), testGrant("west")); !errors.Is(err, ErrNotRunning) {
		t.Errorf("AddCluster on stopped broker: %v, want ErrNotRunning", err)
	}

	startBroker(t, dir, ports[0], ports[1])
	for _, f := range files {
		if !bytes.Equal(before[f], readFile(t, filepath.Join(dir, f))) {
			t.Errorf("%s changed on restart", f)
		}
	}
	// Users and data survived, and the stored root password still works.
	resp, err := clusterClient(t, creds).Get(t.Context(), clustermesh.ClusterKey("east"))
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v1" {
		t.Fatalf("get after restart: %v %v", resp, err)
	}
	acfg, err := LocalAdminConfig(dir, creds.Endpoints)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := AdminClient(t.Context(), acfg)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if st, err := admin.AuthStatus(t.Context()); err != nil || !st.Enabled {
		t.Fatalf("auth status after restart: %v %v", st, err)
	}
}

func TestClusterAuthorization(t *testing.T) {
	ports := testenv.FreePorts(t, 2)
	b := startBroker(t, t.TempDir(), ports[0], ports[1])
	ctx := t.Context()

	creds := map[clustermesh.ClusterName]join.Credentials{}
	for _, name := range []clustermesh.ClusterName{"a", "b", "ab"} {
		c, err := b.AddCluster(ctx, testGrant(name))
		if err != nil {
			t.Fatal(err)
		}
		creds[name] = c
	}
	// The join bundle round-trips through a 0600 file.
	path := filepath.Join(t.TempDir(), "a.json")
	if err := creds["a"].Save(path); err != nil {
		t.Fatal(err)
	}
	checkMode(t, path, 0o600)
	a, err := join.LoadCredentials(path, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	cliA := clusterClient(t, a)

	t.Run("one gossip key for the mesh", func(t *testing.T) {
		k := a.GossipKeys
		if len(k) != 1 || len(k[0]) != GossipKeySize {
			t.Fatalf("gossip keys in a's bundle: %d keys, want one of %d bytes", len(k), GossipKeySize)
		}
		for name, c := range creds {
			if len(c.GossipKeys) != 1 || !bytes.Equal(c.GossipKeys[0], k[0]) {
				t.Errorf("cluster %s got another gossip key than a", name)
			}
		}
		if resp, err := cliA.Get(ctx, GossipKeysKey); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("get %s as a: %v %v, want permission denied", GossipKeysKey, resp, err)
		}
	})

	t.Run("own keys writable", func(t *testing.T) {
		keys := []string{clustermesh.ClusterKey("a")}
		for _, p := range clustermesh.OwnedPrefixes("a") {
			keys = append(keys, p+"x")
		}
		for _, k := range keys {
			if _, err := cliA.Put(ctx, k, "v"); err != nil {
				t.Errorf("put %s as a: %v", k, err)
			}
		}
		if _, err := cliA.Delete(ctx, clustermesh.KindPrefix(clustermesh.KindNodes, "a"), clientv3.WithPrefix()); err != nil {
			t.Errorf("delete own prefix as a: %v", err)
		}
	})

	t.Run("other keys refused", func(t *testing.T) {
		var keys []string
		for _, other := range []clustermesh.ClusterName{"b", "ab"} { // "ab": the trailing-slash trap
			keys = append(keys, clustermesh.ClusterKey(other))
			for _, p := range clustermesh.OwnedPrefixes(other) {
				keys = append(keys, p+"x")
			}
		}
		keys = append(keys, clustermesh.Root+"x", clustermesh.ClustersPrefix, "outside/x")
		for _, k := range keys {
			if _, err := cliA.Put(ctx, k, "v"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
				t.Errorf("put %s as a: %v, want permission denied", k, err)
			}
		}
		bKey := clustermesh.KindPrefix(clustermesh.KindNodes, "b") + "x"
		if _, err := cliA.Delete(ctx, bKey); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("delete %s as a: %v, want permission denied", bKey, err)
		}
		// A range wider than a's prefixes is refused as a whole.
		if _, err := cliA.Delete(ctx, clustermesh.Root, clientv3.WithPrefix()); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("delete %s* as a: %v, want permission denied", clustermesh.Root, err)
		}
		_, err := cliA.Txn(ctx).Then(
			clientv3.OpPut(clustermesh.ClusterKey("a"), "v"),
			clientv3.OpPut(bKey, "v"),
		).Commit()
		if !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("txn touching b as a: %v, want permission denied", err)
		}
	})

	t.Run("whole mesh readable", func(t *testing.T) {
		cliB := clusterClient(t, creds["b"])
		if _, err := cliB.Put(ctx, clustermesh.ClusterKey("b"), "vb"); err != nil {
			t.Fatal(err)
		}
		resp, err := cliA.Get(ctx, clustermesh.Root, clientv3.WithPrefix())
		if err != nil {
			t.Fatalf("get %s* as a: %v", clustermesh.Root, err)
		}
		var keys []string
		for _, kv := range resp.Kvs {
			keys = append(keys, string(kv.Key))
		}
		if !slices.Contains(keys, clustermesh.ClusterKey("b")) || !slices.Contains(keys, clustermesh.ClusterKey("a")) {
			t.Errorf("a sees %v, want both cluster keys", keys)
		}
		if _, err := cliA.Get(ctx, "outside/", clientv3.WithPrefix()); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("get outside Root as a: %v, want permission denied", err)
		}
	})

	t.Run("bad credentials refused", func(t *testing.T) {
		bad := a
		bad.Password = "wrong"
		tlsCfg, _ := bad.TLSConfig()
		_, err := newClient(ctx, bad.Endpoints, tlsCfg, bad.Username, bad.Password, 0, nil)
		if !errors.Is(err, rpctypes.ErrAuthFailed) {
			t.Errorf("wrong password: %v, want %v", err, rpctypes.ErrAuthFailed)
		}
		anon, err := clientv3.New(clientv3.Config{Endpoints: a.Endpoints, TLS: tlsCfg, DialTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer anon.Close()
		if _, err := anon.Get(ctx, clustermesh.Root, clientv3.WithPrefix()); !errors.Is(err, rpctypes.ErrUserEmpty) {
			t.Errorf("no credentials: %v, want %v", err, rpctypes.ErrUserEmpty)
		}
	})

	t.Run("add again rotates and reconciles", func(t *testing.T) {
		admin, err := AdminClient(ctx, mustLocalAdmin(t, b))
		if err != nil {
			t.Fatal(err)
		}
		defer admin.Close()
		// Drift: an extra permission granted by hand.
		if _, err := admin.RoleGrantPermission(ctx, ClusterUser("a"), "outside/", "outside0", clientv3.PermissionType(clientv3.PermReadWrite)); err != nil {
			t.Fatal(err)
		}
		again, err := AddCluster(ctx, admin, testGrant("a"))
		if err != nil {
			t.Fatal(err)
		}
		if again.Password == a.Password {
			t.Error("password not rotated")
		}
		role, err := admin.RoleGet(ctx, ClusterUser("a"))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := len(role.Perm), len(clusterPermissions("a")); got != want {
			t.Errorf("role has %d permissions after reconcile, want %d", got, want)
		}
		tlsCfg, _ := a.TLSConfig()
		if _, err := newClient(ctx, a.Endpoints, tlsCfg, a.Username, a.Password, 0, nil); !errors.Is(err, rpctypes.ErrAuthFailed) {
			t.Errorf("old password after rotation: %v, want %v", err, rpctypes.ErrAuthFailed)
		}
		again.CACertPEM = a.CACertPEM
		if _, err := clusterClient(t, again).Put(ctx, clustermesh.ClusterKey("a"), "v2"); err != nil {
			t.Errorf("put with rotated password: %v", err)
		}
	})

	t.Run("remove", func(t *testing.T) {
		for range 2 { // idempotent
			if err := b.RemoveCluster(ctx, "ab"); err != nil {
				t.Fatal(err)
			}
		}
		ab := creds["ab"]
		tlsCfg, _ := ab.TLSConfig()
		if _, err := newClient(ctx, ab.Endpoints, tlsCfg, ab.Username, ab.Password, 0, nil); !errors.Is(err, rpctypes.ErrAuthFailed) {
			t.Errorf("removed cluster connects: %v, want %v", err, rpctypes.ErrAuthFailed)
		}
	})
}

func mustLocalAdmin(t *testing.T, b *testBroker) AdminConfig {
	t.Helper()
	cfg, err := LocalAdminConfig(b.cfg.DataDir, b.Endpoints())
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestEnsurePKI(t *testing.T) {
	dir := t.TempDir()
	p1, err := EnsurePKI(dir, []string{"broker.example", "10.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	checkMode(t, filepath.Join(dir, caKeyFile), 0o600)
	checkMode(t, p1.KeyFile, 0o600)
	cert1 := readFile(t, p1.CertFile)

	// Same names: everything reused.
	p2, err := EnsurePKI(dir, []string{"10.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p1.CACertPEM, p2.CACertPEM) || !bytes.Equal(cert1, readFile(t, p2.CertFile)) {
		t.Error("EnsurePKI replaced certificates it could reuse")
	}

	// A new name: server certificate reissued by the same CA.
	p3, err := EnsurePKI(dir, []string{"other.example"})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p1.CACertPEM, p3.CACertPEM) {
		t.Error("CA replaced")
	}
	cert, err := parseCert(readFile(t, p3.CertFile))
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := parseCert(p3.CACertPEM)
	if err := cert.CheckSignatureFrom(ca); err != nil {
		t.Errorf("reissued certificate: %v", err)
	}
	if err := cert.VerifyHostname("other.example"); err != nil {
		t.Error(err)
	}
	if err := cert.VerifyHostname("::1"); err != nil {
		t.Error(err)
	}
	checkMode(t, p3.KeyFile, 0o600)

	// A CA certificate without its key is never silently replaced.
	if err := os.Remove(filepath.Join(dir, caKeyFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := EnsurePKI(dir, nil); err == nil || !strings.Contains(err.Error(), "refusing") {
		t.Errorf("EnsurePKI without CA key: %v, want refusal", err)
	}
}

func TestCredentialsDoNotLeakPassword(t *testing.T) {
	c := join.Credentials{Cluster: "a", Endpoints: []string{"https://x:1"}, Username: "cluster-a", Password: "sekrit"}
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("creds", "c", c)
	for _, s := range []string{c.String(), fmt.Sprintf("%v %+v", c, c), buf.String()} {
		if strings.Contains(s, "sekrit") {
			t.Errorf("password in %q", s)
		}
	}
	if err := c.Validate(); err == nil {
		t.Error("credentials without CA validate")
	}
}

// testGrant grants cluster name a distinct ID and pod and service CIDRs.
func testGrant(name clustermesh.ClusterName) clustermesh.Grant {
	id := map[clustermesh.ClusterName]int{"east": 1, "west": 2, "a": 3, "b": 4, "ab": 5}[name]
	if id == 0 {
		panic("testGrant: no ID for cluster " + string(name))
	}
	return clustermesh.Grant{
		Name:         name,
		ID:           clustermesh.ClusterID(id),
		PodCIDRs:     []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(id), 0, 0}), 16)},
		ServiceCIDRs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{172, byte(16 + id), 0, 0}), 16)},
	}
}

// TestJoinBundleMode checks that Save writes a join bundle 0600 even over a
// file others could read, and that LoadCredentials warns, without refusing,
// on a bundle readable by others (a Kubernetes Secret mount's default 0644).
func TestJoinBundleMode(t *testing.T) {
	p, err := EnsurePKI(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	c := join.Credentials{Cluster: "a", Endpoints: []string{"https://127.0.0.1:2379"}, CACertPEM: p.CACertPEM, Username: "cluster-a", Password: "s3cr3t-bundle-pw"}
	path := filepath.Join(t.TempDir(), "a.join.json")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	if err := c.Save(path); err != nil {
		t.Fatal(err)
	}
	checkMode(t, path, 0o600)

	load := func() string {
		t.Helper()
		var buf bytes.Buffer
		got, err := join.LoadCredentials(path, slog.New(slog.NewTextHandler(&buf, nil)))
		if err != nil {
			t.Fatalf("load bundle: %v", err)
		}
		if got.Password != c.Password || got.Cluster != c.Cluster {
			t.Errorf("loaded %v, want %v", got, c)
		}
		return buf.String()
	}
	if out := load(); out != "" {
		t.Errorf("0600 bundle: unexpected log %q", out)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	out := load()
	for _, want := range []string{"level=WARN", "readable by others", path, "0644", "hint="} {
		if !strings.Contains(out, want) {
			t.Errorf("0644 bundle: log %q does not contain %q", out, want)
		}
	}
	if strings.Contains(out, c.Password) {
		t.Errorf("warning leaks the password: %q", out)
	}
}

// TestBrokerStartSyncsOldClusterRoles registers a cluster whose role has
// the permissions of the key schema before services.v2 existed, as a
// broker of then made it, restarts the broker and checks that the cluster
// may then write its services.v2 prefix and another cluster read it.
func TestBrokerStartSyncsOldClusterRoles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "broker")
	ports := testenv.FreePorts(t, 2)
	b := startBroker(t, dir, ports[0], ports[1])
	east, err := b.AddCluster(t.Context(), testGrant("east"))
	if err != nil {
		t.Fatal(err)
	}
	west, err := b.AddCluster(t.Context(), testGrant("west"))
	if err != nil {
		t.Fatal(err)
	}

	// The old schema's role: everything AddCluster grants but the
	// services.v2 prefix, made from scratch.
	admin, err := AdminClient(t.Context(), mustLocalAdmin(t, b))
	if err != nil {
		t.Fatal(err)
	}
	v2 := clustermesh.KindPrefix(clustermesh.KindServicesV2, "east")
	var old []permission
	for _, p := range clusterPermissions("east") {
		if p.key != v2 {
			old = append(old, p)
		}
	}
	if len(old) != len(clusterPermissions("east"))-1 {
		t.Fatalf("no services.v2 permission among %v", clusterPermissions("east"))
	}
	role := ClusterUser("east")
	if _, err := admin.UserRevokeRole(t.Context(), role, role); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.RoleDelete(t.Context(), role); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.RoleAdd(t.Context(), role); err != nil {
		t.Fatal(err)
	}
	for _, p := range old {
		if _, err := admin.RoleGrantPermission(t.Context(), role, p.key, p.rangeEnd, p.typ); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := admin.UserGrantRole(t.Context(), role, role); err != nil {
		t.Fatal(err)
	}
	admin.Close()
	key := v2 + "default/web/0"
	if _, err := clusterClient(t, east).Put(t.Context(), key, "chunk"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("old-schema role writes %s: %v, want %v", key, err, rpctypes.ErrPermissionDenied)
	}

	b.stop()
	b = startBroker(t, dir, ports[0], ports[1])
	if _, err := clusterClient(t, east).Put(t.Context(), key, "chunk"); err != nil {
		t.Fatalf("after restart, east writes its services.v2 key: %v", err)
	}
	resp, err := clusterClient(t, west).Get(t.Context(), v2, clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "chunk" {
		t.Fatalf("after restart, west reads east's services.v2 prefix: %v %v", resp, err)
	}
	other := clustermesh.KindPrefix(clustermesh.KindServicesV2, "west") + "default/web/0"
	if _, err := clusterClient(t, east).Put(t.Context(), other, "chunk"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("east writes west's services.v2 key: %v, want %v", err, rpctypes.ErrPermissionDenied)
	}

	admin, err = AdminClient(t.Context(), mustLocalAdmin(t, b))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	got, err := admin.RoleGet(t.Context(), role)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Perm) != len(clusterPermissions("east")) {
		t.Errorf("east's role has %d permissions after the sync, want %d", len(got.Perm), len(clusterPermissions("east")))
	}
	if changed, err := SyncClusterRoles(t.Context(), admin); err != nil || len(changed) != 0 {
		t.Errorf("second sync changed %v (err %v), want nothing", changed, err)
	}
}

// TestRemoveClusterRevokesEveryLease: a cluster's keys bound to several
// leases (a publisher spreads them, see publish.Config.KeysPerLease) all
// vanish at once when the cluster is removed. etcd's keys-only range
// leaves a key's lease out, so the leases must be read with the values.
func TestRemoveClusterRevokesEveryLease(t *testing.T) {
	ports := testenv.FreePorts(t, 2)
	b := startBroker(t, t.TempDir(), ports[0], ports[1])
	ctx := t.Context()
	c, err := b.AddCluster(ctx, testGrant("a"))
	if err != nil {
		t.Fatal(err)
	}
	cli := clusterClient(t, c)
	keys := []string{clustermesh.ClusterKey("a"), clustermesh.KindPrefix(clustermesh.KindNodes, "a") + "n1", clustermesh.KindPrefix(clustermesh.KindNodes, "a") + "n2"}
	var leases []clientv3.LeaseID
	for i, key := range keys {
		if i < 2 {
			l, err := cli.Grant(ctx, 60)
			if err != nil {
				t.Fatal(err)
			}
			leases = append(leases, l.ID)
		}
		if _, err := cli.Put(ctx, key, "{}", clientv3.WithLease(leases[min(i, 1)])); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.RemoveCluster(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	admin, err := AdminClient(ctx, mustLocalAdmin(t, b))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	for _, key := range keys {
		if resp, err := admin.Get(ctx, key); err != nil || len(resp.Kvs) != 0 {
			t.Errorf("%s after remove-cluster: %v %v, want gone", key, resp, err)
		}
	}
	for _, id := range leases {
		if ttl, err := admin.TimeToLive(ctx, id); err != nil || ttl.TTL != -1 {
			t.Errorf("lease %x after remove-cluster: %v %v, want revoked", id, ttl, err)
		}
	}
}
