// Package controlplane runs the control planes of lab clusters as child
// processes: one etcd shared by every cluster (StartEtcd), and per cluster a
// kube-apiserver, a kube-controller-manager running the default controllers
// with node pod CIDR allocation, and a kube-scheduler (Start). The binaries
// come from internal/kubelab.BinDir.
//
// Each cluster has its own CA, which signs everything: the apiserver's
// serving certificate (for Config.Address), client certificates for the
// admin (system:masters), the controller manager and the scheduler, the
// apiserver's client certificate towards kubelets, and per node (AddNode) a
// kubeconfig as system:node:<name> and a kubelet serving certificate for the
// node's IP. The apiserver authorizes with Node,RBAC and admits with
// NodeRestriction, so a lab node has exactly a kubelet's rights, and reaches
// kubelets (exec, logs) by their InternalIP, verifying their certificates.
// Beyond a kubelet's rights, the group system:nodes may read every Node
// (CNIRole), because lab nodes also route pod CIDRs as a host-gw CNI does,
// and NetworkPolicies, which the braid-agents (with their node's
// credentials) enforce.
//
// This is not a testing package: the lab command uses it. Processes are
// killed by the kernel if the calling process dies (see internal/lab/proc).
// Start blocks until the control plane is ready; on error it stops what it
// started. A Cluster's methods are safe for concurrent use; Stop waits.
package controlplane
