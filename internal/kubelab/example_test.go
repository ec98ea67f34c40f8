package kubelab_test

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/braidmesh/braid/internal/kubelab"
)

// A test that needs a real apiserver starts an etcd and a cluster on it; it
// is skipped when the binaries are not built, and everything is stopped when
// it ends.
func Example() {
	var t *testing.T // the test's own
	etcd := kubelab.StartEtcd(t)
	east := kubelab.StartCluster(t, etcd, kubelab.Options{Name: "east", ControllerManager: true})
	west := kubelab.StartCluster(t, etcd, kubelab.Options{Name: "west", ServiceCIDR: "10.112.0.0/16"})

	_, _ = east.Client.CoreV1().Services("default").List(t.Context(), metav1.ListOptions{})
	_ = west.RESTConfig // for informers, dynamic clients, ...
	_ = west.Kubeconfig // for kubectl and other tools
}
