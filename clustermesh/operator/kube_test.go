package operator

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	kubefake "k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"
	mcsfake "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned/fake"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/k8s"
	"github.com/braidmesh/braid/internal/kubelab"
	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/kvstore"
	etcdstore "github.com/braidmesh/braid/kvstore/etcd"
	"github.com/braidmesh/braid/kvstore/etcd/etcdtest"
	"github.com/braidmesh/braid/kvstore/memory"
)

func TestMain(m *testing.M) {
	// The mcs-api fake clientset predates streaming lists (see package k8s).
	os.Setenv("KUBE_FEATURE_WatchListClient", "false")
	os.Exit(m.Run())
}

// kubeEnv is one test cluster: fake clientsets, or a real kubelab cluster
// (whose EndpointSlice controller makes the slices).
type kubeEnv struct {
	cfg        Config
	kube       kubernetes.Interface
	mcs        mcsclient.Interface
	real       bool
	kubeconfig string // real clusters only
}

func clusterConfig(name clustermesh.ClusterName, id clustermesh.ClusterID) clustermesh.ClusterConfig {
	return clustermesh.ClusterConfig{Name: name, ID: id,
		PodCIDRs:     []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/16", id))},
		ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/16", 100+id))}}
}

func fakeEnv(name clustermesh.ClusterName, id clustermesh.ClusterID) *kubeEnv {
	kube := kubefake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}})
	kube.Resources = []*metav1.APIResourceList{{GroupVersion: mcsv1beta1.GroupVersion.String(),
		APIResources: []metav1.APIResource{{Name: "serviceexports"}, {Name: "serviceimports"}}}}
	mcs := mcsfake.NewSimpleClientset()
	return &kubeEnv{kube: kube, mcs: mcs, cfg: Config{Cluster: clusterConfig(name, id), KubeClients: k8s.Clients{Kube: kube, MCS: mcs},
		LeaseTTL: 3 * time.Second, MeshCompleteTimeout: 10 * time.Second, StatusAddr: "127.0.0.1:0"}}
}

func labEnv(t *testing.T, etcd *kubelab.Etcd, name clustermesh.ClusterName, id clustermesh.ClusterID) *kubeEnv {
	c := kubelab.StartCluster(t, etcd, kubelab.Options{Name: string(name), ControllerManager: true,
		ServiceCIDR: fmt.Sprintf("10.%d.0.0/16", 100+id)})
	mcs, err := mcsclient.NewForConfig(c.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	return &kubeEnv{kube: c.Client, mcs: mcs, real: true, kubeconfig: c.Kubeconfig, cfg: Config{Cluster: clusterConfig(name, id), Kubernetes: c.RESTConfig,
		EnsureCRDs: true, LeaseTTL: 3 * time.Second, MeshCompleteTimeout: 10 * time.Second, StatusAddr: "127.0.0.1:0"}}
}

type running struct {
	op   *Operator
	stop func()
}

func startOperator(t *testing.T, env *kubeEnv, store kvstore.Store) *running {
	t.Helper()
	g := env.cfg.Cluster.Grant()
	v, err := json.Marshal(&g)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Put(t.Context(), g.Key(), v, 0); err != nil {
		t.Fatal(err)
	}
	op, err := New(env.cfg, store, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- op.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("operator %s: %v", env.cfg.Cluster.Name, err)
			}
		})
	}
	t.Cleanup(stop)
	return &running{op: op, stop: stop}
}

// remoteService is b's view of cluster a's service ns/name.
func remoteService(op *Operator, a clustermesh.ClusterName, key string) (clustermesh.Service, bool) {
	cs := op.Watcher().Snapshot().Clusters[a]
	if cs == nil {
		return clustermesh.Service{}, false
	}
	s, ok := cs.Services[key]
	return s, ok
}

// addBackend creates a ready pod behind app in env; in a fake cluster it
// writes the EndpointSlice the controller would.
func addBackend(t *testing.T, env *kubeEnv, app, podIP string, port int32) {
	ctx := context.Background()
	c := env.kube
	if _, err := c.CoreV1().Nodes().Get(ctx, "node-1", metav1.GetOptions{}); apierrors.IsNotFound(err) {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1", Labels: map[string]string{"topology.kubernetes.io/zone": "z1"}}}
		if _, err := c.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create node: %v", err)
		}
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: app + "-0", Namespace: "default", Labels: map[string]string{"app": app, "pod-template-hash": "x1"}},
		Spec: corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: "c", Image: "img",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: port}}}}},
	}
	if _, err := c.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod: %v", err)
	}
	status := fmt.Sprintf(`{"status":{"phase":"Running","hostIP":"192.168.0.1","podIP":%q,"podIPs":[{"ip":%q}],`+
		`"conditions":[{"type":"Ready","status":"True"},{"type":"ContainersReady","status":"True"}]}}`, podIP, podIP)
	if _, err := c.CoreV1().Pods("default").Patch(ctx, pod.Name, types.MergePatchType, []byte(status), metav1.PatchOptions{}, "status"); err != nil {
		t.Fatalf("patch pod status: %v", err)
	}
	if env.real {
		return
	}
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: app + "-abcde", Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: app}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(port), Protocol: ptr.To(corev1.ProtocolTCP)}},
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{podIP}, NodeName: ptr.To("node-1"), Zone: ptr.To("z1"),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)}}},
	}
	if _, err := c.DiscoveryV1().EndpointSlices("default").Create(ctx, es, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create slice: %v", err)
	}
}

func createService(t *testing.T, env *kubeEnv, name string, ann map[string]string, proto corev1.Protocol) {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Annotations: ann},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: proto, TargetPort: intstr.FromString("http")}}},
	}
	if _, err := env.kube.CoreV1().Services("default").Create(context.Background(), svc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create service %s: %v", name, err)
	}
}

func setAnnotations(t *testing.T, env *kubeEnv, name string, ann map[string]string) {
	ctx := context.Background()
	svc, err := env.kube.CoreV1().Services("default").Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc.Annotations = ann
	if _, err := env.kube.CoreV1().Services("default").Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// deleteWatch records deletes of a's keys from now on.
func deleteWatch(t *testing.T, store kvstore.Store, a clustermesh.ClusterName) func() []string {
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var deletes []string
	listed := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range store.Watch(ctx, clustermesh.Root) {
			switch ev.Kind {
			case kvstore.EventListDone:
				select {
				case <-listed:
				default:
					close(listed)
				}
			case kvstore.EventDelete:
				if pk, err := clustermesh.ParseKey(ev.Key); err == nil && pk.Cluster == a {
					mu.Lock()
					deletes = append(deletes, ev.Key)
					mu.Unlock()
				}
			}
		}
	}()
	<-listed
	return func() []string {
		cancel()
		<-done
		return deletes
	}
}

func runTwoClusters(t *testing.T, a, b *kubeEnv, store kvstore.Store) {
	ctx := context.Background()
	timeout := 30 * time.Second
	opA := startOperator(t, a, store)
	opB := startOperator(t, b, store)
	global := map[string]string{k8s.AnnotationGlobal: "true"}

	// A global service with a ready pod in A appears with its backend in B.
	addBackend(t, a, "web", "10.1.1.5", 8080)
	createService(t, a, "web", global, corev1.ProtocolTCP)
	testenv.Eventually(t, timeout, func() error {
		s, ok := remoteService(opB.op, "a", "default/web")
		if !ok || len(s.Backends) != 1 || s.Backends[0].IP != netip.MustParseAddr("10.1.1.5") || !s.Backends[0].Ready {
			return fmt.Errorf("got %+v (present %v)", s, ok)
		}
		if p, _ := s.Backends[0].Port("http"); p != 8080 {
			return fmt.Errorf("backend port %d", p)
		}
		return nil
	})
	testenv.Eventually(t, timeout, func() error {
		cs := opB.op.Watcher().Snapshot().Clusters["a"]
		if cs == nil {
			return fmt.Errorf("a unknown")
		}
		e, ok := cs.IPs[netip.MustParsePrefix("10.1.1.5/32")]
		if !ok || cs.Identities[e.Identity].Labels["app"] != "web" {
			return fmt.Errorf("ip entry %+v %v", e, ok)
		}
		return nil
	})
	// Affinity changes are reflected.
	setAnnotations(t, a, "web", map[string]string{k8s.AnnotationGlobal: "true", "service.cilium.io/affinity": "local"})
	testenv.Eventually(t, timeout, func() error {
		if s, _ := remoteService(opB.op, "a", "default/web"); s.Affinity != clustermesh.AffinityLocal {
			return fmt.Errorf("affinity %q", s.Affinity)
		}
		return nil
	})
	// Removing the annotation withdraws it; restoring it brings it back.
	setAnnotations(t, a, "web", nil)
	testenv.Eventually(t, timeout, func() error {
		if _, ok := remoteService(opB.op, "a", "default/web"); ok {
			return fmt.Errorf("still there")
		}
		return nil
	})
	setAnnotations(t, a, "web", global)
	testenv.Eventually(t, timeout, func() error {
		if _, ok := remoteService(opB.op, "a", "default/web"); !ok {
			return fmt.Errorf("absent")
		}
		return nil
	})

	// An invalid annotation: a Warning Event, not global, operator keeps running.
	createService(t, a, "bad", map[string]string{k8s.AnnotationGlobal: "true", k8s.AnnotationAffinity: "closest"}, corev1.ProtocolTCP)
	testenv.Eventually(t, timeout, func() error {
		evs, err := a.kube.CoreV1().Events("default").List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, e := range evs.Items {
			if e.Type == corev1.EventTypeWarning && e.InvolvedObject.Name == "bad" && strings.Contains(e.Message, k8s.AnnotationAffinity) &&
				strings.Contains(e.Message, "local, remote, none") {
				return nil
			}
		}
		return fmt.Errorf("none among %d events", len(evs.Items))
	})

	// ServiceExports with conflicting protocols: Conflict on both, an import in each.
	createService(t, a, "api", nil, corev1.ProtocolTCP)
	createService(t, b, "api", nil, corev1.ProtocolUDP)
	for _, env := range []*kubeEnv{a, b} {
		// Fake clientsets do not set creation timestamps; apiservers do.
		exp := &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "default", CreationTimestamp: metav1.Now()}}
		testenv.Eventually(t, timeout, func() error { // the CRD may still be settling
			_, err := env.mcs.MulticlusterV1beta1().ServiceExports("default").Create(ctx, exp, metav1.CreateOptions{})
			return err
		})
	}
	for _, env := range []*kubeEnv{a, b} {
		testenv.Eventually(t, timeout, func() error {
			exp, err := env.mcs.MulticlusterV1beta1().ServiceExports("default").Get(ctx, "api", metav1.GetOptions{})
			if err != nil {
				return err
			}
			c := meta.FindStatusCondition(exp.Status.Conditions, string(mcsv1beta1.ServiceExportConditionConflict))
			if c == nil || c.Status != metav1.ConditionTrue || c.Reason != string(mcsv1beta1.ServiceExportReasonPortConflict) ||
				!strings.Contains(c.Message, "conflicting clusters: a, b") {
				return fmt.Errorf("conflict condition %+v", c)
			}
			if !meta.IsStatusConditionTrue(exp.Status.Conditions, string(mcsv1beta1.ServiceExportConditionValid)) {
				return fmt.Errorf("not valid: %+v", exp.Status.Conditions)
			}
			imp, err := env.mcs.MulticlusterV1beta1().ServiceImports("default").Get(ctx, "api", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if len(imp.Spec.Ports) != 1 || len(imp.Status.Clusters) != 2 {
				return fmt.Errorf("import %+v", imp)
			}
			return nil
		})
	}

	// Restarting A's operator deletes nothing in the kvstore.
	deletes := deleteWatch(t, store, "a")
	opA.stop()
	opA = startOperator(t, a, store)
	testenv.Eventually(t, timeout, func() error {
		ps := opA.op.Snapshot().Publish
		for _, k := range clustermesh.Kinds {
			if !ps.Synced[k] {
				return fmt.Errorf("%s not synced", k)
			}
		}
		return nil
	})
	if d := deletes(); len(d) > 0 {
		t.Errorf("restart deleted %v", d)
	}

	// Deleting the service withdraws it from B.
	if err := a.kube.CoreV1().Services("default").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, timeout, func() error {
		if _, ok := remoteService(opB.op, "a", "default/web"); ok {
			return fmt.Errorf("still there")
		}
		return nil
	})

	// Every controller is a reconcile loop on /metrics and in the status.
	metrics := httpGet(t, opB.op.StatusURL()+"/metrics")
	for _, loop := range []string{"publish", "kube_to_mesh", "mesh_to_kube"} {
		if want := `braid_reconcile_duration_seconds_count{loop="` + loop + `"}`; !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	var names []string
	for _, l := range opB.op.Snapshot().Loops {
		names = append(names, l.Name)
	}
	if want := []string{"publish", "kube_to_mesh", "mesh_to_kube"}; !slices.Equal(names, want) {
		t.Errorf("status loops %v, want %v", names, want)
	}
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s, %v", url, resp.Status, err)
	}
	return string(b)
}

// TestTwoClustersFake runs the acceptance scenario over fake clientsets and
// an in-memory kvstore: no binaries needed.
func TestTwoClustersFake(t *testing.T) {
	runTwoClusters(t, fakeEnv("a", 1), fakeEnv("b", 2), memory.New())
}

// TestTwoClustersKubelab runs it against two real kube-apiservers (with
// controller managers) and an embedded etcd as the broker. It skips when
// the kube binaries are not built.
func TestTwoClustersKubelab(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two kube-apiservers")
	}
	etcd := kubelab.StartEtcd(t)
	a := labEnv(t, etcd, "a", 1)
	b := labEnv(t, etcd, "b", 2)
	srv := etcdtest.Start(t, etcdtest.WithoutFsync())
	store, err := etcdstore.New(context.Background(), etcdstore.Config{Endpoints: srv.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	runTwoClusters(t, a, b, store)
}
