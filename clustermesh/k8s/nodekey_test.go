package k8s

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubefake "k8s.io/client-go/kubernetes/fake"
)

func TestAnnotateNodeKeysKeepsOtherAnnotations(t *testing.T) {
	client := kubefake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Annotations: map[string]string{"other": "kept"}}})
	const (
		key  = "q2XXmxpS0iF8UfwpD6Dv1Hd7DcYyzdTO5u5F5BDeq3U="
		next = "cGTBYuAWdGGsjd7OUd1ewDX+EvbjSbPwkv/2z8pUDVY="
		acks = "8GqrGW6D3Ah+2xNVv9FcVDM0F4KQjqTTq3nA2WE6S2o="
	)
	get := func() map[string]string {
		t.Helper()
		n, err := client.CoreV1().Nodes().Get(t.Context(), "n1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return n.Annotations
	}
	if err := AnnotateNodeKeys(t.Context(), client, "n1", NodeKeys{Current: key, Next: next, Prepared: []string{acks, key}}); err != nil {
		t.Fatal(err)
	}
	if a := get(); a[AnnotationWireGuardKey] != key || a[AnnotationWireGuardNextKey] != next || a[AnnotationWireGuardPrepared] != acks+","+key || a["other"] != "kept" {
		t.Fatalf("annotations %v", a)
	}
	// The handover done: next and prepared keys go away, the rest stays.
	if err := AnnotateNodeKeys(t.Context(), client, "n1", NodeKeys{Current: next}); err != nil {
		t.Fatal(err)
	}
	a := get()
	if _, ok := a[AnnotationWireGuardNextKey]; ok || a[AnnotationWireGuardKey] != next || a["other"] != "kept" {
		t.Fatalf("annotations %v", a)
	}
	if _, ok := a[AnnotationWireGuardPrepared]; ok {
		t.Fatalf("prepared keys kept: %v", a)
	}
	if err := AnnotateNodeKeys(t.Context(), client, "missing", NodeKeys{Current: key}); err == nil {
		t.Fatal("annotating a missing node succeeded")
	}
}
