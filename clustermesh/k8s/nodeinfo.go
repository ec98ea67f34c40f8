package k8s

import (
	"context"
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Well-known Node labels an agent places itself with.
const (
	LabelZone   = corev1.LabelTopologyZone   // topology.kubernetes.io/zone
	LabelRegion = corev1.LabelTopologyRegion // topology.kubernetes.io/region
)

// NodeInfo is what an agent finds out about its own node from the Node
// object, so the DaemonSet passes none of it.
type NodeInfo struct {
	Zone, Region string
	// IPs are the node's InternalIP addresses, else its ExternalIP ones,
	// in the order the Node lists them.
	IPs []netip.Addr
}

// GetNodeInfo reads node's zone and region labels and its addresses.
func GetNodeInfo(ctx context.Context, client kubernetes.Interface, node string) (NodeInfo, error) {
	n, err := client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return NodeInfo{}, fmt.Errorf("get node %s: %w", node, err)
	}
	info := NodeInfo{Zone: n.Labels[LabelZone], Region: n.Labels[LabelRegion]}
	for _, typ := range []corev1.NodeAddressType{corev1.NodeInternalIP, corev1.NodeExternalIP} {
		for _, a := range n.Status.Addresses {
			if a.Type != typ {
				continue
			}
			if ip, err := netip.ParseAddr(a.Address); err == nil {
				info.IPs = append(info.IPs, ip.Unmap())
			}
		}
		if len(info.IPs) > 0 {
			break
		}
	}
	return info, nil
}
