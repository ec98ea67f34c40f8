// Package lab runs Kubernetes clusters joined into a Braid mesh on one
// machine, for the demo, the end-to-end tests and the benchmarks.
//
// Up builds a lab of N clusters × M nodes:
//
//   - the underlay: a bridge in the host network namespace on a free /24 in
//     10.250.0.0/16, holding the host address; nothing routes it beyond the
//     machine (nodes have no default route, the host does not forward);
//   - one etcd for the control planes, and the broker (an embedded
//     clustermesh/broker) on the underlay's host address;
//   - per cluster a real control plane (internal/lab/controlplane) whose
//     apiserver listens on the host address, and a braid-operator process;
//   - per node a network namespace with a veth into the bridge, a cgroup
//     <cgroup2 root>/braid-lab-<run>/<node> (pods run below it and the agent's
//     socket load balancer is attached to it), a lab node process (`braid-lab
//     node`, internal/lab/node: the kubelet stand-in) and a braid-agent
//     process, both inside the namespace. The agent runs as its DaemonSet
//     pod would (`braid-lab sandbox`, ExecSandboxed): in the node's cgroup,
//     at the root of its own cgroup namespace, with cgroup2 mounted fresh
//     in its own mount namespace, and with no flag for what a node finds
//     out itself (zone, region, node IPs, pod devices, the cgroup).
//
// AddOutside adds, once the lab is up, hosts outside the mesh: a namespace
// on the underlay with an address no cluster knows, routed to and from
// every node's pods (the peers of ipBlock policies).
//
// Every name contains the run's random ID, so labs and tests run side by
// side. Before creating anything, Up writes a record of every name into the
// run's directory; Close (and a failed Up) stops the processes and removes
// everything, and Cleanup (which Up runs first) removes what a killed run
// left behind: processes, namespaces, interfaces, cgroups, pinned BPF objects,
// WireGuard sockets. Children are killed by the kernel if the lab process
// dies (internal/lab/proc).
//
// Operators, agents and lab nodes restart when they exit unasked, with
// back-off, as their pods would in a cluster (restartPolicy: Always); each
// restart is reported on Config.Progress. Failed reports a control-plane
// process's exit, or a lab process that keeps exiting.
//
// Up blocks until every node is Ready with a pod CIDR and a WireGuard key and
// every operator and agent has synced every other cluster. A Lab's methods are safe for
// concurrent use. Everything here needs root.
package lab
