package lab

import (
	"path/filepath"

	"github.com/braidmesh/braid/internal/lab/node"
)

// nodeStateDir is where n's lab node keeps its pods' state.
func nodeStateDir(n *NodePlan) string { return filepath.Join(n.Dir, "state") }

// cleanupNode removes the pods a killed lab node left behind.
func cleanupNode(stateDir string) error { return node.CleanupLeftovers(stateDir) }

func (n *Node) nodeArgs() (string, []string) {
	args := []string{
		"node",
		"--kubeconfig", n.files.Kubeconfig,
		"--node-name", n.Name,
		"--cluster", string(n.Cluster.Name),
		"--zone", n.Zone,
		"--region", Region,
		"--node-ip", n.IP.String(),
		"--cgroup-parent", n.Cgroup,
		"--state-dir", nodeStateDir(n.plan),
		"--serving-cert", n.files.ServingCert,
		"--serving-key", n.files.ServingKey,
		"--client-ca", n.files.ClientCA,
	}
	if n.Cluster.DNS.IsValid() {
		args = append(args, "--dns", n.Cluster.DNS.String())
	}
	return filepath.Join(n.Cluster.lab.cfg.Bin, "braid-lab"), args
}
