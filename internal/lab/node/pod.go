package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/braidmesh/braid/reconcile"
)

const (
	// volumeResync is how often ConfigMap and Secret volumes are rewritten.
	volumeResync = 15 * time.Second
	// shutdownGrace bounds how long containers get to stop when the node
	// itself stops.
	shutdownGrace = 2 * time.Second
	// setupRetry is the first wait before retrying a failed pod setup.
	setupRetry = time.Second
)

// podWorker owns one pod (one UID) on this node: its sandbox, containers and
// status. Its goroutine run is the only writer of the sandbox and the
// container lists; containers and the status loop read them under mu.
type podWorker struct {
	n               *node
	uid             types.UID
	namespace, name string
	log             *slog.Logger
	wake            chan struct{} // the pod object changed (cap 1)
	statusWake      chan struct{} // the status may have changed (cap 1)
	done            chan struct{} // closed when run returns

	pushMu sync.Mutex // serializes status writes

	mu          sync.Mutex
	pod         *corev1.Pod // latest object seen
	sb          *sandbox
	sandboxUp   bool
	setupMsg    string
	initCs, cs  []*container
	initialized bool
	initFailed  bool
	startTime   metav1.Time
	grace       time.Duration // for stopping containers
}

func newPodWorker(n *node, pod *corev1.Pod) *podWorker {
	return &podWorker{
		n:          n,
		uid:        pod.UID,
		namespace:  pod.Namespace,
		name:       pod.Name,
		log:        n.log.With("pod", pod.Namespace+"/"+pod.Name),
		wake:       make(chan struct{}, 1),
		statusWake: make(chan struct{}, 1),
		done:       make(chan struct{}),
		pod:        pod.DeepCopy(),
		startTime:  metav1.Now(),
		grace:      shutdownGrace,
	}
}

func (w *podWorker) podName() string { return w.namespace + "/" + w.name }

// poke wakes the worker; it never blocks.
func (w *podWorker) poke() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// statusChanged wakes the status loop; it never blocks.
func (w *podWorker) statusChanged() {
	select {
	case w.statusWake <- struct{}{}:
	default:
	}
}

// spec returns the latest pod object; callers must not modify it.
func (w *podWorker) spec() *corev1.Pod {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pod
}

// refresh reads the pod from the informer cache; nil means it is gone (or
// replaced by a pod with another UID).
func (w *podWorker) refresh() *corev1.Pod {
	pod, err := w.n.pods.Pods(w.namespace).Get(w.name)
	if err != nil || pod.UID != w.uid {
		return nil
	}
	w.mu.Lock()
	w.pod = pod
	w.mu.Unlock()
	return pod
}

func (w *podWorker) stopGrace() time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.grace
}

// terminationGrace is the pod's terminationGracePeriodSeconds (default 30).
func (w *podWorker) terminationGrace() time.Duration {
	if s := w.spec().Spec.TerminationGracePeriodSeconds; s != nil {
		return time.Duration(*s) * time.Second
	}
	return 30 * time.Second
}

// run is the pod's lifecycle: set up, run containers, stop, clean up. It
// returns when the pod is gone from the API, or ctx (the node) is done.
func (w *podWorker) run(ctx context.Context) {
	defer close(w.done)
	statusCtx, stopStatus := context.WithCancel(ctx)
	statusDone := make(chan struct{})
	go func() { defer close(statusDone); w.statusLoop(statusCtx) }()
	defer func() { stopStatus(); <-statusDone }()

	// Sandbox and volumes, retried until they work or the pod goes.
	retry := reconcile.NewBackoff(setupRetry, 30*time.Second)
	for {
		pod := w.refresh()
		if pod == nil || pod.DeletionTimestamp != nil {
			w.finish(ctx, pod)
			return
		}
		err := w.setup(ctx, pod)
		if err == nil {
			break
		}
		w.log.Warn("pod setup", "err", err)
		w.mu.Lock()
		w.setupMsg = err.Error()
		w.mu.Unlock()
		w.statusChanged()
		select {
		case <-ctx.Done():
			w.cleanup()
			return
		case <-w.wake:
		case <-time.After(retry.Next()):
		}
	}

	cctx, stopContainers := context.WithCancel(context.Background())
	containersDone := make(chan struct{})
	go func() { defer close(containersDone); w.runContainers(cctx) }()
	stop := func(grace time.Duration) {
		w.mu.Lock()
		w.grace = grace
		w.mu.Unlock()
		stopContainers()
		<-containersDone
	}
	volumes := time.NewTicker(volumeResync)
	defer volumes.Stop()
	finished := containersDone
	for {
		select {
		case <-ctx.Done():
			stop(min(shutdownGrace, w.terminationGrace()))
			w.cleanup()
			return
		case <-w.wake:
			pod := w.refresh()
			if pod == nil {
				stop(min(shutdownGrace, w.terminationGrace()))
				w.finish(ctx, nil)
				return
			}
			if pod.DeletionTimestamp != nil {
				grace := w.terminationGrace()
				if pod.DeletionGracePeriodSeconds != nil {
					grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
				}
				stop(grace)
				w.finish(ctx, pod)
				return
			}
		case <-finished:
			// Every container exited for good: the pod is Succeeded or
			// Failed. Its sandbox goes; its logs stay until the pod does.
			finished = nil
			w.log.Info("pod terminated")
			w.teardownSandbox()
			w.statusChanged()
		case <-volumes.C:
			if finished != nil {
				if err := w.n.syncVolumes(ctx, w.spec(), w.sb.dir); err != nil {
					w.log.Warn("sync volumes", "err", err)
				}
			}
		}
	}
}

// setup creates the sandbox (once) and writes the volumes.
func (w *podWorker) setup(ctx context.Context, pod *corev1.Pod) error {
	if w.sb == nil {
		sb, err := w.n.createSandbox(pod)
		if err != nil {
			return fmt.Errorf("create sandbox: %w", err)
		}
		w.mu.Lock()
		w.sb = sb
		w.sandboxUp = true
		w.mu.Unlock()
		w.log.Info("sandbox ready", "ip", sb.ip, "veth", sb.rec.Veth)
		w.statusChanged()
	}
	if err := w.n.syncVolumes(ctx, pod, w.sb.dir); err != nil {
		return fmt.Errorf("mount volumes: %w", err)
	}
	w.mu.Lock()
	w.setupMsg = ""
	for _, c := range pod.Spec.InitContainers {
		kind := kindInit
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			kind = kindSidecar
		}
		w.initCs = append(w.initCs, newContainer(w, c, kind))
	}
	for _, c := range pod.Spec.Containers {
		w.cs = append(w.cs, newContainer(w, c, kindRegular))
	}
	w.mu.Unlock()
	return nil
}

// runContainers runs the init containers in order, then the regular ones and
// sidecars until all regular containers exited for good or ctx is done.
func (w *podWorker) runContainers(ctx context.Context) {
	sidecarCtx, stopSidecars := context.WithCancel(ctx)
	defer stopSidecars()
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, c := range w.initCs {
		if c.kind == kindSidecar {
			wg.Add(1)
			go func() { defer wg.Done(); c.supervise(sidecarCtx) }()
			select {
			case <-c.running:
			case <-ctx.Done():
				return
			}
			continue
		}
		c.supervise(ctx)
		if ctx.Err() != nil {
			return
		}
		c.mu.Lock()
		failed := c.exitCode != 0
		c.mu.Unlock()
		if failed {
			// Only with restartPolicy Never does a failed init container
			// end its pod; otherwise supervise retries it.
			w.mu.Lock()
			w.initFailed = true
			w.mu.Unlock()
			w.statusChanged()
			return
		}
	}
	w.mu.Lock()
	w.initialized = true
	w.mu.Unlock()
	w.statusChanged()
	var regular sync.WaitGroup
	for _, c := range w.cs {
		regular.Add(1)
		go func() { defer regular.Done(); c.supervise(ctx) }()
	}
	regular.Wait()
}

// teardownSandbox removes the sandbox of a pod whose containers are done.
func (w *podWorker) teardownSandbox() {
	w.mu.Lock()
	up := w.sandboxUp
	w.sandboxUp = false
	w.mu.Unlock()
	if !up || w.sb == nil {
		return
	}
	if err := w.n.destroySandbox(w.sb); err != nil {
		w.log.Warn("remove sandbox", "err", err)
	}
}

// cleanup removes the sandbox and the pod's state directory.
func (w *podWorker) cleanup() {
	w.teardownSandbox()
	if w.sb != nil {
		if err := os.RemoveAll(w.sb.dir); err != nil {
			w.log.Warn("remove pod state", "err", err)
		}
	}
}

// finish ends a pod being deleted: final status, then the object is deleted
// for good (as a kubelet does once the containers are gone).
func (w *podWorker) finish(ctx context.Context, pod *corev1.Pod) {
	w.teardownSandbox()
	if pod != nil && ctx.Err() == nil {
		if err := w.pushStatus(ctx); err != nil {
			w.log.Warn("final pod status", "err", err)
		}
		zero := int64(0)
		err := w.n.client.CoreV1().Pods(w.namespace).Delete(ctx, w.name, metav1.DeleteOptions{
			GracePeriodSeconds: &zero,
			Preconditions:      &metav1.Preconditions{UID: &w.uid},
		})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			w.log.Warn("delete pod", "err", err)
		}
	}
	w.cleanup()
	w.log.Info("pod removed")
}

// container finds a container (regular, then init) by name.
func (w *podWorker) container(name string) *container {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range w.cs {
		if c.spec.Name == name {
			return c
		}
	}
	for _, c := range w.initCs {
		if c.spec.Name == name {
			return c
		}
	}
	return nil
}

// argv is what runs for container c: its own program when the machine has
// it, else the stand-in.
func (n *node) argv(pod *corev1.Pod, c *corev1.Container, env map[string]string, sb *sandbox) []string {
	argv := containerArgv(c, env)
	if len(argv) > 0 {
		if p, ok := lookProgram(argv[0], env["PATH"]); ok {
			argv[0] = p
			return argv
		}
	}
	return n.standinArgv(pod, c, sb)
}

// standinArgv starts this executable as the stand-in for c.
func (n *node) standinArgv(pod *corev1.Pod, c *corev1.Container, sb *sandbox) []string {
	argv := []string{n.exe, "node", "standin",
		"--pod", pod.Name, "--namespace", pod.Namespace, "--container", c.Name,
		"--node", n.cfg.NodeName, "--cluster", n.cfg.Cluster, "--pod-ip", sb.ip.String()}
	for _, p := range c.Ports {
		switch p.Protocol {
		case corev1.ProtocolUDP:
			argv = append(argv, "--udp", strconv.Itoa(int(p.ContainerPort)))
		case corev1.ProtocolSCTP:
		default:
			argv = append(argv, "--tcp", strconv.Itoa(int(p.ContainerPort)))
		}
	}
	for _, m := range c.VolumeMounts {
		if !servedVolume(pod, m.Name) {
			continue
		}
		src := volumeDir(sb.dir, m.Name)
		if m.SubPath != "" {
			src += "/" + m.SubPath
		}
		argv = append(argv, "--mount", m.MountPath+"="+src)
	}
	return argv
}

// servedVolume reports whether the stand-in serves volume name's files: it
// is a ConfigMap (or a projection of ConfigMaps).
func servedVolume(pod *corev1.Pod, name string) bool {
	for _, v := range pod.Spec.Volumes {
		if v.Name != name {
			continue
		}
		if v.ConfigMap != nil {
			return true
		}
		if v.Projected != nil {
			for _, s := range v.Projected.Sources {
				if s.ConfigMap != nil {
					return true
				}
			}
		}
	}
	return false
}

var errNotRunning = errors.New("container is not running")

// podHostname is the hostname a pod's processes see: spec.hostname, else the
// pod name, at most 63 bytes (as the kubelet truncates it).
func podHostname(pod *corev1.Pod) string {
	h := pod.Spec.Hostname
	if h == "" {
		h = pod.Name
	}
	if len(h) > 63 {
		h = strings.TrimRight(h[:63], "-.")
	}
	return h
}
