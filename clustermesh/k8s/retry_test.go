package k8s

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/kvstore/memory"
)

// TestFailedImportIsRetriedByTheQueue makes the mesh → cluster
// controller's first ServiceImport create fail and checks the import is
// created on the queue's retry, after a single mesh change, with the
// failure recorded in the controller's loop status and no problem left
// once it recovered.
func TestFailedImportIsRetriedByTheQueue(t *testing.T) {
	h := start(t, memory.New(), []runtime.Object{&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}}}, nil)
	var creates atomic.Int32
	h.mcs.PrependReactor("create", "serviceimports", func(k8stesting.Action) (bool, runtime.Object, error) {
		if creates.Add(1) == 1 {
			return true, nil, errors.New("injected create fault")
		}
		return false, nil, nil // let the tracker create it
	})
	h.mesh.set("west", clustermesh.Service{Cluster: "west", Namespace: "default", Name: "api", Global: true, Shared: true,
		ExportedAt: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		Ports:      []clustermesh.ServicePort{{Name: "http", Port: 80, Protocol: clustermesh.TCP}}})
	h.src.MeshChanged() // the only wake-up: resync is minutes away
	testenv.Eventually(t, 10*time.Second, func() error {
		_, err := h.mcs.MulticlusterV1beta1().ServiceImports("default").Get(context.Background(), "api", metav1.GetOptions{})
		return err
	})
	if n := creates.Load(); n < 2 {
		t.Fatalf("%d creates, want the failed one and its retry", n)
	}
	failed := false
	for _, l := range h.src.Status().Loops {
		if l.Name == "mesh_to_kube" {
			failed = !l.LastFailure.IsZero()
		}
	}
	if !failed {
		t.Errorf("mesh_to_kube loop status does not record the failure: %+v", h.src.Status().Loops)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if p := h.src.Status().Problems; len(p) > 0 {
			return fmt.Errorf("problems after recovery: %v", p)
		}
		return nil
	})
}
