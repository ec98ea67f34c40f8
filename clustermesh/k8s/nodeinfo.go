package k8s

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/braidmesh/braid/reconcile"
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

// Backoff bounds of WaitNodeInfo's retries.
const (
	nodeWaitMinBackoff = 100 * time.Millisecond
	nodeWaitMaxBackoff = 5 * time.Second
)

// WaitNodeInfo is GetNodeInfo that waits for the Node to exist: an agent
// may start before its kubelet registered the node (a DaemonSet pod on a
// joining node, a lab node starting beside its agent), and the Node shows
// up moments later. Other failures (the API server unreachable, say) are
// retried too, each logged; an apiserver that refuses the credentials is
// not waited for. It returns when the Node is read or ctx is done.
func WaitNodeInfo(ctx context.Context, client kubernetes.Interface, node string, log *slog.Logger) (NodeInfo, error) {
	bo := reconcile.NewBackoff(nodeWaitMinBackoff, nodeWaitMaxBackoff)
	for attempt := 1; ; attempt++ {
		info, err := GetNodeInfo(ctx, client, node)
		switch {
		case err == nil:
			return info, nil
		case apierrors.IsUnauthorized(err), apierrors.IsForbidden(err):
			return NodeInfo{}, fmt.Errorf("%w (hint: the agent's credentials must allow get on nodes)", err)
		case apierrors.IsNotFound(err):
			if attempt == 1 {
				log.Info("waiting for this node's Node object to be registered", "node", node)
			}
		default:
			log.Warn("read this node's Node object; retrying", "node", node, "err", err)
		}
		if !reconcile.Wait(ctx, bo.Next()) {
			return NodeInfo{}, fmt.Errorf("wait for node %s: %w (last: %w)", node, ctx.Err(), err)
		}
	}
}
