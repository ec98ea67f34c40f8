package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/broker"
	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/clustermesh/operator"
	"github.com/braidmesh/braid/cmd/braid/cli"
	"github.com/braidmesh/braid/internal/kubelab"
	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/kvstore"
)

// braid runs the braid command line in this process.
func braid(t *testing.T, ctx context.Context, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := cli.NewRoot(&out, &errOut)
	root.AddCommand(brokerCommand(), tokenCommand())
	if code := cli.Run(ctx, root, args); code != 0 {
		return out.String(), errOut.String(), fmt.Errorf("braid %s: exit %d: %s", args[0], code, errOut.String())
	}
	return out.String(), errOut.String(), nil
}

// TestJoinAndLeaveWithToken joins a real Kubernetes cluster to a running
// broker with a token, checks every refusal leaves both untouched, and
// leaves again. No kubelet runs in the lab, so the test plays its part:
// it starts the operator (in process, with the credentials join stored in
// the cluster) and marks the operator and agent workloads ready.
func TestJoinAndLeaveWithToken(t *testing.T) {
	kubelab.Require(t)
	ctx := t.Context()
	etcd := kubelab.StartEtcd(t)
	east := kubelab.StartCluster(t, etcd, kubelab.Options{Name: "east", ControllerManager: true})

	dir := t.TempDir()
	ports := testenv.FreePorts(t, 2)
	cport, pport := ports[0], ports[1]
	b, err := broker.New(broker.Config{DataDir: dir, JoinURL: "https://127.0.0.1:0",
		ClientURLs: []string{fmt.Sprintf("https://127.0.0.1:%d", cport)}, PeerURL: fmt.Sprintf("https://127.0.0.1:%d", pport),
		HeartbeatInterval: 10 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	bctx, stopBroker := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- b.Run(bctx) }()
	t.Cleanup(func() {
		stopBroker()
		if err := <-done; err != nil {
			t.Errorf("broker: %v", err)
		}
	})
	select {
	case <-b.Ready():
	case err := <-done:
		t.Fatalf("broker: %v", err)
	}
	adminArgs := []string{"--data-dir", dir, "--etcd-endpoints", b.Endpoints()[0]}
	acfg, err := broker.LocalAdminConfig(dir, b.Endpoints())
	if err != nil {
		t.Fatal(err)
	}
	admin, err := broker.AdminClient(ctx, acfg)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	// west is in the mesh already, with ID 2 and pods in 10.2.0.0/16.
	wb, _ := json.Marshal(clustermesh.ClusterConfig{Name: "west", ID: 2, PodCIDRs: []netipPrefix{mustPrefix("10.2.0.0/16")}})
	if _, err := admin.Put(ctx, clustermesh.ClusterKey("west"), string(wb)); err != nil {
		t.Fatal(err)
	}

	token, _, err := braid(t, ctx, append([]string{"token", "create", "--cluster", "east", "--ttl", "10m"}, adminArgs...)...)
	if err != nil {
		t.Fatal(err)
	}
	token = strings.TrimSpace(token)
	manifests := filepath.Join("..", "..", "deploy")
	joinArgs := func(tok string, extra ...string) []string {
		return append([]string{"join", tok, "--kubeconfig", east.Kubeconfig, "--manifests", manifests, "--timeout", "2m"}, extra...)
	}
	untouched := func(t *testing.T) {
		t.Helper()
		// A namespace join created and undid may still be terminating.
		deadline := time.After(30 * time.Second)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			_, err := east.Client.CoreV1().Namespaces().Get(ctx, "braid-system", metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				break
			}
			select {
			case <-deadline:
				t.Fatalf("namespace braid-system after a refused join: %v", err)
			case <-tick.C:
			}
		}
		resp, err := admin.Get(ctx, join.MemberKey("east"), clientv3.WithCountOnly())
		if err != nil || resp.Count != 0 {
			t.Fatalf("member east after a refused join: %v %v", resp, err)
		}
		if _, err := admin.UserGet(ctx, broker.ClusterUser("east")); err == nil {
			t.Fatal("etcd user of east after a refused join")
		}
	}

	t.Run("refusals change nothing", func(t *testing.T) {
		cases := []struct {
			name string
			args []string
			want string
		}{
			{"ID taken", joinArgs(token, "--id", "2"), `cluster ID 2 taken by cluster "west"`},
			{"CIDR overlap", joinArgs(token, "--id", "3", "--pod-cidr", "10.2.0.0/24"), `10.2.0.0/24 (east) overlaps 10.2.0.0/16 (west)`},
			{"fingerprint", joinArgs(tamper(t, token), "--id", "3"), "broker CA does not match the token's fingerprint"},
			{"unknown token", joinArgs(strings.TrimSuffix(token, token[len(token)-4:])+"AAAA", "--id", "3"), "token"},
		}
		for _, tc := range cases {
			_, _, err := braid(t, ctx, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
			}
			untouched(t)
		}
		tok2, _, err := braid(t, ctx, append([]string{"token", "create", "--cluster", "west"}, adminArgs...)...)
		if err == nil || !strings.Contains(err.Error(), `cluster name "west" is taken`) {
			t.Errorf("token for a taken name: %q, %v", tok2, err)
		}
	})

	t.Run("dry run", func(t *testing.T) {
		out, _, err := braid(t, ctx, joinArgs(token, "--id", "3", "--pod-cidr", "10.3.0.0/16", "--service-cidr", "10.103.0.0/16",
			"--clusterset-cidr", "10.103.128.0/17", "--dry-run")...)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"kind: Deployment", "kind: DaemonSet", "cluster-id: \"3\"", "pod-cidr: 10.3.0.0/16", "clusterset-cidr: 10.103.128.0/17"} {
			if !strings.Contains(out, want) {
				t.Errorf("dry run output lacks %q", want)
			}
		}
		untouched(t)
		// A clusterset range the operator would refuse is refused here.
		_, _, err = braid(t, ctx, joinArgs(token, "--id", "3", "--pod-cidr", "10.3.0.0/16", "--service-cidr", "10.103.0.0/16",
			"--clusterset-cidr", "10.111.0.0/16", "--dry-run")...)
		if err == nil || !strings.Contains(err.Error(), "--clusterset-cidr 10.111.0.0/16 is outside the service CIDRs 10.103.0.0/16") {
			t.Errorf("clusterset range outside the service CIDR: %v", err)
		}
	})

	t.Run("failed join leaves nothing", func(t *testing.T) {
		// A base whose last object cannot be applied: join has its
		// certificate and has applied the rest when it fails.
		bad := t.TempDir()
		copyDir(t, manifests, bad)
		appendFile(t, filepath.Join(bad, "agent.yaml"), "---\napiVersion: braid.io/v1\nkind: Bogus\nmetadata:\n  name: x\n")
		args := joinArgs(token, "--id", "3", "--pod-cidr", "10.3.0.0/16")
		args[5] = bad
		_, _, err := braid(t, ctx, args...)
		if err == nil || !strings.Contains(err.Error(), "join undone") || !strings.Contains(err.Error(), "Bogus") {
			t.Fatalf("join with a broken base: %v", err)
		}
		untouched(t)
		_, _, err = braid(t, ctx, joinArgs(token, "--id", "3")...)
		if err == nil || !strings.Contains(err.Error(), "token already used") {
			t.Fatalf("reused token: %v", err)
		}
		untouched(t)
	})
	token, _, err = braid(t, ctx, append([]string{"token", "create", "--cluster", "east", "--ttl", "10m"}, adminArgs...)...)
	if err != nil {
		t.Fatal(err)
	}
	token = strings.TrimSpace(token)

	// east has one node; join waits for its agent's status.
	if _, err := east.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "east-n1"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Play kubelet and controllers: once join stored the credentials, run
	// the operator with them, mark the workloads ready and publish the
	// node's status as its agent would.
	opCtx, stopOperator := context.WithCancel(ctx)
	opDone := make(chan error, 1)
	go func() { opDone <- playCluster(opCtx, t, east) }()
	t.Cleanup(func() { stopOperator(); <-opDone })

	start := time.Now()
	out, _, err := braid(t, ctx, joinArgs(token, "--id", "3", "--pod-cidr", "10.3.0.0/16", "--service-cidr", "10.103.0.0/16")...)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("join took %v:\n%s", time.Since(start), out)
	for _, want := range []string{"operator synced services", "node east-n1: synced", "every agent synced (1 nodes)", "cluster east joined the mesh"} {
		if !strings.Contains(out, want) {
			t.Errorf("join output lacks %q", want)
		}
	}

	t.Run("no password written", func(t *testing.T) {
		s, err := east.Client.CoreV1().Secrets("braid-system").Get(ctx, "braid-join", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		raw := s.Data["join.json"]
		if bytes.Contains(bytes.ToLower(raw), []byte("password")) {
			t.Errorf("join Secret holds a password field: %s", raw)
		}
		var creds join.Credentials
		if err := json.Unmarshal(raw, &creds); err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(creds.CertPEM)
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if cert.Subject.CommonName != "cluster-east" || creds.Password != "" {
			t.Errorf("certificate CN %q, password set %v", cert.Subject.CommonName, creds.Password != "")
		}
	})

	t.Run("joined cluster refuses a second join", func(t *testing.T) {
		_, _, err := braid(t, ctx, joinArgs(token, "--id", "4")...)
		if err == nil || !strings.Contains(err.Error(), "already joined a mesh") {
			t.Fatalf("second join in the same cluster: %v", err)
		}
	})

	out, _, err = braid(t, ctx, "leave", "--kubeconfig", east.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("leave:\n%s", out)
	resp, err := admin.Get(ctx, clustermesh.SyncedPrefix("east"), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 0 {
		t.Errorf("east's sync markers after leave: %v, %v", resp.Count, err)
	}
	if _, err := admin.UserGet(ctx, broker.ClusterUser("east")); err == nil {
		t.Error("east's etcd user survives leave")
	}
	for _, name := range []string{"braid-operator"} {
		if _, err := east.Client.AppsV1().Deployments("braid-system").Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("deployment %s after leave: %v", name, err)
		}
	}
	if _, err := east.Client.CoreV1().Secrets("braid-system").Get(ctx, "braid-join", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("join Secret after leave: %v", err)
	}
	untouched(t)
	if _, _, err := braid(t, ctx, joinArgs(token, "--id", "3")...); err == nil || !strings.Contains(err.Error(), "token already used") {
		t.Errorf("token reused after leave: %v", err)
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, path)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(to, rel), 0o755)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func appendFile(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

// tamper returns tok with another CA fingerprint.
func tamper(t *testing.T, raw string) string {
	tok, err := join.ParseToken(raw)
	if err != nil {
		t.Fatal(err)
	}
	tok.CAFingerprint = strings.Repeat("ab", 32)
	return tok.String()
}

// playCluster waits for the join Secret, runs the operator with its
// credentials and marks the operator Deployment and agent DaemonSet ready,
// until ctx is done.
func playCluster(ctx context.Context, t *testing.T, c *kubelab.Cluster) error {
	var raw []byte
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for raw == nil {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if s, err := c.Client.CoreV1().Secrets("braid-system").Get(ctx, "braid-join", metav1.GetOptions{}); err == nil {
			raw = s.Data["join.json"]
		}
	}
	var creds join.Credentials
	if err := json.Unmarshal(raw, &creds); err != nil {
		return err
	}
	store, err := join.Connect(ctx, creds, nil)
	if err != nil {
		t.Errorf("operator: connect with the join Secret's credentials: %v", err)
		return err
	}
	defer store.Close()
	op, err := operator.New(operator.Config{
		Cluster:    clustermesh.ClusterConfig{Name: creds.Cluster, ID: 3, PodCIDRs: []netipPrefix{mustPrefix("10.3.0.0/16")}},
		Kubernetes: c.RESTConfig,
	}, store, nil)
	if err != nil {
		return err
	}
	opDone := make(chan error, 1)
	go func() { opDone <- op.Run(ctx) }()
	markReady(ctx, t, c)
	if err := publishAgentStatus(ctx, store, creds.Cluster, "east-n1"); err != nil {
		t.Errorf("agent of east-n1: %v", err)
	}
	<-ctx.Done()
	<-opDone
	return nil
}

func markReady(ctx context.Context, t *testing.T, c *kubelab.Cluster) {
	apps := c.Client.AppsV1()
	d, err := apps.Deployments("braid-system").Get(ctx, "braid-operator", metav1.GetOptions{})
	if err != nil {
		t.Errorf("mark operator ready: %v", err)
		return
	}
	d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1}
	if _, err := apps.Deployments("braid-system").UpdateStatus(ctx, d, metav1.UpdateOptions{}); err != nil {
		t.Errorf("mark operator ready: %v", err)
	}
	ds, err := apps.DaemonSets("braid-system").Get(ctx, "braid-agent", metav1.GetOptions{})
	if err != nil {
		t.Errorf("mark agents ready: %v", err)
		return
	}
	ds.Status = appsv1.DaemonSetStatus{ObservedGeneration: ds.Generation, DesiredNumberScheduled: 2, CurrentNumberScheduled: 2, UpdatedNumberScheduled: 2, NumberReady: 2, NumberAvailable: 2}
	if _, err := apps.DaemonSets("braid-system").UpdateStatus(ctx, ds, metav1.UpdateOptions{}); err != nil {
		t.Errorf("mark agents ready: %v", err)
	}
}

// publishAgentStatus writes node's status, synced, as its agent would.
func publishAgentStatus(ctx context.Context, store kvstore.Store, cluster clustermesh.ClusterName, node string) error {
	b, err := json.Marshal(clustermesh.NodeStatus{Cluster: cluster, Node: node, Time: time.Now(), Synced: true})
	if err != nil {
		return err
	}
	lease, err := store.GrantLease(ctx, time.Minute)
	if err != nil {
		return err
	}
	return store.Put(ctx, clustermesh.NodeStatusKey(cluster, node), b, lease)
}

type netipPrefix = netip.Prefix

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
