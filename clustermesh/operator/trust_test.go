package operator_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/broker"
	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/clustermesh/operator"
	"github.com/braidmesh/braid/clustermesh/remote"
	"github.com/braidmesh/braid/clustermesh/sim"
	"github.com/braidmesh/braid/cmd/braid/cli"
	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/kvstore"
)

// These tests run a real broker (embedded etcd with TLS, authentication and
// the broker's guard) and real consumers with their own credentials.

// startLabBroker runs a broker on dir until stop. With ports zero it picks
// two distinct free loopback ports, and picks again if another process
// bound one of them first; it returns the ports it used, so a test can
// restart the broker on them.
func startLabBroker(t *testing.T, dir string, ports [2]int, log *slog.Logger) (*broker.Broker, func(), [2]int) {
	t.Helper()
	pick := ports == [2]int{}
	for attempt := 1; ; attempt++ {
		if pick {
			free := testenv.FreePorts(t, 2)
			ports = [2]int{free[0], free[1]}
		}
		b, stop, err := runLabBroker(t, dir, ports, log)
		if err == nil {
			return b, stop, ports
		}
		if !pick || attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			t.Fatalf("broker on ports %v: %v", ports, err)
		}
		t.Logf("broker on ports %v: %v; picking other ports", ports, err)
	}
}

// runLabBroker starts one broker and waits until it is ready. On success
// the broker runs until the returned stop (also a cleanup of t).
func runLabBroker(t *testing.T, dir string, ports [2]int, log *slog.Logger) (*broker.Broker, func(), error) {
	t.Helper()
	b, err := broker.New(broker.Config{
		DataDir:           dir,
		ClientURLs:        []string{fmt.Sprintf("https://127.0.0.1:%d", ports[0])},
		PeerURL:           fmt.Sprintf("https://127.0.0.1:%d", ports[1]),
		HeartbeatInterval: 10 * time.Millisecond,
		ElectionTimeout:   100 * time.Millisecond,
		Logger:            log,
	})
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	exited := make(chan struct{})
	var runErr error
	go func() {
		runErr = b.Run(ctx)
		close(exited)
	}()
	select {
	case <-b.Ready():
	case <-exited:
		cancel()
		return nil, nil, fmt.Errorf("broker exited before ready: %w", runErr)
	case <-time.After(time.Minute):
		cancel()
		<-exited
		return nil, nil, fmt.Errorf("broker not ready after a minute")
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			<-exited
			if runErr != nil {
				t.Errorf("broker: %v", runErr)
			}
		})
	}
	t.Cleanup(stop)
	return b, stop, nil
}

func grantFor(name clustermesh.ClusterName, id int) clustermesh.Grant {
	return clustermesh.Grant{Name: name, ID: clustermesh.ClusterID(id),
		PodCIDRs:     []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/16", id))},
		ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/16", 100+id))}}
}

func connect(t *testing.T, b *broker.Broker, g clustermesh.Grant) (join.Credentials, kvstore.Store) {
	t.Helper()
	creds, err := b.AddCluster(t.Context(), g)
	if err != nil {
		t.Fatal(err)
	}
	s, err := join.Connect(t.Context(), creds, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return creds, s
}

// runOperator runs a simulated cluster's operator with a status server.
func runOperator(t *testing.T, g clustermesh.Grant, store kvstore.Store, ttl time.Duration) *operator.Operator {
	t.Helper()
	cfg := g.Config(clustermesh.Capabilities{})
	op, err := operator.New(operator.Config{Cluster: cfg, LeaseTTL: ttl, StatusAddr: "127.0.0.1:0"}, store, nil)
	if err != nil {
		t.Fatal(err)
	}
	state, err := sim.Generate(cfg, 2, 4, []string{"web"})
	if err != nil {
		t.Fatal(err)
	}
	if err := op.Apply(state); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- op.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("operator %s: %v", g.Name, err)
		}
	})
	return op
}

func within(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func put(t *testing.T, s kvstore.Store, key string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(t.Context(), key, b, 0); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

// TestForgedClaimsNeverReachConsumers: cluster b, with its own credentials
// only, claims a's ID and CIDRs in its config and publishes an identity in
// a's range, a's pod IP, a node with a's pod CIDR, a service with backends
// at a's pod IP and 8.8.8.8, and one with a's ClusterIP. None of it may
// reach a consumer's snapshot; each is counted and shown under b with its
// reason, and a's service keeps its backends throughout.
func TestForgedClaimsNeverReachConsumers(t *testing.T) {
	b, _, _ := startLabBroker(t, t.TempDir(), [2]int{}, nil)
	ga, gb, gc := grantFor("a", 1), grantFor("b", 2), grantFor("c", 3)
	_, storeA := connect(t, b, ga)
	_, storeB := connect(t, b, gb)
	_, storeC := connect(t, b, gc)
	opA := runOperator(t, ga, storeA, 5*time.Second)

	consumer, err := remote.New(remote.Config{Self: "c"}, storeC, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	changes := consumer.Subscribe(ctx)
	done := make(chan error, 1)
	go func() { done <- consumer.Run(ctx) }()
	defer func() { cancel(); <-done }()

	webBackends := func(w *remote.Watcher) (int, error) {
		cs := w.Snapshot().Clusters["a"]
		if cs == nil || !cs.Synced {
			return 0, fmt.Errorf("a not synced")
		}
		return len(cs.Services["default/web"].Backends), nil
	}
	var want int
	within(t, 30*time.Second, "consumer c syncs a", func() error {
		n, err := webBackends(consumer)
		want = n
		if err == nil && n == 0 {
			return fmt.Errorf("a's web has no backends")
		}
		return err
	})

	// b forges, with its own credentials.
	aPod := netip.MustParseAddr("10.1.0.1")
	aIdentity := clustermesh.NumericIdentity(1)<<clustermesh.IdentityClusterShift + 7
	claim := clustermesh.ClusterConfig{Name: "b", ID: 1, PodCIDRs: ga.PodCIDRs, ServiceCIDRs: ga.ServiceCIDRs}
	put(t, storeB, claim.Key(), &claim)
	id := clustermesh.Identity{ID: aIdentity, Cluster: "b", Labels: map[string]string{"app": "web"}}
	put(t, storeB, id.Key(), &id)
	ip := clustermesh.IPEntry{Prefix: netip.PrefixFrom(aPod, 32), Cluster: "b", Identity: aIdentity, HostIP: netip.MustParseAddr("192.168.2.1")}
	put(t, storeB, ip.Key(), &ip)
	node := clustermesh.Node{Name: "n1", Cluster: "b", IPs: []netip.Addr{netip.MustParseAddr("192.168.2.1")}, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.1.0/24")}}
	put(t, storeB, node.Key(), &node)
	port := []clustermesh.ServicePort{{Name: "http", Port: 80, Protocol: clustermesh.TCP}}
	bport := []clustermesh.BackendPort{{Name: "http", Port: 8080}}
	hijack := clustermesh.Service{Cluster: "b", Namespace: "default", Name: "web", Global: true, Shared: true, Affinity: clustermesh.AffinityNone,
		Ports: port, Backends: []clustermesh.Backend{{IP: aPod, Ports: bport, Ready: true, Serving: true}}}
	put(t, storeB, hijack.Key(), &hijack)
	public := clustermesh.Service{Cluster: "b", Namespace: "default", Name: "dns", Global: true, Shared: true, Affinity: clustermesh.AffinityNone,
		Ports: port, Backends: []clustermesh.Backend{{IP: netip.MustParseAddr("8.8.8.8"), Ports: bport, Ready: true, Serving: true}}}
	put(t, storeB, public.Key(), &public)
	vip := clustermesh.Service{Cluster: "b", Namespace: "default", Name: "vip", Global: true, Affinity: clustermesh.AffinityNone,
		Ports: port, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.101.0.10")}}
	put(t, storeB, vip.Key(), &vip)
	for _, k := range clustermesh.Kinds {
		put(t, storeB, clustermesh.SyncedKey("b", k), clustermesh.SyncMarker{})
	}

	reasons := []string{
		"config claims cluster ID 1", "config claims pod CIDRs", "config claims service CIDRs",
		"identity 65543 is outside cluster \"b\"'s range", "prefix 10.1.0.1/32 is outside cluster \"b\"'s pod CIDRs",
		"pod CIDR 10.1.1.0/24 is outside cluster \"b\"'s pod CIDRs", "backend 10.1.0.1 is outside", "backend 8.8.8.8 is outside",
		"cluster IP 10.101.0.10 is outside",
	}
	for _, w := range []struct {
		name string
		w    *remote.Watcher
	}{{"consumer c", consumer}, {"operator a", opA.Watcher()}} {
		within(t, 30*time.Second, w.name+" shows every forgery under b", func() error {
			var st *clustermesh.RemoteClusterStatus
			for _, s := range w.w.Status() {
				if s.Name == "b" {
					st = &s
				}
			}
			if st == nil {
				return fmt.Errorf("b not shown")
			}
			all := strings.Join(st.Rejected, "\n")
			for _, r := range reasons {
				if !strings.Contains(all, r) {
					return fmt.Errorf("no rejection %q among %d (invalid %d):\n%s", r, len(st.Rejected), st.Invalid, all)
				}
			}
			if st.Invalid < len(reasons) {
				return fmt.Errorf("invalid %d, want at least %d", st.Invalid, len(reasons))
			}
			return nil
		})
		snap := w.w.Snapshot()
		if cs := snap.Clusters["b"]; cs != nil {
			if len(cs.Nodes)+len(cs.Identities)+len(cs.IPs)+len(cs.Services) != 0 || cs.Config.ID != 2 {
				t.Errorf("%s: b's forged state reached the snapshot: %+v", w.name, cs)
			}
		}
	}
	if n, err := webBackends(consumer); err != nil || n != want {
		t.Errorf("consumer c: a's web has %d backends (%v), want %d", n, err, want)
	}
	// No event for b ever reached a subscriber, and a's web never lost a
	// backend.
	for {
		select {
		case ch := <-changes:
			if ch.Cluster == "b" && (ch.Type == remote.Upsert || ch.Type == remote.Delete) {
				t.Errorf("consumer emitted %v %s for b", ch.Type, ch.Key)
			}
			if ch.Cluster == "a" && ch.Type == remote.Delete && ch.Kind == clustermesh.KindServices {
				t.Errorf("a's service %s was deleted", ch.Key)
			}
			continue
		default:
		}
		break
	}
}

// TestRemovedClusterIsCutOff: after remove-cluster, the removed cluster's
// open watch ends within 2 s, its next write fails, and its operator
// reports itself removed.
func TestRemovedClusterIsCutOff(t *testing.T) {
	dir := t.TempDir()
	b, _, _ := startLabBroker(t, dir, [2]int{}, nil)
	ga, gb := grantFor("a", 1), grantFor("ab", 2)
	connect(t, b, ga)
	credsB, storeB := connect(t, b, gb)
	opB := runOperator(t, gb, storeB, 3*time.Second)
	within(t, 30*time.Second, "operator ab registers", func() error {
		if !opB.Snapshot().Publish.Registered {
			return fmt.Errorf("not registered")
		}
		return nil
	})

	// ab's own raw watch over the whole mesh, as `etcdctl watch` would.
	rawB, err := join.Connect(t.Context(), credsB, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rawB.Close()
	wctx, wcancel := context.WithCancel(t.Context())
	defer wcancel()
	wch := rawB.Client().Watch(wctx, clustermesh.Root, clientv3.WithPrefix())

	// Remove through a separate root client, as `braid broker
	// remove-cluster` does from another process.
	acfg, err := broker.LocalAdminConfig(dir, b.Endpoints())
	if err != nil {
		t.Fatal(err)
	}
	admin, err := broker.AdminClient(t.Context(), acfg)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if err := broker.RemoveCluster(t.Context(), admin, "ab"); err != nil {
		t.Fatal(err)
	}
	ended := time.After(2 * time.Second)
	for open := true; open; {
		select {
		case resp, ok := <-wch:
			if !ok || resp.Err() != nil || resp.Canceled {
				open = false
			}
		case <-ended:
			t.Fatal("ab's open watch still running 2 s after remove-cluster")
		}
	}
	if err := rawB.Put(t.Context(), clustermesh.ClusterKey("ab"), []byte("{}"), 0); err == nil {
		t.Fatal("ab's write after its removal succeeded")
	}
	within(t, 30*time.Second, "operator ab reports itself removed", func() error {
		s := opB.Snapshot()
		if s.Healthy || !s.Publish.Removed || !strings.Contains(strings.Join(s.Problems, "; "), "removed from the mesh") {
			return fmt.Errorf("healthy %v, removed %v, problems %q", s.Healthy, s.Publish.Removed, s.Problems)
		}
		resp, err := http.Get(opB.StatusURL() + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			return fmt.Errorf("/healthz %d", resp.StatusCode)
		}
		return nil
	})
}

// TestBrokerOutageIsReportedAndClears: with the broker stopped, the
// operator's /healthz fails and `braid status` exits non-zero naming the
// broker within the documented bound (one lease TTL after the first failed
// renewal); once the broker is back both recover and the error clears.
func TestBrokerOutageIsReportedAndClears(t *testing.T) {
	dir := t.TempDir()
	b, stop, ports := startLabBroker(t, dir, [2]int{}, nil)
	ga := grantFor("a", 1)
	_, storeA := connect(t, b, ga)
	const ttl = 2 * time.Second
	op := runOperator(t, ga, storeA, ttl)
	healthz := func() (int, string, error) {
		resp, err := http.Get(op.StatusURL() + "/healthz")
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		var buf bytes.Buffer
		_, _ = buf.ReadFrom(resp.Body)
		return resp.StatusCode, buf.String(), nil
	}
	braidStatus := func() (int, string) {
		var out, errOut bytes.Buffer
		code := cli.Run(t.Context(), cli.NewRoot(&out, &errOut), []string{"status", "--url", op.StatusURL()})
		return code, errOut.String()
	}
	within(t, 30*time.Second, "operator healthy", func() error {
		if code, body, err := healthz(); err != nil || code != http.StatusOK {
			return fmt.Errorf("/healthz %d %q %v", code, body, err)
		}
		return nil
	})

	stop()
	stoppedAt := time.Now()
	// Renewals fail from at most ttl/3 after the stop; the operator must
	// say so one lease TTL later. Slack covers a renewal call's own timeout.
	bound := ttl/3 + ttl + ttl/3 + 2*time.Second
	within(t, bound, "operator unhealthy with the broker down", func() error {
		code, body, err := healthz()
		if err != nil || code != http.StatusServiceUnavailable || !strings.Contains(body, "broker") {
			return fmt.Errorf("/healthz %d %q %v; publish %+v", code, body, err, op.Snapshot().Publish)
		}
		return nil
	})
	t.Logf("unhealthy %v after the broker stopped", time.Since(stoppedAt).Round(time.Millisecond))
	if code, msg := braidStatus(); code == 0 || !strings.Contains(msg, "broker") {
		t.Fatalf("braid status with the broker down: exit %d, %q", code, msg)
	}

	startLabBroker(t, dir, ports, nil)
	// When the lease ran out during the outage, the operator publishes
	// everything again under a new one. /healthz recovers once the broker
	// answers; `braid status` once the mesh page's watch has seen the
	// cluster's entries and sync markers back, which may take a moment
	// more. Both must recover within the bound.
	within(t, 60*time.Second, "operator and braid status recover", func() error {
		if code, body, err := healthz(); err != nil || code != http.StatusOK {
			return fmt.Errorf("/healthz %d %q %v", code, body, err)
		}
		if ps := op.Snapshot().Publish; ps.LastError != "" || !ps.FailingSince.IsZero() {
			return fmt.Errorf("publish still reports %q since %v", ps.LastError, ps.FailingSince)
		}
		if code, msg := braidStatus(); code != 0 {
			return fmt.Errorf("braid status: exit %d, %q", code, msg)
		}
		return nil
	})
}

// TestBrokerDebugLogHoldsNoSecrets runs the broker at debug level through
// an add-cluster and an operator's first sync: its output must hold no
// password, token or password hash.
func TestBrokerDebugLogHoldsNoSecrets(t *testing.T) {
	var mu sync.Mutex
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&lockedWriter{mu: &mu, w: &logs}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	dir := t.TempDir()
	b, stop, _ := startLabBroker(t, dir, [2]int{}, log)
	ga, gb := grantFor("a", 1), grantFor("b", 2)
	credsA, storeA := connect(t, b, ga)
	credsB, storeB := connect(t, b, gb)
	runOperator(t, ga, storeA, 5*time.Second)
	opB := runOperator(t, gb, storeB, 5*time.Second)
	within(t, 30*time.Second, "operator b syncs a", func() error {
		if cs := opB.Watcher().Snapshot().Clusters["a"]; cs == nil || !cs.Synced {
			return fmt.Errorf("a not synced")
		}
		return nil
	})
	root, err := os.ReadFile(filepath.Join(dir, "root.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rc struct{ Password string }
	if err := json.Unmarshal(root, &rc); err != nil || rc.Password == "" {
		t.Fatalf("root.json: %v", err)
	}
	tokenKey, err := os.ReadFile(filepath.Join(dir, "pki", "token.key"))
	if err != nil {
		t.Fatal(err)
	}
	stop()
	mu.Lock()
	out := logs.String()
	mu.Unlock()
	if !strings.Contains(out, "level=DEBUG") {
		t.Fatal("no debug output: the test does not exercise the debug log")
	}
	for what, secret := range map[string]string{
		"root password": rc.Password, "a's password": credsA.Password, "b's password": credsB.Password,
		"a bcrypt hash": "$2a$", "a JWT": "eyJ", "a simple token": "simple_token", "a hashed password field": "hashed_password",
	} {
		if strings.Contains(out, secret) {
			i := strings.Index(out, secret)
			t.Errorf("broker debug log holds %s: ...%s...", what, out[max(0, i-200):min(len(out), i+100)])
		}
	}
	// Nor any line of the key etcd signs tokens with.
	for line := range strings.Lines(string(tokenKey)) {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "-----") && strings.Contains(out, line) {
			t.Errorf("broker debug log holds the token signing key")
		}
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
