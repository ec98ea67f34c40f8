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
// ServiceImport per exported service, in every namespace that exists
// locally, aggregated across exporting clusters with KEP-1645 conflict
// resolution (the oldest export wins); Valid, Ready and Conflict conditions
// on local ServiceExports; and, for headless global services, EndpointSlices
// mirroring each remote cluster's backends, labelled with their source
// cluster. The Source deletes only objects it labelled as its own, and
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
