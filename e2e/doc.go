// Package e2e holds Braid's end-to-end tests: real binaries (braid broker,
// braid-operator, braid-agent, braid-lab) run as separate processes against
// real etcd, in network namespaces with real BPF and WireGuard.
//
// TestLab and TestDemo run on the lab (internal/lab): real Kubernetes
// control planes, lab nodes running pods as processes, an operator per
// cluster and an agent per node; manifests are applied with kubectl.
// TestFailover runs on a lab of three clusters × two nodes: failover from a
// node cut off the mesh and back, a node whose gossip alone is blocked,
// plain same-cluster traffic beside WireGuard between clusters, strict
// encryption, and agents placing themselves from their Node objects.
// BenchmarkFailover (`go test -tags e2e -run '^$' -bench Failover
// -benchtime 1x ./e2e/`) measures the failover time over 20 cycles.
//
// The tests carry the build tag e2e (`go test -tags e2e ./e2e/`); `make
// test` and `make e2e` run them. Binaries are built once per run in
// TestMain.
package e2e
