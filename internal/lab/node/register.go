package node

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

const (
	// leaseDuration and renewInterval are the kubelet's defaults.
	leaseDuration = 40 * time.Second
	renewInterval = 10 * time.Second
	// nodeStatusInterval is how often the Node status is posted when
	// nothing changed (the kubelet's nodeStatusReportFrequency is 5 min;
	// shorter here so status freshness is visible in a short lab run).
	nodeStatusInterval = time.Minute
	// apiRetry is the wait before retrying a failed API write.
	apiRetry = time.Second
	// kubeletVersion is what the node reports; the lab's control plane is
	// Kubernetes v1.37.
	kubeletVersion = "v1.37.2"
)

// register creates the Node or, after a restart, updates it, and posts its
// first status (NotReady until the pod CIDR arrives).
func (n *node) register(ctx context.Context) error {
	nodes := n.client.CoreV1().Nodes()
	for {
		existing, err := nodes.Get(ctx, n.cfg.NodeName, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			_, err = nodes.Create(ctx, n.nodeObject(nil), metav1.CreateOptions{})
		case err == nil:
			_, err = nodes.Update(ctx, n.nodeObject(existing), metav1.UpdateOptions{})
		}
		if err == nil {
			break
		}
		if !apierrors.IsAlreadyExists(err) && !apierrors.IsConflict(err) {
			n.log.Warn("register node", "err", err)
		}
		if waitBackoff(ctx, apiRetry) {
			return ctx.Err()
		}
	}
	return n.postStatus(ctx)
}

// nodeObject is the Node as this node wants it, based on existing (nil to
// create one).
func (n *node) nodeObject(existing *corev1.Node) *corev1.Node {
	nd := &corev1.Node{}
	if existing != nil {
		nd = existing.DeepCopy()
	}
	nd.Name = n.cfg.NodeName
	if nd.Labels == nil {
		nd.Labels = map[string]string{}
	}
	nd.Labels[corev1.LabelHostname] = n.cfg.NodeName
	nd.Labels[corev1.LabelOSStable] = runtime.GOOS
	nd.Labels[corev1.LabelArchStable] = runtime.GOARCH
	if n.cfg.Zone != "" {
		nd.Labels[corev1.LabelTopologyZone] = n.cfg.Zone
	}
	if n.cfg.Region != "" {
		nd.Labels[corev1.LabelTopologyRegion] = n.cfg.Region
	}
	if existing == nil {
		nd.Status = n.nodeStatus(corev1.NodeStatus{})
	}
	return nd
}

// nodeStatus is the status to post, keeping transition times from old.
func (n *node) nodeStatus(old corev1.NodeStatus) corev1.NodeStatus {
	st := *old.DeepCopy()
	st.Capacity = n.capacity
	st.Allocatable = n.capacity
	st.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.cfg.NodeIP.String()}}
	st.DaemonEndpoints.KubeletEndpoint.Port = KubeletPort
	st.NodeInfo = corev1.NodeSystemInfo{
		MachineID:               machineID(),
		BootID:                  bootID(),
		KernelVersion:           kernelVersion(),
		OSImage:                 "Braid lab node",
		ContainerRuntimeVersion: "braidlab://1",
		KubeletVersion:          kubeletVersion,
		OperatingSystem:         runtime.GOOS,
		Architecture:            runtime.GOARCH,
	}
	now := metav1.Now()
	ready := false
	select {
	case <-n.netReady:
		ready = true
	default:
	}
	want := []corev1.NodeCondition{
		{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientMemory", Message: "kubelet has sufficient memory available"},
		{Type: corev1.NodeDiskPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasNoDiskPressure", Message: "kubelet has no disk pressure"},
		{Type: corev1.NodePIDPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientPID", Message: "kubelet has sufficient PID available"},
	}
	if ready {
		want = append(want, corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", Message: "kubelet is posting ready status"})
	} else {
		want = append(want, corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionFalse, Reason: "KubeletNotReady",
			Message: "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:waiting for the node's pod CIDR"})
	}
	prev := map[corev1.NodeConditionType]corev1.NodeCondition{}
	for _, c := range old.Conditions {
		prev[c.Type] = c
	}
	var conds []corev1.NodeCondition
	for _, c := range want {
		c.LastHeartbeatTime = now
		if p, ok := prev[c.Type]; ok && p.Status == c.Status {
			c.LastTransitionTime = p.LastTransitionTime
		} else {
			c.LastTransitionTime = now
		}
		conds = append(conds, c)
		delete(prev, c.Type)
	}
	for _, c := range old.Conditions { // conditions others post
		if _, ok := prev[c.Type]; ok {
			conds = append(conds, c)
		}
	}
	st.Conditions = conds
	return st
}

// postStatus writes the Node status as a strategic merge patch of the
// status subresource, as the kubelet does. A full UpdateStatus would carry
// the spec it read: if the controller manager changed the node's taints in
// between, NodeRestriction rejects the write as the node "modifying taints"
// (admission sees the stale spec before the conflict check does).
func (n *node) postStatus(ctx context.Context) error {
	nodes := n.client.CoreV1().Nodes()
	nd, err := nodes.Get(ctx, n.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	patch, err := json.Marshal(map[string]corev1.NodeStatus{"status": n.nodeStatus(nd.Status)})
	if err != nil {
		return fmt.Errorf("encode node status: %w", err)
	}
	_, err = nodes.Patch(ctx, n.cfg.NodeName, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
	return err
}

// statusUpdates posts the Node status every nodeStatusInterval and when
// nodeWake fires (the network became ready), until ctx is done.
func (n *node) statusUpdates(ctx context.Context) error {
	t := time.NewTicker(nodeStatusInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-n.nodeWake:
		}
		if err := n.postStatus(ctx); err != nil && ctx.Err() == nil {
			n.log.Warn("post node status", "err", err)
			time.AfterFunc(apiRetry, func() { wakeup(n.nodeWake) })
		}
	}
}

// heartbeat keeps the node's Lease in kube-node-lease renewed.
func (n *node) heartbeat(ctx context.Context) error {
	for {
		wait := renewInterval
		if err := n.renewLease(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			n.log.Warn("renew node lease", "err", err)
			wait = apiRetry
		}
		if waitBackoff(ctx, wait) {
			return nil
		}
	}
}

func (n *node) renewLease(ctx context.Context) error {
	leases := n.client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	now := metav1.NewMicroTime(time.Now())
	l, err := leases.Get(ctx, n.cfg.NodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		nd, err := n.client.CoreV1().Nodes().Get(ctx, n.cfg.NodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		holder, secs := n.cfg.NodeName, int32(leaseDuration/time.Second)
		_, err = leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{
				Name:      n.cfg.NodeName,
				Namespace: corev1.NamespaceNodeLease,
				OwnerReferences: []metav1.OwnerReference{{
					APIVersion: "v1", Kind: "Node", Name: nd.Name, UID: nd.UID,
				}},
			},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &secs, RenewTime: &now},
		}, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	l.Spec.RenewTime = &now
	_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
	return err
}

// deleteFinished deletes a terminal pod being deleted that no worker ran.
func (n *node) deleteFinished(ctx context.Context, pod *corev1.Pod) {
	zero := int64(0)
	err := n.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &pod.UID},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		n.log.Warn("delete finished pod", "pod", pod.Namespace+"/"+pod.Name, "err", err)
	}
}

func kernelVersion() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

func machineID() string { return readTrim("/etc/machine-id") }
func bootID() string    { return readTrim("/proc/sys/kernel/random/boot_id") }

func readTrim(path string) string {
	b, err := readFileLimited(path, 256)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
