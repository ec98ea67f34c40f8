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
// Consumers report what they observe as JSON lines; the driver matches them
// with the churn it applied after the run (matchOps). Run owns every process
// and goroutine it starts and stops them before it returns.
package meshsim
