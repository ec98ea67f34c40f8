// Package kubelab runs real Kubernetes control planes for tests: an etcd, and
// per lab cluster a kube-apiserver (plus, on request, a
// kube-controller-manager), all as child processes on loopback ports.
//
// The binaries come from tools/kube/build.sh, which caches them under
// ${BRAID_CACHE:-/var/cache/braid}/kube-<key>/bin; BinDir computes the same
// key from the files in tools/kube, so a test never runs binaries built from a
// different tools module. $BRAID_KUBE_BIN overrides the lookup. Tests call
// Require (or StartEtcd, which calls it): when the binaries are absent the test
// is skipped with a one-line reason, unless $BRAID_CI_REQUIRED (or the older
// $BRAID_KUBE_REQUIRED) is set (CI sets it), in which case it fails.
//
// Lifetimes belong to the testing.TB passed in: every process is stopped
// (SIGTERM, then SIGKILL after a grace period) and its files removed by the
// test's cleanup, and processes are also killed if the test binary dies.
// Start clusters after their Etcd, from the same test or a subtest, so that
// cleanups stop the apiservers first. When a test fails, the last lines of each
// process's log are written to the test log.
//
// Several clusters may share one Etcd: each keeps its objects under its own
// prefix, /braidlab/<name>, and names must be unique per Etcd. Each cluster has
// its own CA, serving certificate, service-account signing key and admin token;
// the apiserver authorizes with RBAC and the admin token is in system:masters,
// so tests can check RBAC rules by impersonating service accounts.
//
// Pods need their service account to exist (the ServiceAccount admission
// plugin is on, as in real clusters): the controller manager's serviceaccount
// controller creates "default" in every namespace; without a controller
// manager, create it yourself. EndpointSlices are generated from Pods only with
// a controller manager; create the Node a Pod names first, and patch the Pod's
// status Ready with an IP, since no kubelet runs.
//
// StartEtcd and StartCluster block until the processes are ready (deadline
// StartTimeout) and may be called from parallel tests. Cluster methods are safe
// for concurrent use.
package kubelab
