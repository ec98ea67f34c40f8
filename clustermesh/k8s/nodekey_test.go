package k8s

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubefake "k8s.io/client-go/kubernetes/fake"
)

func TestAnnotateNodeKeyKeepsOtherAnnotations(t *testing.T) {
	client := kubefake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Annotations: map[string]string{"other": "kept"}}})
	const key = "q2XXmxpS0iF8UfwpD6Dv1Hd7DcYyzdTO5u5F5BDeq3U="
	if err := AnnotateNodeKey(t.Context(), client, "n1", key); err != nil {
		t.Fatal(err)
	}
	n, err := client.CoreV1().Nodes().Get(t.Context(), "n1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n.Annotations[AnnotationWireGuardKey] != key || n.Annotations["other"] != "kept" {
		t.Fatalf("annotations %v", n.Annotations)
	}
	if err := AnnotateNodeKey(t.Context(), client, "missing", key); err == nil {
		t.Fatal("annotating a missing node succeeded")
	}
}
