// Command braid-agent programs one node's datapath (BPF maps, WireGuard
// peers) from the state every cluster publishes in the Braid mesh.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	"k8s.io/client-go/kubernetes"

	"github.com/braidmesh/braid/bpf"
	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/agent"
	"github.com/braidmesh/braid/clustermesh/gossip"
	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/clustermesh/k8s"
	"github.com/braidmesh/braid/internal/cgroupv2"
	"github.com/braidmesh/braid/tunnel"
)

// gcPercent is the agent's GOGC unless the environment sets one. The agent
// runs on every node and its heap is mostly the mesh's mirrored state, which
// only grows at start: collecting at 50 % growth instead of Go's 100 % keeps
// the peak RSS of a cold sync of 250 clusters under 300 MB for a few percent
// of CPU (docs/benchmarks.md).
const gcPercent = 50

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := command().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "braid-agent:", err)
		os.Exit(1)
	}
}

func command() *cobra.Command {
	var (
		joinFile   string
		nodeIPs    []string
		cfg        agent.Config
		pinDir     string
		wireguard  bool
		wgName     string
		wgPort     int
		wgMTU      int
		wgNetns    string
		stateDir   string
		strict     bool
		strictCIDR []string
		rotate     time.Duration
		logLevel   string
		kubeconfig string
		inCluster  bool
		gossipOn   bool
		relayFile  string
	)
	cmd := &cobra.Command{
		Use:           "braid-agent",
		Short:         "Program this node's datapath from the Braid mesh",
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level %q: %w", logLevel, err)
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			if wgPort < 1 || wgPort > 65535 {
				return fmt.Errorf("--wireguard-port %d: must be in 1..65535", wgPort)
			}
			if wgMTU < 1280 || wgMTU > 65535 {
				return fmt.Errorf("--underlay-mtu %d: must be in 1280..65535", wgMTU)
			}
			if rotate < 0 {
				return fmt.Errorf("--key-rotation %v: must be 0 (off) or positive", rotate)
			}
			if rotate > 0 && rotate < time.Minute {
				return fmt.Errorf("--key-rotation %v: rotating more often than every minute breaks handshakes in flight", rotate)
			}
			if _, err := clustermesh.ParsePrefixes("--strict-cidr", strictCIDR); err != nil {
				return err
			}
			for _, s := range nodeIPs {
				if _, err := netip.ParseAddr(s); err != nil {
					return fmt.Errorf("--node-ip %q: %w", s, err)
				}
			}
			if joinFile == "" {
				return fmt.Errorf("--join is required: the cluster's join bundle from `braid broker add-cluster`")
			}
			if cfg.Node == "" {
				return fmt.Errorf("--node is required: this node's name as the operator publishes it")
			}
			creds, err := join.LoadCredentials(joinFile, log)
			if err != nil {
				return err
			}
			cfg.Cluster = creds.Cluster
			cfg.GossipKeys = creds.GossipKeys
			if !gossipOn {
				cfg.GossipKeys = nil
			}
			for _, s := range nodeIPs {
				ip, err := netip.ParseAddr(s)
				if err != nil {
					return fmt.Errorf("--node-ip %q: %w", s, err)
				}
				cfg.NodeIPs = append(cfg.NodeIPs, ip)
			}
			cfg.BPF = bpf.Config{PinDir: pinDir}
			if cfg.CgroupPath, err = cgroupDir(cfg.CgroupPath, "/proc/self/mountinfo"); err != nil {
				return err
			}
			if wireguard {
				tc := &tunnel.Config{Name: wgName, StateDir: stateDir, ListenPort: wgPort, Netns: wgNetns, Strict: strict,
					RotationInterval: rotate, PersistentKeepalive: 25 * time.Second, UnderlayMTU: wgMTU}
				if tc.StrictCIDRs, err = clustermesh.ParsePrefixes("--strict-cidr", strictCIDR); err != nil {
					return err
				}
				cfg.Tunnel = tc
			}
			restCfg, err := k8s.RESTConfig(kubeconfig, inCluster)
			if err != nil {
				return err
			}
			if restCfg != nil {
				client, err := kubernetes.NewForConfig(restCfg)
				if err != nil {
					return fmt.Errorf("kubernetes client: %w", err)
				}
				// The cluster's NetworkPolicies, enforced for this node's pods.
				cfg.Policies = k8s.NewPolicyWatcher(client, log)
				// The operator publishes the node; it reads the key from here.
				cfg.PublishKey = func(ctx context.Context, keys tunnel.KeyState) error {
					nk := k8s.NodeKeys{Current: keys.Current.String()}
					if keys.Next != (wgtypes.Key{}) {
						nk.Next = keys.Next.String()
					}
					for _, k := range keys.Prepared {
						nk.Prepared = append(nk.Prepared, k.String())
					}
					return k8s.AnnotateNodeKeys(ctx, client, cfg.Node, nk)
				}
				// What the node can find out for itself is not a flag.
				if cfg.Zone == "" || cfg.Region == "" || len(cfg.NodeIPs) == 0 {
					info, err := k8s.WaitNodeInfo(cmd.Context(), client, cfg.Node, log)
					if err != nil {
						return err
					}
					if cfg.Zone == "" {
						cfg.Zone = info.Zone
					}
					if cfg.Region == "" {
						cfg.Region = info.Region
					}
					if len(cfg.NodeIPs) == 0 {
						cfg.NodeIPs = info.IPs
					}
					log.Info("placed from the Node object", "zone", cfg.Zone, "region", cfg.Region, "ips", cfg.NodeIPs)
				}
			}
			store, err := join.Connect(cmd.Context(), creds, log)
			if err != nil {
				return err
			}
			defer store.Close()
			if relayFile != "" {
				// Read the mesh from the cluster's relay; node status
				// still goes to the broker.
				relayCreds, err := join.LoadCredentials(relayFile, log)
				if err != nil {
					return fmt.Errorf("--relay: %w", err)
				}
				mesh, err := join.Connect(cmd.Context(), relayCreds, log)
				if err != nil {
					return fmt.Errorf("--relay: %w", err)
				}
				defer mesh.Close()
				cfg.Mesh = mesh
				log.Info("reading the mesh from the cluster's relay", "relay", relayCreds)
			}
			a, err := agent.New(cfg, store, log)
			if err != nil {
				return err
			}
			return a.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&joinFile, "join", "", "the cluster's join bundle (JSON)")
	f.StringVar(&relayFile, "relay", "", "read the mesh from the cluster's relay with this bundle (the operator's --relay-data-dir/agents.json or its --relay-agents-secret); empty: from the broker")
	f.StringVar(&cfg.Node, "node", "", "this node's name")
	f.StringVar(&cfg.Zone, "zone", "", "this node's zone (default: the Node's topology.kubernetes.io/zone label)")
	f.StringVar(&cfg.Region, "region", "", "this node's region (default: the Node's topology.kubernetes.io/region label)")
	f.StringSliceVar(&nodeIPs, "node-ip", nil, "this node's IPs (repeatable; default: the Node's InternalIP addresses)")
	f.StringVar(&pinDir, "bpf-pin-dir", "/sys/fs/bpf/braid", "where BPF maps and links are pinned")
	f.StringVar(&cfg.CgroupPath, "cgroup", autoCgroup, "cgroup v2 directory the socket load balancer attaches to (auto: where cgroup v2 is mounted, from /proc/self/mountinfo; empty: off)")
	f.StringSliceVar(&cfg.Interfaces, "interface", nil, "pod-facing interfaces for the tc programs (repeatable), besides --pod-devices")
	f.StringVar(&cfg.PodDevices, "pod-devices", agent.PodDevicesAuto, "find pod-facing devices and follow pods: auto (veths whose peer is in another netns), comma-separated name globs, or off")
	f.BoolVar(&cfg.SocketLBHostOnly, "socket-lb-host-only", true, "the socket load balancer acts only in the agent's netns (pods are served by tc); false: every netns under --cgroup")
	f.BoolVar(&gossipOn, "gossip", true, "find dead nodes by gossip (memberlist, keyed by the join bundle) and take their backends out of rotation")
	f.Uint16Var(&cfg.GossipPort, "gossip-port", gossip.DefaultPort, "gossip port (TCP and UDP, the same on every node of the mesh)")
	f.BoolVar(&wireguard, "wireguard", true, "encrypt cross-cluster traffic with WireGuard")
	f.StringVar(&wgName, "wireguard-device", "braid-wg", "WireGuard interface name (unique on the machine)")
	f.IntVar(&wgPort, "wireguard-port", tunnel.DefaultListenPort, "WireGuard UDP port (the same on every node of the mesh)")
	f.IntVar(&wgMTU, "underlay-mtu", tunnel.DefaultUnderlayMTU, "MTU of the path between nodes; the WireGuard device gets it minus WireGuard's overhead (60 bytes over IPv4)")
	f.StringVar(&wgNetns, "wireguard-netns", "", "network namespace (path) the WireGuard device lives in (default: the agent's)")
	f.StringVar(&stateDir, "state-dir", "/var/lib/braid", "where the node's WireGuard key is kept (mode 0600)")
	f.BoolVar(&strict, "strict", false, "drop traffic to remote pods that would leave the node unencrypted")
	f.StringSliceVar(&strictCIDR, "strict-cidr", nil, "the mesh's whole pod address space, guarded before peers are known")
	f.DurationVar(&rotate, "key-rotation", 0, "rotate the WireGuard key this often (0: only on demand)")
	f.StringVar(&cfg.StatusAddr, "status-addr", "127.0.0.1:9877", "where to serve status, /api/status and /metrics (empty: off)")
	f.StringVar(&kubeconfig, "kubeconfig", "", "annotate this node's Node object with its WireGuard key using this kubeconfig")
	f.BoolVar(&inCluster, "in-cluster", false, "annotate this node's Node object with its WireGuard key using the pod's service account")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}

// autoCgroup is --cgroup's default: the cgroup v2 mount, wherever it is.
const autoCgroup = "auto"

// cgroupDir resolves --cgroup: autoCgroup is the cgroup v2 mount read from
// the mountinfo table at mountinfo (/sys/fs/cgroup on pure v2 nodes,
// /sys/fs/cgroup/unified on hybrid ones), "" turns the socket load
// balancer off, and any other value is used as given.
func cgroupDir(flag, mountinfo string) (string, error) {
	if flag != autoCgroup {
		return flag, nil
	}
	m, err := cgroupv2.FindIn(mountinfo)
	if err != nil {
		return "", fmt.Errorf("--cgroup=%s: %w (pass --cgroup=DIR, or --cgroup= to run without the socket load balancer)", autoCgroup, err)
	}
	return m.Point, nil
}
