package k8s

import (
	"context"
	"encoding/json"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// AnnotateNodeKey sets AnnotationWireGuardKey on node to key, which is how
// an agent hands its WireGuard public key to the operator that publishes
// the node. It is a merge patch of that one annotation, so it needs only
// "patch" on nodes and never overwrites other fields.
func AnnotateNodeKey(ctx context.Context, client kubernetes.Interface, node, key string) error {
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"annotations": map[string]string{AnnotationWireGuardKey: key}},
	})
	if err != nil {
		return fmt.Errorf("annotate node %s with its WireGuard key: %w", node, err)
	}
	if _, err := client.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("annotate node %s with its WireGuard key: %w", node, err)
	}
	return nil
}
