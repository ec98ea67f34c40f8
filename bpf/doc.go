// Package bpf is Braid's eBPF datapath: the C programs (braid.c), the Go
// types and objects bpf2go generates from them (committed, so a build needs
// no clang), a loader, and typed map wrappers.
//
// The package is a leaf: it knows addresses, ports, identities and tiers,
// never clusters or services; clustermesh/datapath translates the mesh
// model into the keys defined here.
//
// # Programs
//
//   - cgroup connect4/6, sendmsg4/6, recvmsg4/6, getpeername4/6: socket-level
//     load balancing. A connect or sendto to a service frontend is rewritten
//     to a backend; getpeername and recvfrom show the frontend again. An
//     ::ffff: address on an IPv6 socket is handled as IPv4 by every hook.
//     The hooks run for every process of the attached cgroup, whatever its
//     network namespace; DatapathConfig.NetnsCookie (a SO_NETNS_COOKIE
//     value, 0 = every namespace) restricts them to one namespace, e.g. the
//     host's when pods have their own cgroups elsewhere.
//   - tc_from_pod (ingress of a pod-facing interface): service DNAT with a
//     connection-tracking entry per flow, reverse NAT of replies from local
//     backends, and redirect to the tunnel device for ipcache entries flagged
//     IPCacheTunnel (DatapathConfig.TunnelIfindex, 0 disables it).
//   - tc_to_pod (egress of a pod-facing interface): reverse NAT of replies
//     from remote backends, then identity policy: the ipcache gives source
//     and destination identity; PolicyKey{src, dst, port, proto} is tried,
//     then {src, dst, 0, 0}; no rule means allow unless
//     DatapathConfig.DefaultDeny. Replies of flows a local pod initiated
//     bypass policy, and so does what the node's own stack sends (a packet
//     without an ingress device: the kubelet's probes, host-network pods).
//     Counters record each verdict by reason.
//
// # Connection tracking
//
// The ct_v2 map (CTMap) is an LRU hash: the kernel evicts the least
// recently used entries when it is full. Every entry records when a packet
// last used it (CTValue.LastSeen, bpf_ktime_get_ns: CLOCK_MONOTONIC
// nanoseconds, refreshed at most once a second); a packet of either
// direction keeps both entries of a service flow alive. The programs never
// expire entries themselves: the agent deletes idle ones
// (clustermesh/datapath's PruneConntrack).
//
// # Backend selection
//
// A service's slots (SlotKey{SvcId, 0..n-1}) are laid out in bands, most
// preferred first; ServiceValue.Count holds the number of slots per band.
// The programs take the first band holding a healthy backend and pick
// uniformly within it. Which tiers share a band (the service's affinity
// and topology preference) is the writer's decision (clustermesh/datapath
// computes it), so the programs know no policy. A backend whose
// BackendHealthy flag is clear is skipped (up to 8 probes per band), so a
// health flip takes effect before the slots are rewritten. A service with
// ServiceFallback set has no healthy backend and its slots hold every ready
// one: any of them may be picked, and each pick counts CounterFallback. A
// service without a usable backend refuses connect() (EPERM) and drops
// packets (CounterDropNoBackend).
//
// # Ownership and restarts
//
// Load returns *Objects; the caller owns it and must Close it. Maps are
// pinned by name under Config.PinDir and reopened, never flushed, by the
// next Load. Attach* pins its links under PinDir/links and, when a pinned
// link exists, replaces its program in place (BPF_LINK_UPDATE), so
// restarting or upgrading the agent drops no connection. Legacy clsact
// filters are replaced with the same handle and priority, also atomically.
// A pinned map whose layout or size differs from this build makes Load fail
// with ErrIncompatible; layout changes need a new map name (ct, config and
// services became ct_v2, config_v2 and services_v2; Load removes the old
// pins, which no program of this build uses, so flows tracked by tc before
// such an upgrade are tracked anew).
//
// AttachTC takes an interface index in the calling thread's network
// namespace. Map methods are safe for concurrent use; Objects methods that
// attach or detach are not meant to run concurrently with each other.
//
// Regenerate with `go generate ./bpf/` (see gen.go); TestGeneratedCurrent
// fails when the committed output is stale and clang is installed.
package bpf
