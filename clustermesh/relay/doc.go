// Package relay mirrors the validated mesh from the shared etcd (the
// broker) into a cluster-local etcd that the cluster's agents read instead
// of the broker, so that the broker serves one set of watches per cluster
// rather than one per node.
//
// A Relay runs an embedded etcd (go.etcd.io/etcd/server/v3/embed) on
// Config.DataDir, serving TLS on Config.Listen with a CA it creates on first
// start, and etcd authentication: the relay writes as root, agents read as
// AgentUser, whose role may read clustermesh.Root and write nothing. On
// start it saves the agents' join bundle (join.Credentials: the advertised
// endpoints, the CA, the agent user and password) as AgentsFile in the data
// directory; an agent given that bundle (braid-agent --relay) reads the
// mirror exactly as it would read the broker.
//
// What is mirrored comes from Config.Upstream, a *remote.Watcher over the
// cluster's own broker connection: its Entries stream carries only what the
// Watcher accepted, checked against the broker's grants and each cluster's
// config (remote's decoders), so nothing unvalidated reaches the mirror.
// The mirror keeps the broker's key schema: cluster configs and grants (of
// the clusters the Watcher accepted), each cluster's entries with their
// values as published, and its per-kind sync markers, each written only
// after that kind's entries were (a consumer that sees a marker lists a
// complete kind).
//
// Every key of a cluster is bound to one relay-local lease of that cluster.
// When the cluster leaves the mesh upstream (its config or grant goes, or
// its ID or CIDRs change), the relay revokes the lease and all its keys
// vanish at once, as they would from the broker when the cluster's own
// lease ends. The leases live in the relay's etcd, which stops with the
// relay, so they do not expire during a relay outage; the relay renews
// them every third of Config.LeaseTTL while it runs.
//
// Losing the broker does not flush the mirror: the Watcher keeps its state,
// re-lists after a lost watch and reports only what really went, which the
// relay applies. A relay restart keeps the data directory: the mirror still
// serves what it held, the fresh Watcher lists everything again, the relay
// rewrites only what changed and, once a kind's marker arrives (its list is
// complete), deletes that kind's keys the broker no longer has (all of a
// kind whose marker is gone once the cluster's markers are listed); once the
// cluster configs and grants are listed, clusters no longer in the mesh are
// removed. Agents resume their watches on the same etcd and see only the
// difference. A relay outage looks to its agents like a broker outage:
// their watches fail and retry, nothing is deleted.
//
// Writes are batched into transactions (at most 128 operations) and a value
// is written only when it differs from what the mirror holds.
//
// New starts nothing. Run blocks until its context is done (it returns
// nil) or the mirror fails, and stops etcd and waits for everything it
// started before returning; it may be called once. Ready, AgentCredentials,
// MetricsURL and Status are safe for concurrent use.
package relay
