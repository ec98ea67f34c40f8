// Package operator is the composition root of braid-operator: it wires one
// cluster's state source to a publish.Publisher, a remote.Watcher for the
// rest of the mesh, and the status page.
//
// The local state comes from a Source. StateFile is the simulated cluster
// used by the demo and tests: a JSON document of nodes, identities, IP
// entries and services, re-read when it changes. Every record is validated
// with the same decoders remote clusters use, so a bad file is refused with
// the record's key and the reason, and the last good state stays published.
//
// With Config.Relay, the operator also runs the cluster's relay (package
// relay) over its broker connection, with a remote.Watcher of its own, and
// hands the relay's agents' bundle to Config.SaveRelayCredentials.
//
// Run blocks until its context is done or publishing is refused (a
// registration conflict or missing permissions), and waits for everything
// it started.
package operator
