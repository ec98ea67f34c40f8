// Command braid-operator publishes one cluster's state into the Braid mesh
// and mirrors the other clusters' state.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/clustermesh/k8s"
	"github.com/braidmesh/braid/clustermesh/operator"
	"github.com/braidmesh/braid/clustermesh/publish"
	"github.com/braidmesh/braid/clustermesh/relay"
	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/kvstore/etcd"
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
		clusterSet   []string
		defaultDeny  bool
		strict       bool
		cfg          operator.Config
		logLevel     string
		kubeconfig   string
		inCluster    bool
		joinSecret   string
		layout       string
		rc           relay.Config
		relaySecret  string
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
			if err := clustermesh.ValidateLeaseTTL(cfg.LeaseTTL); err != nil {
				return fmt.Errorf("--lease-ttl: %w", err)
			}
			if cfg.ServiceLayout, err = publish.ParseServiceLayout(layout); err != nil {
				return fmt.Errorf("--service-layout: %w", err)
			}
			cfg.Cluster = clustermesh.ClusterConfig{
				ID:           clustermesh.ClusterID(clusterID),
				Capabilities: clustermesh.Capabilities{DefaultDeny: defaultDeny, StrictEncryption: strict},
			}
			if cfg.Cluster.PodCIDRs, err = clustermesh.ParsePrefixes("--pod-cidr", podCIDRs); err != nil {
				return err
			}
			if cfg.Cluster.ServiceCIDRs, err = clustermesh.ParsePrefixes("--service-cidr", serviceCIDRs); err != nil {
				return err
			}
			if cfg.ClusterSetCIDRs, err = clustermesh.ParsePrefixes("--clusterset-cidr", clusterSet); err != nil {
				return err
			}
			if cmd.Flags().Changed("cluster-id") {
				if err := cfg.Cluster.ID.Validate(); err != nil {
					return fmt.Errorf("--cluster-id: %w", err)
				}
			}
			if g := cfg.Cluster.Grant(); len(g.PodCIDRs)+len(g.ServiceCIDRs) > 0 {
				g.Name, g.ID = "placeholder", clustermesh.MinClusterID // checked elsewhere; only the CIDRs here
				if err := g.Validate(); err != nil {
					return fmt.Errorf("--pod-cidr/--service-cidr: %w", err)
				}
			}
			if joinFile == "" {
				return fmt.Errorf("--join is required: the join bundle `braid broker add-cluster` wrote for this cluster")
			}
			creds, err := join.LoadCredentials(joinFile, log)
			if err != nil {
				return err
			}
			cfg.Cluster.Name = creds.Cluster
			if cfg.Kubernetes, err = k8s.RESTConfig(kubeconfig, inCluster); err != nil {
				return err
			}
			if cfg.Kubernetes != nil && cfg.StateFile != "" {
				return fmt.Errorf("--state-file and --kubeconfig/--in-cluster are exclusive: choose a simulated or a real cluster")
			}
			ctx := cmd.Context()
			var renewer *join.Renewer
			if len(creds.CertPEM) > 0 && creds.JoinURL != "" {
				// Joined with a token: keep the certificate fresh and
				// store each new one in the join Secret.
				save, err := secretSaver(cfg.Kubernetes, joinSecret)
				if err != nil {
					return err
				}
				if renewer, err = join.NewRenewer(creds, save, log); err != nil {
					return err
				}
			}
			var store *etcd.Store
			if renewer != nil {
				store, err = join.ConnectRenewing(ctx, renewer, log)
			} else {
				store, err = join.Connect(ctx, creds, log)
			}
			if err != nil {
				return err
			}
			defer store.Close()
			if cfg.Cluster, err = grantedConfig(ctx, store, cfg.Cluster, cmd.Flags().Changed("cluster-id")); err != nil {
				return err
			}
			if renewer != nil {
				rctx, stopRenew := context.WithCancel(ctx)
				renewDone := make(chan struct{})
				go func() {
					defer close(renewDone)
					if err := renewer.Run(rctx); err != nil {
						log.Error("certificate renewal stopped", "err", err)
					}
				}()
				defer func() { stopRenew(); <-renewDone }()
			}
			if len(rc.Listen) > 0 {
				if rc.DataDir == "" {
					return fmt.Errorf("--relay-data-dir is required with --relay-listen")
				}
				cfg.Relay = &rc
				if cfg.SaveRelayCredentials, err = relaySecretSaver(cfg.Kubernetes, relaySecret); err != nil {
					return err
				}
			}
			op, err := operator.New(cfg, store, log)
			if err != nil {
				return err
			}
			log.Info("operator starting", "cluster", cfg.Cluster.Name, "id", cfg.Cluster.ID, "status", cfg.StatusAddr)
			return op.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&joinFile, "join", "", "join bundle (JSON) from the Secret `braid join` wrote, or written by `braid broker add-cluster`")
	f.Uint16Var(&clusterID, "cluster-id", 0, "this cluster's ID in the mesh, 1..511 (default: the broker's grant; must equal it)")
	f.StringSliceVar(&podCIDRs, "pod-cidr", nil, "this cluster's pod CIDRs (default: the broker's grant; must equal it)")
	f.StringSliceVar(&serviceCIDRs, "service-cidr", nil, "this cluster's service CIDRs (default: the broker's grant; must equal it)")
	f.StringVar(&joinSecret, "join-secret", "", "NAMESPACE/NAME of the Secret holding the join bundle: renewed certificates are stored there")
	f.StringSliceVar(&clusterSet, "clusterset-cidr", nil, "ranges ClusterSetIPs of ServiceImports come from, one per family: inside a granted service CIDR, outside the Kubernetes service range")
	f.BoolVar(&defaultDeny, "default-deny", false, "identity policy denies what no rule allows")
	f.BoolVar(&strict, "strict-encryption", false, "drop traffic to remote pods that would bypass the tunnel")
	f.DurationVar(&cfg.LeaseTTL, "lease-ttl", 15*time.Second, "how long published entries outlive this process")
	f.StringVar(&layout, "service-layout", string(publish.LayoutBoth), "how services are published: both (while any agent predates chunks), chunked, or single")
	f.StringVar(&cfg.StateFile, "state-file", "", "simulated cluster: publish the state in this JSON file (re-read on change)")
	f.StringVar(&cfg.StatusAddr, "status-addr", "127.0.0.1:9876", "where to serve the status page, /api/status and /metrics (empty: off)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&kubeconfig, "kubeconfig", "", "publish the Kubernetes cluster this kubeconfig points at")
	f.BoolVar(&inCluster, "in-cluster", false, "publish the Kubernetes cluster the operator runs in (service account)")
	f.BoolVar(&cfg.EnsureCRDs, "ensure-crds", false, "create the multicluster.x-k8s.io ServiceExport/ServiceImport CRDs if absent")
	f.StringSliceVar(&rc.Listen, "relay-listen", nil, "run the cluster's relay: serve the mirrored mesh to this cluster's agents on these https://host:port URLs (empty: no relay; agents read the broker)")
	f.StringSliceVar(&rc.Advertise, "relay-advertise", nil, "URLs agents reach the relay at, written into their bundle (default: --relay-listen)")
	f.StringSliceVar(&rc.ExtraSANs, "relay-san", nil, "more DNS names or IPs for the relay's server certificate")
	f.StringVar(&rc.DataDir, "relay-data-dir", "/var/lib/braid/relay", "the relay's CA, passwords, agents' bundle (agents.json) and etcd data; keep it across restarts")
	f.StringVar(&rc.MetricsURL, "relay-metrics-url", "", "where the relay's etcd serves /metrics (http://host:port; default: a free loopback port)")
	f.StringVar(&relaySecret, "relay-agents-secret", "", "NAMESPACE/NAME of a Secret to store the relay's agents' bundle in (key relay.json), which the agents mount")
	return cmd
}

// relaySecretSaver returns a func that stores the relay's agents' bundle
// in the Secret ref (NAMESPACE/NAME, key relay.json), creating it if it
// does not exist; nil if ref or kube is not set.
func relaySecretSaver(kube *rest.Config, ref string) (func(context.Context, join.Credentials) error, error) {
	if ref == "" || kube == nil {
		return nil, nil
	}
	ns, name, ok := strings.Cut(ref, "/")
	if !ok || ns == "" || name == "" {
		return nil, fmt.Errorf("--relay-agents-secret %q: want NAMESPACE/NAME", ref)
	}
	client, err := kubernetes.NewForConfig(kube)
	if err != nil {
		return nil, fmt.Errorf("--relay-agents-secret: %w", err)
	}
	return func(ctx context.Context, c join.Credentials) error {
		b, err := json.MarshalIndent(c, "", "  ")
		if err != nil {
			return err
		}
		secrets := client.CoreV1().Secrets(ns)
		s, err := secrets.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			s = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Data: map[string][]byte{relaySecretKey: b}}
			if _, err := secrets.Create(ctx, s, metav1.CreateOptions{}); err != nil {
				return fmt.Errorf("create Secret %s: %w", ref, err)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("read Secret %s: %w", ref, err)
		}
		if string(s.Data[relaySecretKey]) == string(b) {
			return nil
		}
		if s.Data == nil {
			s.Data = map[string][]byte{}
		}
		s.Data[relaySecretKey] = b
		if _, err := secrets.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("update Secret %s: %w", ref, err)
		}
		return nil
	}, nil
}

// relaySecretKey is the relay's agents' bundle's key in its Secret.
const relaySecretKey = "relay.json"

// grantedConfig returns the cluster config the broker granted: the ID and
// CIDRs of the cluster's grant with want's capabilities. An ID or CIDRs
// given on the command line must equal the grant's.
func grantedConfig(ctx context.Context, store kvstore.Store, want clustermesh.ClusterConfig, idSet bool) (clustermesh.ClusterConfig, error) {
	kv, err := store.Get(ctx, clustermesh.GrantKey(want.Name))
	if errors.Is(err, kvstore.ErrNotFound) {
		return want, fmt.Errorf("cluster %s has no grant from the broker: run `braid broker add-cluster %s --cluster-id N --pod-cidr ... --service-cidr ...`", want.Name, want.Name)
	}
	if err != nil {
		return want, fmt.Errorf("read the grant of cluster %s: %w", want.Name, err)
	}
	g, err := clustermesh.DecodeGrant(kv.Key, kv.Value)
	if err != nil {
		return want, fmt.Errorf("read the grant of cluster %s: %w", want.Name, err)
	}
	granted := g.Config(want.Capabilities)
	switch {
	case idSet && want.ID != g.ID:
		return want, fmt.Errorf("--cluster-id %d: the broker granted cluster %s ID %d; drop the flag or re-add the cluster", want.ID, want.Name, g.ID)
	case len(want.PodCIDRs) > 0 && !slices.Equal(want.PodCIDRs, g.PodCIDRs):
		return want, fmt.Errorf("--pod-cidr %v: the broker granted cluster %s pod CIDRs %v; drop the flag or re-add the cluster", want.PodCIDRs, want.Name, g.PodCIDRs)
	case len(want.ServiceCIDRs) > 0 && !slices.Equal(want.ServiceCIDRs, g.ServiceCIDRs):
		return want, fmt.Errorf("--service-cidr %v: the broker granted cluster %s service CIDRs %v; drop the flag or re-add the cluster", want.ServiceCIDRs, want.Name, g.ServiceCIDRs)
	}
	return granted, nil
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: %w", level, err)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

// secretSaver returns a function storing renewed credentials in the
// Secret ref ("namespace/name", key join.json) of the cluster kube points
// at. Without ref or kube it returns nil: renewed certificates then live
// only in memory until the operator restarts, which the operator logs.
func secretSaver(kube *rest.Config, ref string) (func(context.Context, join.Credentials) error, error) {
	if ref == "" || kube == nil {
		return nil, nil
	}
	ns, name, ok := strings.Cut(ref, "/")
	if !ok || ns == "" || name == "" {
		return nil, fmt.Errorf("--join-secret %q: want NAMESPACE/NAME", ref)
	}
	client, err := kubernetes.NewForConfig(kube)
	if err != nil {
		return nil, fmt.Errorf("--join-secret: %w", err)
	}
	return func(ctx context.Context, c join.Credentials) error {
		b, err := json.MarshalIndent(c, "", "  ")
		if err != nil {
			return err
		}
		s, err := client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("read Secret %s: %w", ref, err)
		}
		if s.Data == nil {
			s.Data = map[string][]byte{}
		}
		s.Data["join.json"] = b
		if _, err := client.CoreV1().Secrets(ns).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("update Secret %s: %w", ref, err)
		}
		return nil
	}, nil
}
