// Package clustermesh is Braid's mesh model: the records each cluster
// publishes (cluster config, nodes, identities, IP entries, services), the
// versioned key schema they are stored under, and strict decoders.
//
// Keys have the form braid/v1/<kind>/<cluster>/<name>. A cluster owns every
// key under its own <cluster> segment and nothing else. Values are JSON.
//
// Every Decode function validates against the owning cluster's config: an
// entry whose key cluster, identity range or content disagrees with the
// cluster that owns the prefix is rejected with a *ValidationError and must
// never be applied. Decoders do not panic on any input (they are fuzzed).
//
// The package is a leaf: it does no I/O and imports no other Braid package.
// All types are plain values, safe to share once built.
package clustermesh
