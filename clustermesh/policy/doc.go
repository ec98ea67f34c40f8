// Package policy compiles Kubernetes NetworkPolicies (networking.k8s.io/v1)
// into identity rules for the datapath.
//
// Compile is a pure function of one cluster's NetworkPolicies and the
// mesh's identities (every cluster's, with their labels and named ports):
// it returns which local identities are isolated in which direction, the
// rules that allow traffic between a local identity and a peer identity
// (or any peer) on a protocol and port range, and identities for the
// address blocks that ipBlock peers name. The datapath looks up both
// identities of a packet in its ipcache, so a rule follows a pod to any
// node of its cluster and admits a remote pod wherever it runs.
//
// Semantics are those of NetworkPolicy, with the mesh's additions:
//
//   - A policy's podSelector selects pods of its own namespace in its own
//     cluster only; policies never select another cluster's pods.
//   - A peer's podSelector and namespaceSelector match pods of the local
//     cluster only, unless either names the cluster, as braid.dev/cluster
//     or Cilium's io.cilium.k8s.policy.cluster: the selector then matches
//     identities of every cluster, the cluster key being evaluated against
//     the identity's cluster. A podSelector without a namespaceSelector
//     keeps to the policy's namespace (by name) in every cluster.
//   - A namespaceSelector matches the namespace's labels as the identity
//     carries them (clustermesh.NamespaceLabelPrefix), plus
//     kubernetes.io/metadata.name.
//   - ipBlock peers become address-block identities: every prefix and
//     except of every policy gets one; an address resolves to its longest
//     prefix, and a block allows the identities of the prefixes inside it
//     and outside its excepts. Pods' own entries win over blocks, so an
//     ipBlock never matches a pod the mesh knows.
//   - Named ports resolve against the pod that owns the port: the selected
//     pod for ingress, the peer for egress; a peer without the name (or an
//     ipBlock) gets no rule for it. Pods of one identity should agree on
//     their named ports: a name resolves to every number any of them uses.
//   - An ingress or egress rule without peers allows every peer (including
//     addresses outside the mesh); without ports, every protocol and port.
//
// Compile never fails: a policy part it cannot use (an invalid selector)
// is skipped and reported in Result.Problems, and allows nothing, so the
// pods it selects stay isolated.
package policy
