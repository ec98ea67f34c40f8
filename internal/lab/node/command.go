package node

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// NewCommand returns the `node` command: it runs a lab node (Run) with the
// Config given by its flags until SIGINT or SIGTERM. Its hidden `standin`
// subcommand is the stand-in program Run starts for containers whose own
// program is not on the machine.
func NewCommand() *cobra.Command {
	var cfg Config
	var nodeIP, capacity string
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Run a lab node: a kubelet stand-in that runs pods as processes",
		Long: `Run a lab node inside the node's network namespace: register the Node with
the cluster's kube-apiserver, run the pods bound to it as processes in their own
network namespaces and cgroups, and serve the kubelet API for kubectl exec and
kubectl logs on NODE-IP:10250.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.NodeIP = net.ParseIP(nodeIP)
			if cfg.NodeIP == nil {
				return fmt.Errorf("--node-ip %q is not an IP address", nodeIP)
			}
			c, err := ParseCapacity(capacity)
			if err != nil {
				return fmt.Errorf("--capacity: %w", err)
			}
			cfg.Capacity = c
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return Run(ctx, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig of this node (required)")
	f.StringVar(&cfg.NodeName, "node-name", "", "name of the Node object (required)")
	f.StringVar(&cfg.Cluster, "cluster", "", "name of the lab cluster (reported by the stand-in)")
	f.StringVar(&cfg.Zone, "zone", "", "topology.kubernetes.io/zone label")
	f.StringVar(&cfg.Region, "region", "", "topology.kubernetes.io/region label")
	f.StringVar(&nodeIP, "node-ip", "", "underlay IPv4 address of the node in its network namespace (required)")
	f.StringVar(&cfg.CgroupParent, "cgroup-parent", "", "absolute cgroup v2 directory for pod cgroups (required)")
	f.StringVar(&cfg.StateDir, "state-dir", "", "absolute directory for logs and pod state (required)")
	f.StringVar(&cfg.ServingCert, "serving-cert", "", "kubelet API TLS certificate file (required)")
	f.StringVar(&cfg.ServingKey, "serving-key", "", "kubelet API TLS key file (required)")
	f.StringVar(&cfg.ClientCA, "client-ca", "", "CA file kubelet API clients must present certificates of (empty: no client authentication)")
	f.TextVar(&cfg.DNS, "dns", netip.Addr{}, "the cluster's DNS server, written into pods' resolv.conf (empty: pods use the machine's)")
	f.StringVar(&capacity, "capacity", "", "capacity to report, e.g. cpu=2,memory=4Gi,pods=50 (default: the machine's)")
	cmd.AddCommand(newStandinCommand(), newMountnsCommand())
	return cmd
}

func newStandinCommand() *cobra.Command {
	s := &standin{}
	var mounts []string
	cmd := &cobra.Command{
		Use:           "standin",
		Short:         "Serve HTTP on a container's ports in place of a program the machine lacks",
		Hidden:        true,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, m := range mounts {
				sm, err := parseMount(m)
				if err != nil {
					return err
				}
				s.Mounts = append(s.Mounts, sm)
			}
			s.log = slog.New(slog.NewTextHandler(os.Stdout, nil))
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return s.run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&s.Pod, "pod", "", "pod name")
	f.StringVar(&s.Namespace, "namespace", "", "pod namespace")
	f.StringVar(&s.Container, "container", "", "container name")
	f.StringVar(&s.Node, "node", "", "node name")
	f.StringVar(&s.Cluster, "cluster", "", "cluster name")
	f.StringVar(&s.PodIP, "pod-ip", "", "pod IP")
	f.IntSliceVar(&s.TCP, "tcp", nil, "TCP port to serve HTTP on (repeatable)")
	f.IntSliceVar(&s.UDP, "udp", nil, "UDP port to answer on (repeatable)")
	f.StringArrayVar(&mounts, "mount", nil, "MOUNTPATH=DIR of a ConfigMap volume to serve (repeatable)")
	return cmd
}
