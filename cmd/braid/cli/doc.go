// Package cli holds the braid commands that only talk to a status API or
// the kvstore: status (and, later, join and diagnose). It must not link the
// datapath (cilium/ebpf) or Kubernetes clients; a test checks.
package cli
