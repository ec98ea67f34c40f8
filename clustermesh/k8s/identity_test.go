package k8s

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/kvstore/memory"
)

// identityOf returns the published identity of the pod at ip.
func identityOf(h *harness, ip string) (*clustermesh.IPEntry, *clustermesh.Identity, error) {
	e, ok := h.pub.get((&clustermesh.IPEntry{Cluster: testCluster.Name, Prefix: netip.MustParsePrefix(ip + "/32")}).Key()).(*clustermesh.IPEntry)
	if !ok {
		return nil, nil, fmt.Errorf("no IP entry for %s", ip)
	}
	id, ok := h.pub.get((&clustermesh.Identity{Cluster: testCluster.Name, ID: e.Identity}).Key()).(*clustermesh.Identity)
	if !ok {
		return nil, nil, fmt.Errorf("IP entry %s names identity %d, which is not published", ip, e.Identity)
	}
	return e, id, nil
}

// TestIdentityCarriesNamespaceLabels checks that an identity holds the
// pod's labels (not the reserved ones a pod tries to set), its namespace
// and its namespace's labels, that the pod's named ports ride on its IP
// entry, and that relabelling the namespace re-derives the identity.
func TestIdentityCarriesNamespaceLabels(t *testing.T) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"team": "a", "kubernetes.io/metadata.name": "shop"}}}
	p := pod("shop", "web", "10.3.1.5", map[string]string{"app": "web", clustermesh.LabelCluster: "west",
		clustermesh.LabelNamespace: "kube-system", clustermesh.NamespaceLabelPrefix + "team": "b"})
	p.Spec.Containers = []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{
		{Name: "http", ContainerPort: 8080}, {Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}, {ContainerPort: 9}}}}
	h := start(t, memory.New(), []runtime.Object{node("n1", "192.168.1.1", "z1"), ns, p}, nil)

	var before clustermesh.NumericIdentity
	testenv.Eventually(t, 10*time.Second, func() error {
		e, id, err := identityOf(h, "10.3.1.5")
		if err != nil {
			return err
		}
		want := map[string]string{"app": "web", clustermesh.LabelNamespace: "shop",
			clustermesh.NamespaceLabelPrefix + "team": "a", clustermesh.NamespaceLabelPrefix + "kubernetes.io/metadata.name": "shop"}
		if fmt.Sprint(id.Labels) != fmt.Sprint(want) {
			return fmt.Errorf("identity labels %v, want %v", id.Labels, want)
		}
		wantPorts := []clustermesh.NamedPort{{Name: "dns", Port: 53, Protocol: clustermesh.UDP}, {Name: "http", Port: 8080, Protocol: clustermesh.TCP}}
		if fmt.Sprint(e.NamedPorts) != fmt.Sprint(wantPorts) {
			return fmt.Errorf("named ports %v, want %v", e.NamedPorts, wantPorts)
		}
		before = e.Identity
		return nil
	})

	ns = ns.DeepCopy()
	ns.Labels["team"] = "b"
	if _, err := h.kube.CoreV1().Namespaces().Update(context.Background(), ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		e, id, err := identityOf(h, "10.3.1.5")
		if err != nil {
			return err
		}
		if got := id.Labels[clustermesh.NamespaceLabelPrefix+"team"]; got != "b" {
			return fmt.Errorf("identity %d has namespace label team=%q, want b after the relabel", e.Identity, got)
		}
		if e.Identity == before {
			return fmt.Errorf("identity %d unchanged by the relabel", before)
		}
		return nil
	})
	// The old identity is withdrawn once no pod uses it.
	testenv.Eventually(t, 10*time.Second, func() error {
		if r := h.pub.get((&clustermesh.Identity{Cluster: testCluster.Name, ID: before}).Key()); r != nil {
			return fmt.Errorf("identity %d still published", before)
		}
		return nil
	})
}
