package operator

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/clustermesh/k8s"
	"github.com/braidmesh/braid/clustermesh/remote"
	"github.com/braidmesh/braid/internal/kubelab"
	"github.com/braidmesh/braid/internal/testenv"
)

// TestBenchmarkGlobalServices measures how long BRAID_BENCH_SERVICES
// (default 1000) global services with 10 ready Pods each, created in
// cluster a, take to appear in cluster b's view with 10 backends each.
// Cluster a is a real kube-apiserver whose kube-controller-manager
// generates the EndpointSlices from the Pods (no kubelet: Pods are created
// on API-created Nodes and their status is patched Ready with an IP);
// braid-operator for a runs as its own process against a broker process;
// cluster b's view is a remote.Watcher with b's credentials in this
// process. It runs only with BRAID_BENCH=1 and the kube binaries:
//
//	BRAID_BENCH=1 go test -run TestBenchmarkGlobalServices -v -timeout 30m ./clustermesh/operator
func TestBenchmarkGlobalServices(t *testing.T) {
	if os.Getenv("BRAID_BENCH") == "" {
		t.Skip("skip: opt-in benchmark (needs BRAID_BENCH=1 and the kube binaries)")
	}
	n := 1000
	if v, err := strconv.Atoi(os.Getenv("BRAID_BENCH_SERVICES")); err == nil && v > 0 {
		n = v
	}
	const endpoints = 10
	etcd := kubelab.StartEtcd(t)
	a := labEnv(t, etcd, "a", 1)

	// Operator a runs as its own process, against a real broker process,
	// so its peak RSS is its own; cluster b's view is a remote.Watcher with
	// b's credentials in this process.
	dir := t.TempDir()
	for _, cmd := range []string{"braid", "braid-operator"} {
		build := exec.Command("go", "build", "-o", filepath.Join(dir, cmd), "../../cmd/"+cmd)
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", cmd, err, out)
		}
	}
	port := func() int { return testenv.FreePort(t) }
	endpoint := fmt.Sprintf("https://127.0.0.1:%d", port())
	brokerDir := filepath.Join(dir, "broker")
	brokerProc := exec.Command(filepath.Join(dir, "braid"), "broker", "--data-dir", brokerDir, "--listen", endpoint,
		"--listen-peer", fmt.Sprintf("https://127.0.0.1:%d", port()), "--log-level", "error")
	if err := brokerProc.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = brokerProc.Process.Signal(os.Interrupt); _ = brokerProc.Wait() })
	for i, c := range []string{"a", "b"} {
		testenv.Eventually(t, time.Minute, func() error {
			out, err := exec.Command(filepath.Join(dir, "braid"), "broker", "add-cluster", c, "--data-dir", brokerDir,
				"--etcd-endpoints", endpoint, "--out", filepath.Join(dir, c+".json"), "--cluster-id", fmt.Sprint(i+1),
				"--pod-cidr", fmt.Sprintf("10.%d.0.0/16", i+1), "--service-cidr", fmt.Sprintf("10.%d.0.0/16", 101+i)).CombinedOutput()
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			return nil
		})
	}
	opA := exec.Command(filepath.Join(dir, "braid-operator"), "--join", filepath.Join(dir, "a.json"), "--cluster-id", "1",
		"--pod-cidr", "10.1.0.0/16", "--service-cidr", "10.101.0.0/16", "--kubeconfig", a.kubeconfig,
		"--status-addr", "", "--log-level", "warn")
	opA.Stderr = os.Stderr
	if err := opA.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = opA.Process.Signal(os.Interrupt); _ = opA.Wait() })

	credsB, err := join.LoadCredentials(filepath.Join(dir, "b.json"), nil)
	if err != nil {
		t.Fatal(err)
	}
	store, err := join.Connect(context.Background(), credsB, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	viewB, err := remote.New(remote.Config{Self: "b"}, store, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithCancel(context.Background())
	wdone := make(chan struct{})
	go func() { defer close(wdone); _ = viewB.Run(wctx) }()
	t.Cleanup(func() { wcancel(); <-wdone })

	rc := rest.CopyConfig(a.cfg.Kubernetes)
	rc.QPS, rc.Burst = 5000, 5000
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const nodes = 3
	for j := range nodes {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("node-%d", j),
			Labels: map[string]string{corev1.LabelTopologyZone: fmt.Sprintf("z%d", j)}}}
		if _, err := client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create node: %v", err)
		}
	}
	start := time.Now()
	var created atomic.Int64
	work := make(chan int)
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				name := fmt.Sprintf("svc-%d", i)
				svc := &corev1.Service{
					ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Annotations: map[string]string{k8s.AnnotationGlobal: "true"}},
					Spec: corev1.ServiceSpec{Selector: map[string]string{"app": name},
						Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP}}},
				}
				if _, err := client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
					t.Errorf("create %s: %v", name, err)
					continue
				}
				// Pods as a kubelet would leave them: scheduled, then
				// Running and Ready with an IP. kube-controller-manager
				// turns them into the Service's EndpointSlice.
				for j := range endpoints {
					pod := &corev1.Pod{
						ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", name, j), Namespace: "default", Labels: map[string]string{"app": name}},
						Spec: corev1.PodSpec{NodeName: fmt.Sprintf("node-%d", j%nodes),
							Containers: []corev1.Container{{Name: "app", Image: "app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
					}
					if _, err := client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
						t.Errorf("create pod %s: %v", pod.Name, err)
						continue
					}
					ip := fmt.Sprintf("10.1.%d.%d", (i*endpoints+j)/250, (i*endpoints+j)%250+1)
					status := fmt.Sprintf(`{"status":{"phase":"Running","podIP":%q,"podIPs":[{"ip":%q}],`+
						`"conditions":[{"type":"Ready","status":"True"},{"type":"ContainersReady","status":"True"}]}}`, ip, ip)
					if _, err := client.CoreV1().Pods("default").Patch(ctx, pod.Name, types.MergePatchType, []byte(status), metav1.PatchOptions{}, "status"); err != nil {
						t.Errorf("patch pod %s status: %v", pod.Name, err)
					}
				}
				created.Add(1)
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	createdIn := time.Since(start)
	testenv.Eventually(t, 20*time.Minute, func() error {
		cs := viewB.Snapshot().Clusters["a"]
		if cs == nil {
			return fmt.Errorf("a unknown")
		}
		full := 0
		for _, s := range cs.Services {
			if len(s.Backends) == endpoints {
				full++
			}
		}
		if full < n {
			return fmt.Errorf("%d of %d services complete", full, n)
		}
		return nil
	})
	total := time.Since(start)
	hwm := "?"
	if raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", opA.Process.Pid)); err == nil {
		for _, l := range strings.Split(string(raw), "\n") {
			if strings.HasPrefix(l, "VmHWM:") {
				hwm = strings.TrimSpace(strings.TrimPrefix(l, "VmHWM:"))
			}
		}
	}
	t.Logf("services=%d ready_pods/service=%d all_pods_ready_after=%v all_in_b_view_after=%v (lag after last create %v) operator_a_peak_rss=%s",
		n, endpoints, createdIn.Round(time.Millisecond), total.Round(time.Millisecond), (total - createdIn).Round(time.Millisecond), hwm)
}
