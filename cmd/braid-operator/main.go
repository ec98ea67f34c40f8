// Command braid-operator publishes one cluster's state into the Braid mesh
// and mirrors the other clusters' state.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/broker"
	"github.com/braidmesh/braid/clustermesh/k8s"
	"github.com/braidmesh/braid/clustermesh/operator"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := command().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "braid-operator:", err)
		os.Exit(1)
	}
}

func command() *cobra.Command {
	var (
		joinFile     string
		clusterID    uint16
		podCIDRs     []string
		serviceCIDRs []string
		defaultDeny  bool
		strict       bool
		cfg          operator.Config
		logLevel     string
		kubeconfig   string
		inCluster    bool
	)
	cmd := &cobra.Command{
		Use:           "braid-operator",
		Short:         "Publish this cluster's state into the Braid mesh",
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(logLevel)
			if err != nil {
				return err
			}
			if joinFile == "" {
				return fmt.Errorf("--join is required: the join bundle `braid broker add-cluster` wrote for this cluster")
			}
			creds, err := broker.LoadCredentials(joinFile)
			if err != nil {
				return err
			}
			cfg.Cluster = clustermesh.ClusterConfig{
				Name:         creds.Cluster,
				ID:           clustermesh.ClusterID(clusterID),
				Capabilities: clustermesh.Capabilities{DefaultDeny: defaultDeny, StrictEncryption: strict},
			}
			if cfg.Cluster.PodCIDRs, err = parsePrefixes("--pod-cidr", podCIDRs); err != nil {
				return err
			}
			if cfg.Cluster.ServiceCIDRs, err = parsePrefixes("--service-cidr", serviceCIDRs); err != nil {
				return err
			}
			if err := cfg.Cluster.Validate(); err != nil {
				return fmt.Errorf("cluster config: %w (set --cluster-id, --pod-cidr, --service-cidr)", err)
			}
			if cfg.Kubernetes, err = k8s.RESTConfig(kubeconfig, inCluster); err != nil {
				return err
			}
			if cfg.Kubernetes != nil && cfg.StateFile != "" {
				return fmt.Errorf("--state-file and --kubeconfig/--in-cluster are exclusive: choose a simulated or a real cluster")
			}
			ctx := cmd.Context()
			store, err := broker.Connect(ctx, creds, log)
			if err != nil {
				return err
			}
			defer store.Close()
			op, err := operator.New(cfg, store, log)
			if err != nil {
				return err
			}
			log.Info("operator starting", "cluster", cfg.Cluster.Name, "id", cfg.Cluster.ID, "status", cfg.StatusAddr)
			return op.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&joinFile, "join", "", "join bundle (JSON) written by `braid broker add-cluster`")
	f.Uint16Var(&clusterID, "cluster-id", 0, "this cluster's ID in the mesh, 1..511")
	f.StringSliceVar(&podCIDRs, "pod-cidr", nil, "this cluster's pod CIDRs (repeatable)")
	f.StringSliceVar(&serviceCIDRs, "service-cidr", nil, "this cluster's service CIDRs (repeatable)")
	f.BoolVar(&defaultDeny, "default-deny", false, "identity policy denies what no rule allows")
	f.BoolVar(&strict, "strict-encryption", false, "drop traffic to remote pods that would bypass the tunnel")
	f.DurationVar(&cfg.LeaseTTL, "lease-ttl", 15*time.Second, "how long published entries outlive this process")
	f.StringVar(&cfg.StateFile, "state-file", "", "simulated cluster: publish the state in this JSON file (re-read on change)")
	f.StringVar(&cfg.StatusAddr, "status-addr", "127.0.0.1:9876", "where to serve the status page, /api/status and /metrics (empty: off)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&kubeconfig, "kubeconfig", "", "publish the Kubernetes cluster this kubeconfig points at")
	f.BoolVar(&inCluster, "in-cluster", false, "publish the Kubernetes cluster the operator runs in (service account)")
	f.BoolVar(&cfg.EnsureCRDs, "ensure-crds", false, "create the multicluster.x-k8s.io ServiceExport/ServiceImport CRDs if absent")
	return cmd
}

func parsePrefixes(flag string, in []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range in {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%s %q: %w", flag, s, err)
		}
		out = append(out, p)
	}
	return out, nil
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: %w", level, err)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}
