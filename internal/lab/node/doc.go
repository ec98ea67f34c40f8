// Package node is the lab's kubelet stand-in: one process per lab node that
// registers a Node with its cluster's kube-apiserver and runs the Pods bound
// to it as plain processes on this machine.
//
// Run is meant to execute inside the node's network namespace (the lab starts
// the `node` command there). It
//
//   - registers the Node (InternalIP = Config.NodeIP, kubernetes.io/hostname
//     and topology.kubernetes.io/zone|region labels, capacity, a Ready
//     condition) and renews its Lease in kube-node-lease;
//   - waits for the controller manager to set Node.Spec.PodCIDR;
//   - acts as a host-gw CNI for the cluster: routes (protocol
//     RouteProtocol) to every other node's pod CIDR via that node's
//     InternalIP. Reading all Nodes takes more than a kubelet's rights
//     (the Node authorizer lets a node read only its own): grant get, list
//     and watch on nodes to group system:nodes. Without that the node runs
//     its pods, logs an error naming the fix and routes nothing;
//   - for each Pod bound to the node: creates a network namespace with a veth
//     pair (host side named from the pod UID, /32 route to the pod IP) and an
//     IP from the pod CIDR (a hostNetwork pod uses the node's namespace and
//     address), a UTS namespace whose hostname is the pod's, a cgroup
//     <CgroupParent>/pod-<uid> with one child cgroup per container, and runs
//     every container (init containers first, sidecars too) as a process in
//     those namespaces and cgroup, restarted per its restart policy; probes
//     (httpGet, tcpSocket, exec, grpc) drive readiness, liveness and startup;
//     ConfigMap, Secret, projected (incl. service account tokens), downward
//     API and emptyDir volumes are written under StateDir; the pod status is
//     reported as a kubelet reports it, and a deleted pod's processes are
//     stopped within its grace period before the object is removed;
//   - serves the kubelet API (containerLogs, exec over SPDY and WebSocket,
//     healthz, pods) over TLS on NodeIP:10250 for `kubectl logs` and
//     `kubectl exec`.
//
// A container's command runs when its program exists on the machine (a
// program on PATH, or a busybox applet when Debian's busybox is installed).
// Otherwise the container runs the built-in stand-in: the same executable
// started as `<exe> node standin ...`, which answers HTTP on the container's
// TCP ports (and UDP datagrams on its UDP ports) with the files of the
// container's ConfigMap volumes, or else a small JSON naming pod, node and
// cluster. So the binary that calls Run must dispatch `node standin` to the
// command returned by NewCommand (cmd/braid-lab does; tests do in TestMain).
//
// Containers share the machine's filesystem: there is no mount namespace, so
// a container's volume files live under Config.StateDir, not at their mount
// path. Only IPv4 pod networking is implemented.
//
// Pod processes die with the node process (they get SIGKILL when it dies).
// Everything else a killed run leaves behind — pod cgroups, veths in the
// current network namespace, host-gw routes, per-pod state — is removed by
// CleanupLeftovers, which Run also calls when it starts. When Run's context
// is cancelled it stops every pod and removes what it created, then returns.
//
// Run logs to slog.Default().
package node
