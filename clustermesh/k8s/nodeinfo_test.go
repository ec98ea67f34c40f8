package k8s

import (
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/braidmesh/braid/internal/kubelab"
)

// TestGetNodeInfo runs against a real kube-apiserver: the agent's
// placement comes from its Node object, not from flags.
func TestGetNodeInfo(t *testing.T) {
	etcd := kubelab.StartEtcd(t)
	c := kubelab.StartCluster(t, etcd, kubelab.Options{Name: "nodeinfo"})
	ctx := t.Context()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "worker-1", Labels: map[string]string{LabelZone: "eu-1a", LabelRegion: "eu-1"}}}
	n, err := c.Client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Status.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeHostName, Address: "worker-1"},
		{Type: corev1.NodeExternalIP, Address: "203.0.113.7"},
		{Type: corev1.NodeInternalIP, Address: "10.0.0.7"},
		{Type: corev1.NodeInternalIP, Address: "fd00::7"},
	}
	if _, err := c.Client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	info, err := GetNodeInfo(ctx, c.Client, "worker-1")
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Addr{netip.MustParseAddr("10.0.0.7"), netip.MustParseAddr("fd00::7")}
	if info.Zone != "eu-1a" || info.Region != "eu-1" || !slices.Equal(info.IPs, want) {
		t.Errorf("node info = %+v, want zone eu-1a, region eu-1, IPs %v", info, want)
	}
	if _, err := GetNodeInfo(ctx, c.Client, "missing"); err == nil {
		t.Error("no error for a missing node")
	}
}
