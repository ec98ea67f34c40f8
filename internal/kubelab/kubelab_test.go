package kubelab_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/braidmesh/braid/internal/kubelab"
	"github.com/braidmesh/braid/internal/testenv"
)

// TestClustersShareEtcd runs two clusters on one etcd: one with a controller
// manager, which turns a Ready Pod behind a Service into an EndpointSlice, and
// one without, which sees none of the other's objects.
func TestClustersShareEtcd(t *testing.T) {
	etcd := kubelab.StartEtcd(t)
	east := kubelab.StartCluster(t, etcd, kubelab.Options{Name: "east", ControllerManager: true, ServiceCIDR: "10.96.0.0/16"})
	west := kubelab.StartCluster(t, etcd, kubelab.Options{Name: "west", ServiceCIDR: "10.112.0.0/16"})
	ctx := t.Context()
	c := east.Client

	// No kubelet runs: the Node is created through the API (the endpointslice
	// controller needs it) and the Pod's status is patched by hand.
	if _, err := c.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create node: %v", err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-0", Namespace: "default", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{
			NodeName:   "node-1",
			Containers: []corev1.Container{{Name: "web", Image: "web", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}},
		},
	}
	if _, err := c.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod: %v", err)
	}
	status := `{"status":{"phase":"Running","podIP":"10.244.1.5","podIPs":[{"ip":"10.244.1.5"}],` +
		`"conditions":[{"type":"Ready","status":"True"},{"type":"ContainersReady","status":"True"}]}}`
	if _, err := c.CoreV1().Pods("default").Patch(ctx, "web-0", types.MergePatchType, []byte(status), metav1.PatchOptions{}, "status"); err != nil {
		t.Fatalf("patch pod status: %v", err)
	}
	svc, err := c.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "web"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service: %v", err)
	}
	if ip := netip.MustParseAddr(svc.Spec.ClusterIP); !netip.MustParsePrefix("10.96.0.0/16").Contains(ip) {
		t.Errorf("east service IP %s is outside east's service CIDR", ip)
	}

	start := time.Now()
	slice := waitForSlice(ctx, t, east, "default", "web")
	t.Logf("EndpointSlice generated %v after the Service was created", time.Since(start).Round(time.Millisecond))
	if len(slice.Endpoints) != 1 || slice.Endpoints[0].Addresses[0] != "10.244.1.5" ||
		slice.Endpoints[0].Conditions.Ready == nil || !*slice.Endpoints[0].Conditions.Ready ||
		slice.Endpoints[0].NodeName == nil || *slice.Endpoints[0].NodeName != "node-1" {
		t.Errorf("endpoints = %+v, want one ready endpoint 10.244.1.5 on node-1", slice.Endpoints)
	}
	if len(slice.Ports) != 1 || *slice.Ports[0].Port != 8080 {
		t.Errorf("ports = %+v, want 8080", slice.Ports)
	}

	// west shares the etcd but not the objects.
	if _, err := west.Client.CoreV1().Services("default").Get(ctx, "web", metav1.GetOptions{}); err == nil {
		t.Error("west sees east's Service")
	}
	pods, err := west.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("west: list pods: %v", err)
	}
	if len(pods.Items) != 0 {
		t.Errorf("west has %d pods, want 0", len(pods.Items))
	}
	// The apiserver creates its own Service shortly after it is ready.
	var kube *corev1.Service
	testenv.Eventually(t, 30*time.Second, func() (err error) {
		kube, err = west.Client.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
		return err
	})
	if ip := netip.MustParseAddr(kube.Spec.ClusterIP); !netip.MustParsePrefix("10.112.0.0/16").Contains(ip) {
		t.Errorf("west's kubernetes service IP %s is outside west's service CIDR", ip)
	}

	// The kubeconfig works for kubectl.
	out, err := west.Kubectl(ctx, nil, "get", "namespace", "default", "-o", "name")
	if err != nil || string(out) != "namespace/default\n" {
		t.Errorf("kubectl get namespace default = %q, %v", out, err)
	}
}

// waitForSlice polls until the Service has an EndpointSlice with endpoints.
func waitForSlice(ctx context.Context, t *testing.T, c *kubelab.Cluster, ns, svc string) *discoveryv1.EndpointSlice {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var last error
	for {
		slices, err := c.Client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{
			LabelSelector: discoveryv1.LabelServiceName + "=" + svc,
		})
		switch {
		case err != nil:
			last = err
		case len(slices.Items) == 1 && len(slices.Items[0].Endpoints) > 0:
			return &slices.Items[0]
		default:
			last = fmt.Errorf("%d slices: %+v", len(slices.Items), slices.Items)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no EndpointSlice for service %s/%s: %v", ns, svc, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
