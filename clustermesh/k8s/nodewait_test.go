package k8s

import (
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// TestWaitNodeInfoWaitsForRegistration: the Node is missing for the
// agent's first reads (its kubelet has not registered it yet); the agent
// waits instead of failing, and reads the Node once it is there.
func TestWaitNodeInfoWaitsForRegistration(t *testing.T) {
	client := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{LabelZone: "z1"}}})
	var gets atomic.Int32
	client.PrependReactor("get", "nodes", func(k8stesting.Action) (bool, runtime.Object, error) {
		if gets.Add(1) <= 2 {
			return true, nil, apierrors.NewNotFound(corev1.Resource("nodes"), "n1")
		}
		return false, nil, nil // the tracker answers: registered now
	})
	info, err := WaitNodeInfo(t.Context(), client, "n1", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if info.Zone != "z1" || gets.Load() != 3 {
		t.Errorf("info %+v after %d reads, want zone z1 after 3", info, gets.Load())
	}
}

// TestWaitNodeInfoRefused: credentials the apiserver refuses are not
// waited for.
func TestWaitNodeInfoRefused(t *testing.T) {
	client := fake.NewClientset()
	client.PrependReactor("get", "nodes", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(corev1.Resource("nodes"), "n1", errors.New("no RBAC"))
	})
	if _, err := WaitNodeInfo(t.Context(), client, "n1", slog.New(slog.DiscardHandler)); !apierrors.IsForbidden(err) {
		t.Fatalf("err = %v, want forbidden", err)
	}
}
