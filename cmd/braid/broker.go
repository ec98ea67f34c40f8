package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/broker"
	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/cmd/braid/benchkit"
)

const defaultBrokerURL = "https://127.0.0.1:2379"

func brokerCommand() *cobra.Command {
	var (
		cfg             broker.Config
		logLevel        string
		statusTokenFile string
	)
	cmd := &cobra.Command{
		Use:   "broker",
		Short: "Run the mesh broker: an embedded etcd with TLS and per-cluster users",
		Long: `Run the mesh broker: an embedded etcd serving TLS with a CA it creates on
first start (in --data-dir), with authentication on. Clusters join with a
token ('braid token create', then 'braid join' in the cluster), or with a
join bundle from 'braid broker add-cluster NAME' for braid-operator --join.
Every client presents a certificate signed by the broker's CA.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var l slog.Level
			if err := l.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level %q: %w", logLevel, err)
			}
			cfg.Logger = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: l}))
			if statusTokenFile != "" {
				b, err := os.ReadFile(statusTokenFile)
				if err != nil {
					return fmt.Errorf("--status-token-file: %w", err)
				}
				if cfg.StatusToken = strings.TrimSpace(string(b)); cfg.StatusToken == "" {
					return fmt.Errorf("--status-token-file %s is empty", statusTokenFile)
				}
			}
			if cfg.MetricsURL != "" {
				if u, err := url.Parse(cfg.MetricsURL); err != nil || u.Scheme != "http" || u.Port() == "" {
					return fmt.Errorf("--metrics-listen %q: want http://host:port", cfg.MetricsURL)
				}
			}
			b, err := broker.New(cfg)
			if err != nil {
				return err
			}
			// Benchmarks and braid sim profile the broker they run
			// (go tool pprof reads the file once it stops).
			stop, err := benchkit.StartCPUProfile(os.Getenv("BRAID_CPUPROFILE"))
			if err != nil {
				return fmt.Errorf("BRAID_CPUPROFILE: %w", err)
			}
			defer stop()
			return b.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.DataDir, "data-dir", "/var/lib/braid/broker", "where etcd data, the CA and the root password live")
	f.StringSliceVar(&cfg.ClientURLs, "listen", []string{defaultBrokerURL}, "client URLs to serve (https)")
	f.StringVar(&cfg.PeerURL, "listen-peer", "", "peer URL (default: client host, port 2380)")
	f.StringSliceVar(&cfg.ExtraSANs, "san", nil, "extra names or IPs for the server certificate")
	f.StringVar(&cfg.JoinURL, "join-listen", "https://127.0.0.1:2390", "join endpoint for `braid join` tokens, certificate renewal and `braid leave` (empty: off)")
	f.DurationVar(&cfg.ClientCertValidity, "client-cert-validity", broker.DefaultClientCertValidity, "validity of certificates issued to clusters (operators renew them at two thirds)")
	f.StringVar(&cfg.StatusAddr, "status-addr", "127.0.0.1:9878", "where to serve the mesh's live status page, /api/mesh and /metrics (empty: off)")
	f.BoolVar(&cfg.StatusClientCerts, "status-tls", false, "serve the status page over TLS and require client certificates from the broker's CA")
	f.StringVar(&statusTokenFile, "status-token-file", "", "file holding a read-only bearer token the status page requires")
	f.StringVar(&cfg.MetricsURL, "metrics-listen", "", "where etcd serves /metrics, /health and /version, without authentication (http://host:port; default: a free loopback port)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	cmd.AddCommand(addClusterCommand(), removeClusterCommand(), enableAuthCommand())
	return cmd
}

// adminFlags selects the etcd to administer: the local broker's data
// directory (default) or an external etcd.
type adminFlags struct {
	dataDir      string
	endpoints    []string
	caFile       string
	rootPassFile string
}

func (a *adminFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&a.dataDir, "data-dir", "/var/lib/braid/broker", "the local broker's data directory (CA and root password)")
	f.StringSliceVar(&a.endpoints, "etcd-endpoints", []string{defaultBrokerURL}, "etcd client URLs")
	f.StringVar(&a.caFile, "etcd-ca", "", "external etcd: CA certificate (PEM) that signed its server certificates")
	f.StringVar(&a.rootPassFile, "root-password-file", "", "external etcd: file holding the root password")
}

func (a *adminFlags) config() (broker.AdminConfig, []byte, error) {
	if a.caFile == "" {
		cfg, err := broker.LocalAdminConfig(a.dataDir, a.endpoints)
		if err != nil {
			return cfg, nil, fmt.Errorf("%w (is --data-dir the broker's? for an external etcd pass --etcd-ca and --root-password-file)", err)
		}
		ca, err := os.ReadFile(a.dataDir + "/pki/ca.crt")
		return cfg, ca, err
	}
	ca, err := os.ReadFile(a.caFile)
	if err != nil {
		return broker.AdminConfig{}, nil, fmt.Errorf("--etcd-ca: %w", err)
	}
	if a.rootPassFile == "" {
		return broker.AdminConfig{}, nil, fmt.Errorf("--root-password-file is required with --etcd-ca")
	}
	pw, err := os.ReadFile(a.rootPassFile)
	if err != nil {
		return broker.AdminConfig{}, nil, fmt.Errorf("--root-password-file: %w", err)
	}
	tlsCfg, err := join.ClientTLSConfig(ca)
	if err != nil {
		return broker.AdminConfig{}, nil, fmt.Errorf("--etcd-ca %s: %w", a.caFile, err)
	}
	return broker.AdminConfig{Endpoints: a.endpoints, TLS: tlsCfg, Password: strings.TrimSpace(string(pw))}, ca, nil
}

// client connects to the selected etcd as root. It returns the CA
// certificate too, for join bundles; the caller closes the client.
func (a *adminFlags) client(ctx context.Context) (*clientv3.Client, broker.AdminConfig, []byte, error) {
	cfg, ca, err := a.config()
	if err != nil {
		return nil, cfg, nil, err
	}
	c, err := broker.AdminClient(ctx, cfg)
	if err != nil {
		return nil, cfg, nil, err
	}
	return c, cfg, ca, nil
}

func addClusterCommand() *cobra.Command {
	var (
		admin        adminFlags
		out          string
		clusterID    uint16
		podCIDRs     []string
		serviceCIDRs []string
	)
	cmd := &cobra.Command{
		Use:   "add-cluster NAME",
		Short: "Create a cluster's etcd user and write its join bundle",
		Long: `Create (or rotate) the etcd user of cluster NAME, whose role may write only
under that cluster's own keys and read the whole mesh, and write the join
bundle braid-operator needs (--join) to --out, mode 0600. The broker grants
the cluster --cluster-id and its --pod-cidr and --service-cidr ranges; every
other cluster checks what it publishes against this grant, and refuses a
grant that overlaps another cluster's.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := clustermesh.ClusterName(args[0])
			if err := name.Validate(); err != nil {
				return err
			}
			g := clustermesh.Grant{Name: name, ID: clustermesh.ClusterID(clusterID)}
			var err error
			if g.PodCIDRs, err = clustermesh.ParsePrefixes("--pod-cidr", podCIDRs); err != nil {
				return err
			}
			if g.ServiceCIDRs, err = clustermesh.ParsePrefixes("--service-cidr", serviceCIDRs); err != nil {
				return err
			}
			if err := g.Validate(); err != nil {
				return fmt.Errorf("grant for cluster %s: %w (set --cluster-id, --pod-cidr, --service-cidr)", name, err)
			}
			c, _, ca, err := admin.client(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			creds, err := broker.AddCluster(cmd.Context(), c, g)
			if err != nil {
				return err
			}
			creds.Endpoints, creds.CACertPEM = admin.endpoints, ca
			if out == "" {
				out = string(name) + ".join.json"
			}
			if err := creds.Save(out); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "cluster %s added; join bundle written to %s (keep it secret)\n", name, out)
			return nil
		},
	}
	admin.register(cmd)
	cmd.Flags().StringVar(&out, "out", "", "where to write the join bundle (default NAME.join.json)")
	cmd.Flags().Uint16Var(&clusterID, "cluster-id", 0, "the cluster's ID in the mesh, 1..511 (required)")
	cmd.Flags().StringSliceVar(&podCIDRs, "pod-cidr", nil, "pod CIDRs granted to the cluster (repeatable; none grants no pod address)")
	cmd.Flags().StringSliceVar(&serviceCIDRs, "service-cidr", nil, "service CIDRs granted to the cluster (repeatable)")
	return cmd
}

func removeClusterCommand() *cobra.Command {
	var admin adminFlags
	cmd := &cobra.Command{
		Use:   "remove-cluster NAME",
		Short: "Revoke a cluster's leases (its entries vanish at once), delete its etcd user, role and grant",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := clustermesh.ClusterName(args[0])
			if err := name.Validate(); err != nil {
				return err
			}
			c, _, _, err := admin.client(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			return broker.RemoveCluster(cmd.Context(), c, name)
		},
	}
	admin.register(cmd)
	return cmd
}

func enableAuthCommand() *cobra.Command {
	var admin adminFlags
	cmd := &cobra.Command{
		Use:   "enable-auth",
		Short: "Turn on authentication in an external etcd (root user with --root-password-file)",
		Long: `Turn on authentication in an external etcd, with root's password from
--root-password-file. Idempotent; run it again after upgrading braid: it
also brings every registered cluster's role to the current key schema (a
kind added since the cluster was registered, such as services.v2, becomes
writable by its owner and readable by the others).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if admin.caFile == "" {
				return fmt.Errorf("enable-auth is for an external etcd: pass --etcd-ca, --etcd-endpoints and --root-password-file (the embedded broker enables auth itself)")
			}
			c, cfg, _, err := admin.client(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			if err := broker.EnableAuth(cmd.Context(), c, cfg.Password); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "authentication enabled")
			changed, err := broker.SyncClusterRoles(cmd.Context(), c)
			if err != nil {
				return err
			}
			if len(changed) > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "cluster roles brought to the current key schema: %v\n", changed)
			}
			return nil
		},
	}
	admin.register(cmd)
	return cmd
}
