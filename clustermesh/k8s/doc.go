// Package k8s turns a Kubernetes cluster into mesh records and brings the
// rest of the mesh back into the cluster.
//
// A Source watches Services, EndpointSlices, Nodes, Pods, Namespaces and,
// when the multicluster.x-k8s.io CRDs are served, ServiceExports and
// ServiceImports, with client-go shared informers. It publishes, through a
// Publisher:
//
//   - nodes: internal IPs, pod CIDRs, topology zone and region;
//   - identities: one per distinct pod label set (minus labels that carry no
//     identity, such as pod-template-hash, plus the pod's namespace), with a
//     numeric ID allocated by compare-and-swap (IdentityStore.CreateIfAbsent)
//     in the cluster's range and freed when no pod uses it. IDs the cluster
//     already published are recovered at start, so they survive restarts;
//   - IP entries for every pod IP (host-network and finished pods excepted);
//   - global services with their EndpointSlice backends.
//
// A Service is global when annotated braid.dev/global: "true" (Cilium's
// service.cilium.io/* and io.cilium/* spellings are accepted) or exported
// with a ServiceExport. An invalid annotation value produces a Warning
// Event on the Service and the Service is treated as not global.
//
// From the rest of the mesh (a Mesh) it maintains, in the cluster: a
// multicluster.x-k8s.io/v1beta1 ServiceImport per exported service, in
// every namespace that exists locally, aggregated across exporting clusters
// with KEP-1645 conflict resolution (the oldest export wins: type, session
// affinity and its config, internal traffic policy, traffic distribution,
// exportedLabels and exportedAnnotations; ports are the union, a port name
// defined differently keeps the oldest definition); Valid, Ready and
// Conflict conditions on local ServiceExports (Conflict names every
// conflicting cluster, on each of them); and, for headless global services,
// EndpointSlices mirroring each remote cluster's backends, labelled
// LabelSourceCluster.
//
// Each ServiceImport is backed by a derived Service (named by
// derivedName, annotated from the import with AnnotationDerivedService):
// headless for a Headless import, else holding one ClusterSetIP per family
// allocated from Config.ClusterSetCIDRs, which the Source makes allocatable
// with a networking.k8s.io ServiceCIDR. EndpointSlices managed by
// ImportManagedBy hold every exporting cluster's backends for the derived
// Service, labelled multicluster.kubernetes.io/service-name and
// multicluster.kubernetes.io/source-cluster, so CoreDNS's kubernetes plugin
// (multicluster option) answers <svc>.<ns>.svc.clusterset.local. The
// cluster's own record of the service carries the import (Service.Import),
// so its agents serve the ClusterSetIPs with the mesh's backends. The Source deletes only objects it labelled as its own, and
// deletes imports and mirrors only once the Mesh reports a complete view,
// so a restart removes nothing that is still wanted.
//
// The Source is two controllers, each a client-go workqueue with one
// worker: kube_to_mesh (nodes, pods, services → Publisher) and
// mesh_to_kube (Mesh → ServiceImports, ServiceExport conditions, mirrored
// EndpointSlices, one key per "namespace/name"). Reconciliation is
// level-triggered: informer handlers and MeshChanged only queue keys,
// and a worker recomputes a key from the caches (Replace for the first
// full set and for small kinds, Upsert/Delete per service afterwards). An
// event for a key synced less than BatchDelay ago waits until then, so a
// burst of events costs one sync per BatchDelay while a lone event is
// synced at once. A failed key is requeued with its own backoff (exponential with jitter,
// package reconcile); every key is queued again every ResyncInterval.
// Nothing is published until every informer has synced, and mesh_to_kube
// starts once the first full service set was handed over. Both report
// their rounds as reconcile loops (Status.Loops, braid_reconcile_* on
// /metrics) and their failing keys in Status.Problems.
//
// Run blocks until its context is done and waits for every goroutine it
// started. MeshChanged and Status are safe for concurrent use and never
// block.
package k8s
