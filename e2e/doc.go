// Package e2e holds Braid's end-to-end tests: real binaries (braid broker,
// braid-operator, later braid-agent) run as separate processes against a
// real etcd, and later in network namespaces with real BPF and WireGuard.
//
// The tests carry the build tag e2e (`go test -tags e2e ./e2e/`); `make
// test` runs them. Binaries are built once per run in TestMain.
package e2e
