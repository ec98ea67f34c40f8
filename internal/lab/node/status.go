package node

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

// statusRetry is the wait before retrying a failed status write.
const statusRetry = time.Second

// statusLoop writes the pod status whenever statusChanged was called, until
// ctx is done; failed writes are retried.
func (w *podWorker) statusLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.statusWake:
		}
		if err := w.pushStatus(ctx); err != nil && ctx.Err() == nil {
			w.log.Warn("update pod status", "err", err)
			time.AfterFunc(statusRetry, w.statusChanged)
		}
	}
}

// pushStatus writes the status computed from the worker's state, unless it
// is what the API already has.
func (w *podWorker) pushStatus(ctx context.Context) error {
	w.pushMu.Lock()
	defer w.pushMu.Unlock()
	pods := w.n.client.CoreV1().Pods(w.namespace)
	first := true
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var pod *corev1.Pod
		if first {
			first = false
			if cached, err := w.n.pods.Pods(w.namespace).Get(w.name); err == nil && cached.UID == w.uid {
				pod = cached.DeepCopy()
			}
		}
		if pod == nil {
			var err error
			pod, err = pods.Get(ctx, w.name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return nil
			}
			if err != nil {
				return err
			}
			if pod.UID != w.uid {
				return nil
			}
		}
		status := w.buildStatus(pod)
		if equality.Semantic.DeepEqual(pod.Status, status) {
			return nil
		}
		pod.Status = status
		_, err := pods.UpdateStatus(ctx, pod, metav1.UpdateOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	})
}

// buildStatus is the pod's status as a kubelet would report it, starting
// from the API's current one (fields others own are kept).
func (w *podWorker) buildStatus(pod *corev1.Pod) corev1.PodStatus {
	old := pod.Status
	st := *old.DeepCopy()
	nodeIP := w.n.cfg.NodeIP.String()
	st.HostIP = nodeIP
	st.HostIPs = []corev1.HostIP{{IP: nodeIP}}

	w.mu.Lock()
	sb, sandboxUp, setupMsg := w.sb, w.sandboxUp, w.setupMsg
	initialized, initFailed := w.initialized, w.initFailed
	initCs, cs := w.initCs, w.cs
	startTime := w.startTime
	w.mu.Unlock()

	if st.StartTime == nil {
		st.StartTime = &startTime
	}
	if sb != nil {
		st.PodIP = sb.ip.String()
		st.PodIPs = []corev1.PodIP{{IP: st.PodIP}}
	}

	st.InitContainerStatuses = containerStatuses(pod.Spec.InitContainers, initCs, setupMsg)
	st.ContainerStatuses = containerStatuses(pod.Spec.Containers, cs, setupMsg)

	st.Phase = podPhase(pod, cs, initFailed)

	var notReady []string
	for _, s := range st.ContainerStatuses {
		if !s.Ready {
			notReady = append(notReady, s.Name)
		}
	}
	var uninit []string
	if !initialized {
		for _, c := range pod.Spec.InitContainers {
			uninit = append(uninit, c.Name)
		}
	}
	terminal := st.Phase == corev1.PodSucceeded || st.Phase == corev1.PodFailed

	conds := []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue},
		boolCond(corev1.PodReadyToStartContainers, sandboxUp, "", ""),
		boolCond(corev1.PodInitialized, initialized || len(pod.Spec.InitContainers) == 0,
			"ContainersNotInitialized", fmt.Sprintf("containers with incomplete status: [%s]", strings.Join(uninit, " "))),
	}
	containersReady := len(notReady) == 0 && !terminal
	reason, msg := "ContainersNotReady", fmt.Sprintf("containers with unready status: [%s]", strings.Join(notReady, " "))
	if terminal {
		reason, msg = "PodCompleted", ""
	}
	conds = append(conds, boolCond(corev1.ContainersReady, containersReady, reason, msg))
	ready := containersReady
	for _, g := range pod.Spec.ReadinessGates {
		if !conditionTrue(old.Conditions, g.ConditionType) {
			ready = false
			reason, msg = "ReadinessGatesNotReady", fmt.Sprintf("the status of pod readiness gate %q is not \"True\"", g.ConditionType)
		}
	}
	conds = append(conds, boolCond(corev1.PodReady, ready, reason, msg))
	for i := range conds {
		conds[i].ObservedGeneration = pod.Generation
	}
	st.Conditions = mergeConditions(old.Conditions, conds)
	st.ObservedGeneration = pod.Generation
	return st
}

func boolCond(t corev1.PodConditionType, ok bool, reason, msg string) corev1.PodCondition {
	if ok {
		return corev1.PodCondition{Type: t, Status: corev1.ConditionTrue}
	}
	return corev1.PodCondition{Type: t, Status: corev1.ConditionFalse, Reason: reason, Message: msg}
}

func conditionTrue(conds []corev1.PodCondition, t corev1.PodConditionType) bool {
	for _, c := range conds {
		if c.Type == t {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// mergeConditions replaces the conditions we own in old with ours, keeping
// the transition time of those whose status did not change, and keeps the
// others (readiness gates, DisruptionTarget, ...).
func mergeConditions(old, ours []corev1.PodCondition) []corev1.PodCondition {
	now := metav1.Now()
	byType := map[corev1.PodConditionType]corev1.PodCondition{}
	for _, c := range old {
		byType[c.Type] = c
	}
	owned := map[corev1.PodConditionType]bool{}
	var out []corev1.PodCondition
	for _, c := range ours {
		owned[c.Type] = true
		if prev, ok := byType[c.Type]; ok && prev.Status == c.Status {
			c.LastTransitionTime = prev.LastTransitionTime
			if c.Type == corev1.PodScheduled {
				c = prev
			}
		} else {
			c.LastTransitionTime = now
		}
		out = append(out, c)
	}
	for _, c := range old {
		if !owned[c.Type] {
			out = append(out, c)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return condOrder(out[i].Type) < condOrder(out[j].Type) })
	return out
}

func condOrder(t corev1.PodConditionType) int {
	switch t {
	case corev1.PodReadyToStartContainers:
		return 0
	case corev1.PodInitialized:
		return 1
	case corev1.PodReady:
		return 2
	case corev1.ContainersReady:
		return 3
	case corev1.PodScheduled:
		return 4
	}
	return 5
}

// containerStatuses renders the statuses of specs in spec order; containers
// not created yet are Waiting in ContainerCreating (or with the setup error).
func containerStatuses(specs []corev1.Container, cs []*container, setupMsg string) []corev1.ContainerStatus {
	if len(specs) == 0 {
		return nil
	}
	byName := map[string]*container{}
	for _, c := range cs {
		byName[c.spec.Name] = c
	}
	out := make([]corev1.ContainerStatus, 0, len(specs))
	for _, spec := range specs {
		s := corev1.ContainerStatus{Name: spec.Name, Image: spec.Image, ImageID: imageID(spec.Image)}
		c := byName[spec.Name]
		if c == nil {
			s.State.Waiting = &corev1.ContainerStateWaiting{Reason: "ContainerCreating", Message: setupMsg}
			started := false
			s.Started = &started
			out = append(out, s)
			continue
		}
		c.mu.Lock()
		s.ContainerID = c.id
		s.State = *c.state.DeepCopy()
		if c.restarts > 0 && c.last.Terminated != nil && c.state.Terminated == nil {
			s.LastTerminationState = *c.last.DeepCopy()
		}
		s.RestartCount = c.restarts
		running := c.state.Running != nil
		s.Ready = running && c.ready
		started := running && c.started
		s.Started = &started
		c.mu.Unlock()
		out = append(out, s)
	}
	return out
}

// imageID names the image a container "ran"; the lab pulls nothing.
func imageID(image string) string { return "braidlab://" + image }

// podPhase follows the kubelet: Pending until every regular container has
// started once; Succeeded or Failed when all exited for good; else Running.
func podPhase(pod *corev1.Pod, cs []*container, initFailed bool) corev1.PodPhase {
	if initFailed {
		return corev1.PodFailed
	}
	if len(cs) == 0 {
		return corev1.PodPending
	}
	final, failed := 0, 0
	for _, c := range cs {
		c.mu.Lock()
		everRan := c.state.Running != nil || c.state.Terminated != nil || c.restarts > 0
		if c.final {
			final++
			if c.exitCode != 0 {
				failed++
			}
		}
		c.mu.Unlock()
		if !everRan {
			return corev1.PodPending
		}
	}
	if final < len(cs) {
		return corev1.PodRunning
	}
	// A pod stopped because it is being deleted keeps Running, as the
	// kubelet reports it until the object is gone.
	if pod.DeletionTimestamp != nil && pod.Spec.RestartPolicy == corev1.RestartPolicyAlways {
		return corev1.PodRunning
	}
	if failed > 0 {
		return corev1.PodFailed
	}
	return corev1.PodSucceeded
}
