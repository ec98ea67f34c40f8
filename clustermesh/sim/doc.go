// Package sim is a cluster's local state without Kubernetes: State (what a
// simulated cluster's state file holds), its validation into publishable
// records with the decoders remote clusters use, and Generate, a plausible
// state for the demo, tests and benchmarks.
//
// It imports only clustermesh, so the braid CLI's demo and benchmarks can
// simulate clusters without linking the operator's composition root. Every
// function is safe for concurrent use; a State is a plain value.
package sim
