package k8s

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"
	mcsinformers "sigs.k8s.io/mcs-api/pkg/client/informers/externalversions"
	mcslisters "sigs.k8s.io/mcs-api/pkg/client/listers/apis/v1beta1"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/reconcile"
)

// Defaults for Config's zero values.
const (
	// DefaultBatchDelay matches the agents' reconcile rate
	// (agent.DefaultMinReconcileInterval): publishing a key more often
	// would not change what agents apply, only their number of rounds.
	DefaultBatchDelay     = 10 * time.Millisecond
	DefaultResyncInterval = 5 * time.Minute
)

// Labels and names the Source puts on objects it owns.
const (
	// MirrorManagedBy is the endpointslice.kubernetes.io/managed-by value of
	// mirrored EndpointSlices; the EndpointSlice controller ignores them.
	MirrorManagedBy = "operator.braid.dev"
	// LabelManagedBy marks ServiceImports the Source owns.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	managedByValue = "braid-operator"
	eventComponent = "braid-operator"
)

// Record is a mesh record: clustermesh's *Node, *Identity, *IPEntry or
// *Service.
type Record interface {
	Key() string
}

// Publisher is what the Source needs from publish.Publisher. The calls only
// record intent and must not block.
type Publisher interface {
	Replace(kind clustermesh.Kind, records []Record) error
	Upsert(rec Record) error
	Delete(key string)
}

// RemoteCluster is one remote cluster's services as the Mesh sees them.
type RemoteCluster struct {
	// Synced says the cluster's state is complete.
	Synced bool
	// Services by "namespace/name". Shared; never modified.
	Services map[string]clustermesh.Service
}

// Mesh is what the Source needs from the rest of the mesh (a
// remote.Watcher, adapted by the composition root).
type Mesh interface {
	// Remote returns every remote cluster's services, and whether the view
	// is complete: every cluster that was in the mesh when the process
	// started has been seen synced or gone. Until it is, the Source creates
	// and updates but never deletes imports and mirrors.
	Remote() (clusters map[clustermesh.ClusterName]RemoteCluster, complete bool)
}

// Clients are the Kubernetes clients the Source uses.
type Clients struct {
	Kube kubernetes.Interface
	// MCS, if set, enables ServiceExports and ServiceImports (when the
	// cluster serves multicluster.x-k8s.io/v1beta1).
	MCS mcsclient.Interface
	// Dynamic, if set with Config.EnsureCRDs, creates the MCS CRDs.
	Dynamic dynamic.Interface
}

// Config configures a Source.
type Config struct {
	Cluster clustermesh.ClusterConfig
	// EnsureCRDs creates the ServiceExport and ServiceImport CRDs at start
	// when they are absent (needs Clients.Dynamic).
	EnsureCRDs bool
	// BatchDelay is the least time between two syncs of one object that
	// events ask for: an event after a quiet spell is synced at once, a
	// burst of events costs one sync per BatchDelay. Zero means
	// DefaultBatchDelay.
	BatchDelay time.Duration
	// ResyncInterval is how often everything is recomputed even without
	// events; zero means DefaultResyncInterval.
	ResyncInterval time.Duration
	// ClusterSetCIDRs are the ranges ClusterSetIPs are allocated from, at
	// most one per family: inside the cluster's granted service CIDRs and
	// outside the Kubernetes service range (a networking.k8s.io
	// ServiceCIDR named ClusterSetServiceCIDR makes them allocatable).
	// Without them ClusterSetIP imports get no IPs.
	ClusterSetCIDRs []netip.Prefix
}

// Status is a Source's state for the status page.
type Status struct {
	// Synced: the informers synced and a first full publish was handed over.
	Synced bool
	// MCS: ServiceExports and ServiceImports are handled.
	MCS        bool
	Nodes      int
	Identities int
	IPs        int
	Services   int
	// Problems are conditions an operator should look at.
	Problems []string
	// LastError is why the Source could not start yet (identities not
	// readable), empty once it could.
	LastError string
	// Loops are the two controllers' rounds: kube_to_mesh and
	// mesh_to_kube.
	Loops []reconcile.Status
}

// Source publishes a Kubernetes cluster into the mesh. See the package doc.
type Source struct {
	cfg     Config
	clients Clients
	pub     Publisher
	mesh    Mesh
	alloc   *allocator
	log     *slog.Logger
	metrics *metrics
	reg     prometheus.Registerer

	mu     sync.Mutex
	status Status
	mcsErr string
	toMesh *controller[meshItem] // cluster → mesh; set by Run
	toKube *controller[string]   // mesh → cluster, by "namespace/name"; set by Run

	// Set by Run before the controllers start; read-only afterwards.
	mcsOn      bool
	services   corelisters.ServiceLister
	slices     cache.Indexer
	pods       corelisters.PodLister
	nodes      corelisters.NodeLister
	namespaces corelisters.NamespaceLister
	exports    mcslisters.ServiceExportLister
	imports    mcslisters.ServiceImportLister
	recorder   record.EventRecorder

	// Written by toMesh's worker, read by toKube's.
	localMu sync.Mutex
	local   map[string]*clustermesh.Service // published services by ns/name
	// imported is mesh_to_kube's ClusterSetIP imports by ns/name, for
	// kube_to_mesh to publish as the records' Import.
	imported map[string]*imported
	warned   map[string]string // ns/name -> last warning

	// Owned by toMesh's worker.
	servicesPrimed bool            // a full service set was handed over
	primedKinds    map[string]bool // item kinds handed over once
	servicesReady  chan struct{}   // closed once servicesPrimed is set
}

// meshItem is what the cluster → mesh controller syncs: every node, every
// pod (identities and IP entries), every service, or one service.
type meshItem struct {
	kind string // one of the item* constants
	key  string // "namespace/name" for itemService
}

const (
	itemNodes    = "nodes"
	itemPods     = "pods"
	itemServices = "services"
	itemService  = "service"
)

// allKeys is the mesh → cluster controller's key for "every service".
const allKeys = ""

// New builds a Source. It starts nothing and does no I/O. mesh may be nil
// (no imports or mirrors).
func New(cfg Config, clients Clients, pub Publisher, ids IdentityStore, mesh Mesh, log *slog.Logger, reg prometheus.Registerer) (*Source, error) {
	if err := cfg.Cluster.Validate(); err != nil {
		return nil, fmt.Errorf("new kubernetes source: %w", err)
	}
	if clients.Kube == nil || pub == nil || ids == nil {
		return nil, errors.New("new kubernetes source: kube client, publisher and identity store are required")
	}
	if err := validateClusterSetCIDRs(&cfg.Cluster, cfg.ClusterSetCIDRs); err != nil {
		return nil, fmt.Errorf("new kubernetes source: %w", err)
	}
	if cfg.BatchDelay == 0 {
		cfg.BatchDelay = DefaultBatchDelay
	}
	if cfg.ResyncInterval == 0 {
		cfg.ResyncInterval = DefaultResyncInterval
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("new kubernetes source: %w", err)
	}
	s := &Source{
		cfg:           cfg,
		clients:       clients,
		pub:           pub,
		mesh:          mesh,
		log:           log,
		metrics:       m,
		reg:           reg,
		local:         make(map[string]*clustermesh.Service),
		warned:        make(map[string]string),
		imported:      make(map[string]*imported),
		servicesReady: make(chan struct{}),
	}
	s.primedKinds = map[string]bool{}
	s.alloc = newAllocator(&s.cfg.Cluster, ids, log)
	return s, nil
}

// MeshChanged tells the Source the Mesh's view changed. It never blocks.
// Before Run has started its controllers it does nothing: they start with
// every key.
func (s *Source) MeshChanged() {
	s.mu.Lock()
	c := s.toKube
	s.mu.Unlock()
	if c != nil {
		c.add(allKeys)
	}
}

// Status returns a copy of the Source's status.
func (s *Source) Status() Status {
	s.mu.Lock()
	st := s.status
	mcsErr := s.mcsErr
	toMesh, toKube := s.toMesh, s.toKube
	s.mu.Unlock()
	st.Problems = nil
	if mcsErr != "" {
		st.Problems = append(st.Problems, mcsErr)
	}
	if st.LastError != "" {
		st.Problems = append(st.Problems, "kubernetes: "+st.LastError)
	}
	if toMesh != nil {
		for _, p := range []string{toMesh.problem(), toKube.problem()} {
			if p != "" {
				st.Problems = append(st.Problems, p)
			}
		}
		st.Loops = []reconcile.Status{toMesh.tracker.Status(), toKube.tracker.Status()}
	}
	return st
}

// markService queues the service key for publishing (which then queues
// its imports, export status and mirrors).
func (s *Source) markService(key string) { s.toMesh.add(meshItem{kind: itemService, key: key}) }

// markMCS queues the imports, export status and mirrors of key.
func (s *Source) markMCS(key string) { s.toKube.add(key) }

func (s *Source) markMesh(kinds ...string) {
	for _, k := range kinds {
		s.toMesh.add(meshItem{kind: k})
	}
}

const indexByService = "service"

// sliceServiceKey returns "namespace/service" for an EndpointSlice.
func sliceServiceKey(es *discoveryv1.EndpointSlice) (string, bool) {
	name := es.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return "", false
	}
	return es.Namespace + "/" + name, true
}

// metaKey returns "namespace/name" for any object or tombstone.
func metaKey(obj any) (string, bool) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		return t.Key, true
	}
	m, err := metaAccessor(obj)
	if err != nil {
		return "", false
	}
	return m.GetNamespace() + "/" + m.GetName(), true
}

func metaAccessor(obj any) (metav1.Object, error) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	m, ok := obj.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("object of type %T has no metadata", obj)
	}
	return m, nil
}

func handler(f func(obj any)) cache.ResourceEventHandlerFuncs {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    f,
		UpdateFunc: func(_, obj any) { f(obj) },
		DeleteFunc: f,
	}
}

// trim drops what the Source never reads from cached objects, to keep the
// operator's memory proportional to what it publishes.
func trim(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	switch o := obj.(type) {
	case *corev1.Pod:
		// Containers keep only their named ports (policies name them).
		var containers []corev1.Container
		for _, c := range o.Spec.Containers {
			var ports []corev1.ContainerPort
			for _, p := range c.Ports {
				if p.Name != "" {
					ports = append(ports, corev1.ContainerPort{Name: p.Name, ContainerPort: p.ContainerPort, Protocol: p.Protocol})
				}
			}
			if len(ports) > 0 {
				containers = append(containers, corev1.Container{Name: c.Name, Ports: ports})
			}
		}
		o.Spec = corev1.PodSpec{NodeName: o.Spec.NodeName, HostNetwork: o.Spec.HostNetwork, ServiceAccountName: o.Spec.ServiceAccountName, Containers: containers}
		o.Status = corev1.PodStatus{Phase: o.Status.Phase, HostIP: o.Status.HostIP, PodIP: o.Status.PodIP, PodIPs: o.Status.PodIPs}
		o.Annotations = nil
	case *corev1.Node:
		o.Status.Images = nil
		o.Status.Conditions = nil
	}
	return obj, nil
}

// Run watches the cluster and publishes it until ctx is done. It returns
// an error only when it cannot start (identities cannot be recovered, CRDs
// cannot be ensured); later failures are retried with backoff and
// reported in Status.
//
// Run runs two controllers, each a client-go workqueue with one worker:
// kube_to_mesh publishes nodes, pods (identities, IP entries) and
// services; mesh_to_kube maintains ServiceImports, ServiceExport
// conditions and mirrored EndpointSlices, and starts once the first full
// set of local services was handed over, so it never mistakes a local
// export not yet computed for a withdrawn one.
func (s *Source) Run(ctx context.Context) error {
	if err := s.recoverIdentities(ctx); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return nil
	}
	s.mcsOn = s.setupMCS(ctx)
	toMesh, err := newController("kube_to_mesh", s.cfg.BatchDelay, s.syncToMesh, s.log, s.reg)
	if err != nil {
		return err
	}
	toKube, err := newController("mesh_to_kube", s.cfg.BatchDelay, s.syncToKube, s.log, s.reg)
	if err != nil {
		return err
	}
	defer toMesh.q.ShutDown()
	defer toKube.q.ShutDown()
	s.mu.Lock()
	s.toMesh, s.toKube = toMesh, toKube
	s.mu.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()

	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: s.clients.Kube.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	s.recorder = broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: eventComponent})

	kf := informers.NewSharedInformerFactoryWithOptions(s.clients.Kube, 0, informers.WithTransform(trim))
	svcInf := kf.Core().V1().Services()
	sliceInf := kf.Discovery().V1().EndpointSlices()
	podInf := kf.Core().V1().Pods()
	nodeInf := kf.Core().V1().Nodes()
	nsInf := kf.Core().V1().Namespaces()
	if err := sliceInf.Informer().AddIndexers(cache.Indexers{indexMirrors: mirrorIndex, indexImports: importIndex, indexByService: func(obj any) ([]string, error) {
		if es, ok := obj.(*discoveryv1.EndpointSlice); ok {
			if k, ok := sliceServiceKey(es); ok {
				return []string{k}, nil
			}
		}
		return nil, nil
	}}); err != nil {
		return fmt.Errorf("index endpoint slices: %w", err)
	}
	s.services, s.slices, s.pods = svcInf.Lister(), sliceInf.Informer().GetIndexer(), podInf.Lister()
	s.nodes, s.namespaces = nodeInf.Lister(), nsInf.Lister()

	var regs []func() error
	add := func(inf cache.SharedIndexInformer, h cache.ResourceEventHandler) error {
		r, err := inf.AddEventHandler(h)
		if err != nil {
			return fmt.Errorf("add event handler: %w", err)
		}
		regs = append(regs, func() error { return inf.RemoveEventHandler(r) })
		return nil
	}
	errs := []error{
		add(svcInf.Informer(), handler(func(obj any) {
			if k, ok := metaKey(obj); ok {
				s.markService(k)
			}
			if m, err := metaAccessor(obj); err == nil {
				if k, ok := importedKey(m); ok { // a derived Service
					s.markService(k)
					s.markMCS(k)
				}
			}
		})),
		add(sliceInf.Informer(), handler(func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			es, ok := obj.(*discoveryv1.EndpointSlice)
			if !ok {
				return
			}
			k, ok := sliceServiceKey(es)
			if !ok {
				return
			}
			if ik, ok := importedKey(es); ok && es.Labels[discoveryv1.LabelManagedBy] == ImportManagedBy {
				s.markMCS(ik)
			} else if es.Labels[discoveryv1.LabelManagedBy] == MirrorManagedBy {
				s.markMCS(k)
			} else {
				s.markService(k)
			}
		})),
		add(podInf.Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { s.markMesh(itemPods) },
			DeleteFunc: func(any) { s.markMesh(itemPods) },
			UpdateFunc: func(o, n any) {
				if podChanged(o, n) {
					s.markMesh(itemPods)
				}
			},
		}),
		add(nodeInf.Informer(), handler(func(any) { s.markMesh(itemNodes, itemPods) })),
		// A namespace's labels are part of its pods' identities: a relabel
		// re-derives them (and their IP entries) in one round.
		add(nsInf.Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { s.markMCS(allKeys); s.markMesh(itemPods) },
			DeleteFunc: func(any) { s.markMCS(allKeys) },
			UpdateFunc: func(o, n any) {
				s.markMCS(allKeys)
				on, ok1 := o.(*corev1.Namespace)
				nn, ok2 := n.(*corev1.Namespace)
				if !ok1 || !ok2 || !maps.Equal(on.Labels, nn.Labels) {
					s.markMesh(itemPods)
				}
			},
		}),
	}
	synced := []cache.InformerSynced{svcInf.Informer().HasSynced, sliceInf.Informer().HasSynced,
		podInf.Informer().HasSynced, nodeInf.Informer().HasSynced, nsInf.Informer().HasSynced}

	var mf mcsinformers.SharedInformerFactory
	if s.mcsOn {
		mf = mcsinformers.NewSharedInformerFactoryWithOptions(s.clients.MCS, 0, mcsinformers.WithTransform(trim))
		expInf := mf.Multicluster().V1beta1().ServiceExports()
		impInf := mf.Multicluster().V1beta1().ServiceImports()
		s.exports, s.imports = expInf.Lister(), impInf.Lister()
		errs = append(errs,
			add(expInf.Informer(), handler(func(obj any) {
				if k, ok := metaKey(obj); ok {
					s.markService(k)
				}
			})),
			add(impInf.Informer(), handler(func(obj any) {
				if k, ok := metaKey(obj); ok {
					s.markMCS(k)
				}
			})))
		synced = append(synced, expInf.Informer().HasSynced, impInf.Informer().HasSynced)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("watch kubernetes: %w", err)
	}
	defer func() {
		for _, r := range regs {
			_ = r()
		}
	}()
	kf.Start(ctx.Done())
	defer kf.Shutdown()
	if mf != nil {
		mf.Start(ctx.Done())
		defer mf.Shutdown()
	}
	s.log.Info("waiting for kubernetes caches", "mcs", s.mcsOn)
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return nil // ctx done
	}
	s.log.Info("kubernetes caches synced")
	s.adoptImports(ctx)
	s.queueAll()

	// Workers stop before the informers and the event broadcaster do.
	var workers sync.WaitGroup
	defer workers.Wait()
	workers.Add(3)
	go func() { defer workers.Done(); toMesh.run(ctx) }()
	go func() {
		defer workers.Done()
		select {
		case <-s.servicesReady:
			toKube.run(ctx)
		case <-ctx.Done():
		}
	}()
	go func() {
		defer workers.Done()
		t := time.NewTicker(s.cfg.ResyncInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				s.queueAll()
			}
		}
	}()
	<-ctx.Done()
	return nil
}

// queueAll queues every key of both controllers: at start and on resync.
func (s *Source) queueAll() {
	for _, k := range []string{itemNodes, itemPods, itemServices} {
		s.toMesh.addNow(meshItem{kind: k})
	}
	s.toKube.addNow(allKeys)
}

// recoverIdentities reads the cluster's published identities, retrying
// until it succeeds or ctx ends.
func (s *Source) recoverIdentities(ctx context.Context) error {
	bo := reconcile.NewBackoff(minItemBackoff, maxItemBackoff)
	for {
		err := s.alloc.recover(ctx)
		if err == nil {
			s.setError(nil)
			return nil
		}
		s.setError(err)
		d := bo.Next()
		s.log.Warn("cannot read published identities yet; retrying", "err", err, "backoff", d)
		if !reconcile.Wait(ctx, d) {
			return nil
		}
	}
}

func (s *Source) setError(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		s.status.LastError = ""
		return
	}
	s.status.LastError = err.Error()
}

// syncToMesh publishes one item; a service's imports, export status and
// mirrors are queued after it.
func (s *Source) syncToMesh(ctx context.Context, it meshItem) error {
	var (
		err  error
		keys []string
	)
	switch it.kind {
	case itemNodes:
		err = s.publishNodes()
	case itemPods:
		err = s.publishPods(ctx)
	case itemServices:
		keys, err = s.publishServices(true, nil)
	case itemService:
		keys, err = s.publishServices(false, []string{it.key})
	}
	for _, k := range keys {
		s.toKube.add(k)
	}
	if err != nil {
		return err
	}
	switch it.kind {
	case itemNodes, itemPods:
		s.primedKinds[it.kind] = true
	}
	if s.servicesPrimed && !s.primedKinds[itemServices] {
		s.primedKinds[itemServices] = true
		close(s.servicesReady)
	}
	synced := s.primedKinds[itemNodes] && s.primedKinds[itemPods] && s.primedKinds[itemServices]
	n := s.localCount()
	s.mu.Lock()
	s.status.Synced = s.status.Synced || synced
	s.status.MCS = s.mcsOn
	s.status.Services = n
	s.mu.Unlock()
	return nil
}

// syncToKube brings the imports, export status and mirrors of key in line
// with the mesh; allKeys queues every key that may have any.
func (s *Source) syncToKube(ctx context.Context, key string) error {
	var remote map[clustermesh.ClusterName]RemoteCluster
	complete := true
	if s.mesh != nil {
		remote, complete = s.mesh.Remote()
	}
	if key == allKeys {
		for k := range s.mcsKeys(remote) {
			s.toKube.addNow(k)
		}
		return nil
	}
	return s.reconcileKey(ctx, key, remote, complete)
}

func (s *Source) localCount() int {
	s.localMu.Lock()
	defer s.localMu.Unlock()
	return len(s.local)
}

// exportOf returns the local ServiceExport of key, or nil.
func (s *Source) exportOf(ns, name string) *mcsv1beta1.ServiceExport {
	if !s.mcsOn {
		return nil
	}
	e, err := s.exports.ServiceExports(ns).Get(name)
	if err != nil || e.DeletionTimestamp != nil {
		return nil
	}
	return e
}
