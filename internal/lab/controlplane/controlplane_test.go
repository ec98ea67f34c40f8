package controlplane_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/netip"
	"os"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/braidmesh/braid/internal/kubelab"
	"github.com/braidmesh/braid/internal/lab/controlplane"
)

// TestClusterSchedulesOnANode brings one cluster up, registers a node with
// the credentials AddNode wrote, as a kubelet would, and checks what the lab
// nodes rely on: the controller manager gives the node a pod CIDR, a
// Deployment's pod is created and bound to the node, the node's credentials
// are a kubelet's (it may not touch another node) and its serving
// certificate verifies against the cluster CA for its IP.
func TestClusterSchedulesOnANode(t *testing.T) {
	bin := kubelab.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	etcd, err := controlplane.StartEtcd(ctx, bin, dir+"/etcd")
	if err != nil {
		t.Fatal(err)
	}
	defer etcd.Stop()
	c, err := controlplane.Start(ctx, controlplane.Config{
		Name: "east", Dir: dir + "/east", BinDir: bin, EtcdServers: etcd.Endpoint,
		Address:     netip.MustParseAddr("127.0.0.1"),
		ServiceCIDR: netip.MustParsePrefix("172.31.0.0/16"),
		ClusterCIDR: netip.MustParsePrefix("10.31.0.0/16"),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		c.Stop()
		if t.Failed() {
			for _, p := range c.Processes() {
				t.Logf("--- %s ---\n%s", p.Name, p.Tail(15))
			}
		}
	}()

	nodeIP := netip.MustParseAddr("127.0.0.1")
	files, err := c.AddNode("east-0", nodeIP)
	if err != nil {
		t.Fatal(err)
	}
	restCfg, err := clientcmd.BuildConfigFromFlags("", files.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	nodeClient := kubernetes.NewForConfigOrDie(restCfg)
	node, err := nodeClient.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "east-0"},
		Status: corev1.NodeStatus{
			Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: nodeIP.String()}},
			Capacity:  corev1.ResourceList{"cpu": mustQuantity("4"), "memory": mustQuantity("8Gi"), "pods": mustQuantity("110")},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("register node with its own credentials: %v", err)
	}
	// The controller manager writes the node too (pod CIDR, taints): patch
	// the status subresource, as a kubelet does, so a taint the controller
	// manager just changed is not sent back as a stale spec (NodeRestriction
	// forbids a node "modifying taints").
	statusPatch, err := json.Marshal(map[string]corev1.NodeStatus{"status": {
		Allocatable: node.Status.Capacity,
		Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nodeClient.CoreV1().Nodes().Patch(ctx, node.Name, types.StrategicMergePatchType, statusPatch, metav1.PatchOptions{}, "status"); err != nil {
		t.Fatalf("report node status: %v", err)
	}

	// A kubelet may not touch another node (NodeRestriction).
	_, err = nodeClient.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "east-1"}}, metav1.CreateOptions{})
	if !apierrors.IsForbidden(err) {
		t.Errorf("node east-0 creating node east-1: err = %v, want Forbidden", err)
	}

	// The controller manager allocates the node's pod CIDR.
	var podCIDR string
	poll(t, ctx, func() bool {
		n, err := c.Client.CoreV1().Nodes().Get(ctx, "east-0", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		podCIDR = n.Spec.PodCIDR
		return podCIDR != ""
	})
	if p, err := netip.ParsePrefix(podCIDR); err != nil || p.Bits() != controlplane.DefaultNodeCIDRMaskSize ||
		!netip.MustParsePrefix("10.31.0.0/16").Contains(p.Addr()) {
		t.Errorf("node pod CIDR %q, want a /%d in 10.31.0.0/16", podCIDR, controlplane.DefaultNodeCIDRMaskSize)
	}

	// A Deployment's pod is created by the controllers and bound by the
	// scheduler; the node sees it.
	replicas := int32(1)
	labels := map[string]string{"app": "web"}
	if _, err := c.Client.AppsV1().Deployments("default").Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "nginx"}}},
			},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(t, ctx, func() bool {
		pods, err := nodeClient.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=east-0"})
		if err != nil {
			t.Fatalf("list pods as the node: %v", err)
		}
		return len(pods.Items) == 1 && pods.Items[0].Labels["app"] == "web"
	})

	// The kubelet serving certificate verifies for the node's IP.
	pem, err := os.ReadFile(files.ClientCA)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	pair, err := tls.LoadX509KeyPair(files.ServingCert, files.ServingKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: nodeIP.String(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("kubelet serving certificate: %v", err)
	}
}

func poll(t *testing.T, ctx context.Context, done func() bool) {
	t.Helper()
	for !done() {
		select {
		case <-ctx.Done():
			t.Fatalf("condition not met: %v", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func mustQuantity(s string) resource.Quantity { return resource.MustParse(s) }
