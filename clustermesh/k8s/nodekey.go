package k8s

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// NodeKeys is what an agent publishes about its WireGuard keys: the
// current public key, the next one while a handover is pending (empty
// otherwise) and the other nodes' next keys it has installed.
type NodeKeys struct {
	Current  string
	Next     string
	Prepared []string
}

// AnnotateNodeKeys sets AnnotationWireGuardKey, AnnotationWireGuardNextKey
// and AnnotationWireGuardPrepared on node from keys in one merge patch,
// removing the latter two when empty; other fields are left alone.
func AnnotateNodeKeys(ctx context.Context, client kubernetes.Interface, node string, keys NodeKeys) error {
	ann := map[string]any{AnnotationWireGuardKey: keys.Current, AnnotationWireGuardNextKey: nil, AnnotationWireGuardPrepared: nil}
	if keys.Next != "" {
		ann[AnnotationWireGuardNextKey] = keys.Next
	}
	if len(keys.Prepared) > 0 {
		ann[AnnotationWireGuardPrepared] = strings.Join(keys.Prepared, ",")
	}
	return patchNodeAnnotations(ctx, client, node, ann)
}

func patchNodeAnnotations(ctx context.Context, client kubernetes.Interface, node string, ann map[string]any) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
	if err != nil {
		return fmt.Errorf("annotate node %s with its WireGuard keys: %w", node, err)
	}
	if _, err := client.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("annotate node %s with its WireGuard keys: %w", node, err)
	}
	return nil
}
