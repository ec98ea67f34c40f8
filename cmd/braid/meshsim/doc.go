// Package meshsim is `braid sim`: a load generator against a real broker.
//
// It registers clusters with the broker (one grant and etcd user each),
// publishes each cluster's state (clustermesh/sim.Generate) through the
// operator's own publish.Publisher under the cluster's lease and
// credentials, applies churn at a given rate (endpoint flaps, scale ups and
// downs, clusters joining and leaving), and runs consumers — remote.Watchers
// with their cluster's credentials — in separate processes (`braid sim
// consume`), so that the broker's, the publishers' and the consumers' CPU
// and memory are each their own. It reports the broker's CPU, memory,
// database size, watch streams and events/s (etcd's metrics), the
// consumers' memory, and the propagation of each churn change: the time
// from the publisher's Upsert (or a join or leave starting) to the moment a
// consumer's Watcher applied it, that is, its Snapshot holds it, beside a
// raw etcd put → watch measured the same way in the same run.
//
// With Config.Via ViaRelay (--consumers-via relay), each consumer cluster
// also runs a relay (clustermesh/relay, as the operator does with
// --relay-listen: a remote.Watcher over the cluster's own broker
// connection mirrored into an embedded etcd) in a process of its own
// (`braid sim relay`), so that its CPU and memory are measured apart from
// the consumers' and the publishers'; that cluster's consumers then read
// the relay with its agents' bundle (relay.AgentsFile), as braid-agent
// --relay does, and never the broker. Propagation is then the time from
// the publisher's Upsert to the consumer's Snapshot through the relay.
// The raw baseline is watched on the relay's broker connection (the
// agents' user may read only the mesh), as it is on the first consumer's
// connection when direct: each consumer cluster holds one watch of it on
// the broker in either mode.
//
// Consumers and relays report what they observe as JSON lines; the driver matches them
// with the churn it applied after the run (matchOps). A report ends with a
// "summary:" line of key=value pairs that sweep.sh tabulates. Run owns every process
// and goroutine it starts and stops them before it returns.
package meshsim
