// Package diagnose is `braid diagnose`: it reads the mesh from the broker
// with a cluster's join bundle and every node's agent status, and reports
// each problem it finds with what, where and the fix.
//
// The checks are pure functions (Check*Of) over what Run gathered (Mesh,
// AgentView, Cert), so they are tested without a broker or agents. Run
// reports problems as findings, never as errors; the command exits 1 when
// a finding is an error.
package diagnose
