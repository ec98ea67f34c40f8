// Package agent is the composition root of braid-agent: it mirrors every
// cluster's published state (its own included) with a remote.Watcher,
// turns the latest snapshot into the datapath's desired state and hands it
// to the BPF map reconciler, and serves the status page.
//
// The desired state is a pure function of a snapshot and the node's
// topology (DesiredState), so it is tested without a kernel. The Watcher
// only wakes the agent's "mesh" reconcile.Loop (Watcher.Notify); it always
// recomputes from a whole snapshot: at once after a quiet spell, then at
// most once per MinReconcileInterval while a burst lasts. The datapath, the
// tunnel's peers (DesiredPeers) and the node's key publication are loops
// of their own, so each retries its failures with backoff, without waiting
// for the next change, and reports in Snapshot's Loops and on /metrics
// (braid_reconcile_*{loop=...}).
//
// Key rotation is the tunnel's two-phase handover (package tunnel, "Keys")
// carried by the mesh: the key loop publishes the device's whole key state
// (Config.PublishKey: current key, next key, the peers' next keys it has
// installed), which reaches other clusters' agents in the node record
// (Node.NextWireGuardKey, Node.PreparedWireGuardKeys); DesiredPeers hands
// them to the device, whose scheduled rotation switches once every peer
// has acknowledged the next key.
//
// With Config.Policies, the agent enforces its cluster's NetworkPolicies
// for its node's pods: the mesh loop compiles them (clustermesh/policy,
// ApplyPolicy) against every cluster's identities into the datapath's
// policy trie and address-block ipcache entries, so a policy edit, a new
// identity or another cluster's change takes the same path. Until the
// policies and the cluster's own identities are known, the maps keep what
// they enforce. A "policy_drops" loop reads the drop counters every
// DropsInterval for Snapshot's Policy section and braid_policy_drops_total.
//
// Run blocks until its context is done and waits for everything it
// started. BPF objects are pinned: stopping (or killing) the agent leaves
// the datapath serving and enforcing, and the next start takes the maps
// over without flushing them. A restarted agent (the pinned ipcache holds
// entries) leaves them untouched until it knows the whole mesh again: the
// cluster configs listed, every cluster synced, the NetworkPolicies
// listed, or Config.RestoreTimeout passed (the wait is shown among the
// status page's problems). Only then does it reconcile, keeping the
// address-block identities it found, so an unchanged mesh costs no write
// to the policy trie or the ipcache, and no verdict changes on restart.
package agent
