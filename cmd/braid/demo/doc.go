// Package demo is `braid demo`: a broker and two simulated clusters in one
// process, showing what each sees, a change crossing the mesh, a forged
// write refused by etcd and a dead cluster drained.
//
// Each simulated cluster is wired from publish, remote and status as
// braid-operator wires them for a state file, without the operator's
// composition root, so braid links no Kubernetes informers.
package demo
