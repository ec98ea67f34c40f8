// Package datapath turns the mesh model into Braid's eBPF maps.
//
// A Reconciler owns the ipcache, service, backend-slot, backend and policy
// maps of one node (see package bpf) and the datapath config. Reconcile
// takes a complete Desired state (a level, not an edge), dumps each map,
// diffs, and applies only the difference with batch updates and deletes:
// backends, then slots, then frontends are written before anything is
// removed, so a frontend never points at a missing backend. Whatever the
// maps hold that Desired lacks is pruned, so a departed cluster's entries
// disappear on the next reconcile. A second Reconcile with the same input
// writes nothing (Writes counts every entry written).
//
// Policy (Desired.Policy, Isolated, Prefixes) becomes the policy trie:
// an isolation entry per isolated identity and direction, allow entries
// whose port ranges are split into aligned blocks, and address-block
// identities in the ipcache below pods' entries. New policy entries are
// written before the ipcache moves an address to a new identity and stale
// ones removed after, so a relabelled pod keeps its flows;
// Desired.KeepPolicy leaves the policy part alone until it is known.
// Status.PolicyRevision names the Desired.PolicyRevision the maps last
// took, so a caller can wait for a policy change to be enforced. Policy
// never applies to the pod's own node: the programs let its host stack
// (the kubelet's probes, host-network pods) reach its pods, as Kubernetes
// and Cilium do.
//
// Backends are tiered against the node's Topology (same node, same zone,
// same cluster, another cluster in the same region, any other cluster).
// Only usable ones (ready, on a node not unreachable by gossip) get slots,
// laid out in bands (see tierBands): the affinity splits the tiers into a
// preferred and a fallback group with Cilium's semantics, the service's
// topology preference (zone or region) splits each group further, and the
// programs use the first band with a healthy backend, evenly within it.
// When no backend is usable, every ready one gets a slot and the service is
// flagged fallback (counted per pick, and in Status.Fallback) rather than
// refusing connections. Tunnel steering in the ipcache is only for other
// clusters' nodes: same-cluster nodes are reached over the underlay.
// Backend and service IDs are
// recovered from the maps themselves, so a restarted agent reuses them and
// rewrites nothing.
//
// Reconcile builds the desired maps with few allocations and writes
// ipcache upserts sorted by address: the LPM trie takes sorted inserts
// markedly faster (see docs/benchmarks.md).
//
// PruneConntrack deletes connection-tracking entries idle for longer than
// Config.CTTimeoutTCP or Config.CTTimeout; Run calls it every
// ResyncInterval. The Reconciler never writes conntrack entries.
//
// Concurrency: Reconcile calls are serialised; PruneConntrack may run
// alongside. Update and SetTunnelIfindex never block; Run (the caller
// decides to go it) is a reconcile.Loop named "datapath": it reconciles on
// each Update and every ResyncInterval, retrying failures with backoff
// until its context ends, and exports the loop's metrics.
// Status, LoopStatus and Health return snapshots and never touch the
// kernel. Map metrics are labelled by map name only.
package datapath
