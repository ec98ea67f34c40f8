package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

// node is a running lab node.
type node struct {
	cfg      Config
	log      *slog.Logger
	client   kubernetes.Interface
	spawn    *spawner
	exe      string // this executable, for the stand-in
	busybox  string // busybox applet dir, "" without busybox
	capacity corev1.ResourceList

	nodes corelisters.NodeLister
	pods  corelisters.PodLister

	ipam      *ipam
	podCIDR   chan string   // the node's pod CIDR, once
	netReady  chan struct{} // closed once pods can be networked
	nodeWake  chan struct{} // an own-node status refresh is due (cap 1)
	routeWake chan struct{} // the host-gw routes may be stale (cap 1)

	mu      sync.Mutex
	workers map[types.UID]*podWorker
	podsCtx context.Context
	podsWG  sync.WaitGroup
}

// Run runs the lab node until ctx is done, then stops every pod and removes
// what it created (pod namespaces, veths, cgroups, host-gw routes) and
// returns. It returns early with an error if the node cannot be set up.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("lab node: %w", err)
	}
	log := slog.Default().With("node", cfg.NodeName, "cluster", cfg.Cluster)
	if err := os.MkdirAll(filepath.Join(cfg.StateDir, "pods"), 0o755); err != nil {
		return fmt.Errorf("lab node: state dir: %w", err)
	}
	if err := CleanupLeftovers(cfg.StateDir); err != nil {
		return fmt.Errorf("lab node: %w", err)
	}
	// Routing between the underlay and the pods, and across nodes.
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0); err != nil {
		return fmt.Errorf("lab node: enable IP forwarding: %w", err)
	}
	restCfg, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return fmt.Errorf("lab node: kubeconfig %s: %w", cfg.Kubeconfig, err)
	}
	restCfg.UserAgent = "braid-lab-node/" + cfg.NodeName
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("lab node: %w", err)
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("lab node: find own executable for the stand-in: %w", err)
	}
	bb, err := setupBusybox(filepath.Join(cfg.StateDir, "busybox"))
	if err != nil {
		return fmt.Errorf("lab node: %w", err)
	}
	n := &node{
		cfg:       cfg,
		log:       log,
		client:    client,
		spawn:     newSpawner(),
		exe:       exe,
		busybox:   bb,
		capacity:  cfg.capacity(),
		podCIDR:   make(chan string, 1),
		netReady:  make(chan struct{}),
		nodeWake:  make(chan struct{}, 1),
		routeWake: make(chan struct{}, 1),
		workers:   map[types.UID]*podWorker{},
	}
	return n.run(ctx)
}

func (n *node) run(ctx context.Context) error {
	// The spawner outlives the pods: its thread's exit kills their processes.
	spawnCtx, stopSpawner := context.WithCancel(context.Background())
	spawnDone := make(chan error, 1)
	go func() { spawnDone <- n.spawn.run(spawnCtx) }()
	defer func() { stopSpawner(); <-spawnDone }()

	if err := n.register(ctx); err != nil {
		return fmt.Errorf("lab node: %w", err)
	}
	n.log.Info("node registered", "ip", n.cfg.NodeIP)

	// Our own Node (for the pod CIDR) is always readable by a kubelet;
	// all Nodes (for host-gw routes) only with extra RBAC: see routes.go.
	ownInformers := informers.NewSharedInformerFactoryWithOptions(n.client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", n.cfg.NodeName).String()
		}))
	if _, err := ownInformers.Core().V1().Nodes().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { n.onNode(obj) },
		UpdateFunc: func(_, obj any) { n.onNode(obj) },
	}); err != nil {
		return fmt.Errorf("lab node: %w", err)
	}
	nodeInformers := informers.NewSharedInformerFactory(n.client, 0)
	nodeInf := nodeInformers.Core().V1().Nodes()
	n.nodes = nodeInf.Lister()
	if _, err := nodeInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { wakeup(n.routeWake) },
		UpdateFunc: func(_, obj any) { wakeup(n.routeWake) },
		DeleteFunc: func(any) { wakeup(n.routeWake) },
	}); err != nil {
		return fmt.Errorf("lab node: %w", err)
	}
	podInformers := informers.NewSharedInformerFactoryWithOptions(n.client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", n.cfg.NodeName).String()
		}))
	podInf := podInformers.Core().V1().Pods()
	n.pods = podInf.Lister()

	g, gctx := errgroup.WithContext(ctx)
	stopInformers := make(chan struct{})
	ownInformers.Start(stopInformers)
	defer func() {
		close(stopInformers)
		ownInformers.Shutdown()
		nodeInformers.Shutdown()
		podInformers.Shutdown()
	}()

	g.Go(func() error { return n.heartbeat(gctx) })
	g.Go(func() error { return n.statusUpdates(gctx) })
	g.Go(func() error {
		if !n.waitNodeListAccess(gctx) {
			return nil
		}
		nodeInformers.Start(stopInformers)
		if !cache.WaitForCacheSync(gctx.Done(), nodeInf.Informer().HasSynced) {
			return nil
		}
		return n.reconcileRoutes(gctx)
	})
	g.Go(func() error { return n.serveAPI(gctx) })
	g.Go(func() error {
		var cidr string
		select {
		case <-gctx.Done():
			return nil
		case cidr = <-n.podCIDR:
		}
		a, err := newIPAM(cidr)
		if err != nil {
			return fmt.Errorf("node %s: %w", n.cfg.NodeName, err)
		}
		n.ipam = a
		n.log.Info("pod CIDR assigned", "cidr", cidr)
		close(n.netReady)
		wakeup(n.nodeWake)

		n.mu.Lock()
		n.podsCtx = gctx
		n.mu.Unlock()
		if _, err := podInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { n.onPod(obj) },
			UpdateFunc: func(_, obj any) { n.onPod(obj) },
			DeleteFunc: func(obj any) { n.onPodDelete(obj) },
		}); err != nil {
			return err
		}
		podInformers.Start(stopInformers)
		<-gctx.Done()
		return nil
	})
	err := g.Wait()

	// Stop every pod (their workers watch gctx), then take the routes away.
	n.mu.Lock()
	n.podsCtx = nil
	n.mu.Unlock()
	n.podsWG.Wait()
	if rerr := deleteOwnRoutes(); rerr != nil {
		err = errors.Join(err, rerr)
	}
	if err != nil {
		return fmt.Errorf("lab node %s: %w", n.cfg.NodeName, err)
	}
	n.log.Info("node stopped")
	return nil
}

func wakeup(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// onNode handles an event of our own Node: the pod CIDR.
func (n *node) onNode(obj any) {
	nd, ok := obj.(*corev1.Node)
	if !ok {
		return
	}
	if nd.Name == n.cfg.NodeName && nd.Spec.PodCIDR != "" {
		select {
		case n.podCIDR <- nd.Spec.PodCIDR:
		default: // already delivered
		}
		wakeup(n.routeWake)
	}
}

// onPod starts a worker for a new pod or wakes the pod's worker. It never
// blocks.
func (n *node) onPod(obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok || pod.Spec.NodeName != n.cfg.NodeName {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if w, ok := n.workers[pod.UID]; ok {
		w.poke()
		return
	}
	if n.podsCtx == nil || n.podsCtx.Err() != nil {
		return
	}
	terminal := pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
	if terminal {
		// Finished before this node process started: nothing runs, but a
		// deletion still needs the kubelet's final delete.
		if pod.DeletionTimestamp != nil {
			n.podsWG.Add(1)
			go func() { defer n.podsWG.Done(); n.deleteFinished(n.podsCtx, pod) }()
		}
		return
	}
	w := newPodWorker(n, pod)
	n.workers[pod.UID] = w
	n.podsWG.Add(1)
	ctx := n.podsCtx
	go func() {
		defer n.podsWG.Done()
		w.run(ctx)
		n.mu.Lock()
		delete(n.workers, w.uid)
		n.mu.Unlock()
	}()
}

func (n *node) onPodDelete(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if w, ok := n.workers[pod.UID]; ok {
		w.poke()
	}
}

// worker returns the worker of the pod namespace/name, or nil.
func (n *node) worker(namespace, name string) *podWorker {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, w := range n.workers {
		if w.namespace == namespace && w.name == name {
			return w
		}
	}
	return nil
}

// workerList returns the running workers.
func (n *node) workerList() []*podWorker {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]*podWorker, 0, len(n.workers))
	for _, w := range n.workers {
		out = append(out, w)
	}
	return out
}

// waitBackoff waits d or until ctx is done; it reports whether ctx is done.
func waitBackoff(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return true
	case <-t.C:
		return false
	}
}
