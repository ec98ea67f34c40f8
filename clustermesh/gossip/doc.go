// Package gossip tells which nodes of the mesh are alive, and nothing else.
//
// Every agent runs one Pool: a hashicorp/memberlist member bound to its node
// IP, encrypted with the mesh gossip key (AES-256, generated once by the
// broker and handed out with each cluster's credentials). Members come from
// the mesh state: the agent passes every published node to SetMembers, and
// the Pool joins a few of those it does not yet see alive (when the members
// change and every RejoinInterval, not on memberlist's own events), so no
// seeds are configured. Health reports, per member, Alive, Suspect, Dead or Unknown
// and when it was last seen alive; Unreachable is what the datapath uses to
// take a node's backends out of the healthy set.
//
// Gossip never deletes mesh state: a node that stops answering is only
// marked unreachable (its backends leave the healthy set, its ipcache
// entries, routes and peers stay), so a node whose gossip port alone is
// blocked keeps everything the kvstore says about it and its cluster; it
// returns to the healthy set as soon as it answers again.
//
// # Tuning
//
// Detection time is about one probe round plus the suspicion timeout. The
// defaults (ProbeInterval 200 ms, ProbeTimeout 100 ms, SuspicionMult 2,
// GossipInterval 100 ms) and counting Suspect as unreachable make a
// silent node unreachable everywhere in about 0.5–1.5 s, within the 2 s
// target, at the price of draining a node after a single failed probe
// round (direct and indirect): a node that drops packets for 0.5 s loses
// its share of new connections until it refutes the suspicion, typically
// within one gossip interval after it hears of it. memberlist's LAN
// defaults (1 s, 500 ms, 4) would take 5 s or more. The bandwidth each node
// spends is measured by BenchmarkBandwidth (docs/benchmarks.md): about
// 4 KB/s per node at 1,000 members, nearly all of it probes, acks and
// piggybacked gossip (a push-pull of the compressed member list, 17 KB
// both ways, every 180 s at that size).
//
// # Keys
//
// SetKeys replaces the keyring without restarting: install the new key on
// every node as a secondary key, then make it primary everywhere, then
// remove the old one. At every step any two nodes share the key one of
// them encrypts with, so no partition occurs (TestKeyRotationNoPartition).
//
// # Concurrency
//
// New starts nothing; Run owns the memberlist and returns when its context
// ends, without leaving the pool (a restarting agent should not look
// departed). SetMembers, SetKeys, Health, Unreachable and Changes are safe
// for concurrent use and never block on the network.
package gossip
