package meshsim

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/braidmesh/braid/clustermesh/publish"
)

// Command returns `braid sim` (and its hidden `consume`, the consumer
// processes it runs).
func Command() *cobra.Command {
	var (
		cfg                                   Config
		mix, layout                           string
		brokerURLs                            []string
		brokerCA, rootPassFile, brokerMetrics string
	)
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Load a real broker with simulated clusters, churn and consumers; report its load and the propagation",
		Long: `Registers --clusters clusters (IDs 1..N, names sim-ID) with a broker, each
with --nodes nodes and --endpoints endpoints (endpoints/nodes global
services, each with a backend on every node), published through the
operator's publisher under each cluster's lease and credentials. Then runs
--consumers-per-cluster consumers (remote.Watchers with their cluster's
credentials, as agents run them) for each of the first --consumer-clusters
clusters, in one process per cluster (with --consumers-via relay, behind a
relay per consumer cluster: clustermesh/relay in a process of its own, with
the cluster's credentials and its own embedded etcd, read by the consumers
as braid-agent --relay reads it), waits until they hold the whole mesh,
and applies --rate changes per second for --duration: endpoint flaps
(readiness), scale ups and downs (a backend and its pod's IP entry), and
clusters joining (spare granted IDs, then clusters that left) and leaving
(withdrawing their lease), weighed by --mix.

It reports the propagation of every change (handed to the publisher → a
consumer's Watcher applied it, i.e. its snapshot holds it), beside a raw
etcd put → watch measured the same way in the same run; the broker's CPU
during the churn, RSS, database size, watch streams and events/s (etcd's
metrics); the relays', the consumers' and its own RSS and CPU. It fails if a consumer's
view differs from what is published after its initial sync or after the
churn.

The broker is a child process (braid broker) unless --broker names an
existing one, administered as root (--broker-ca, --root-password-file);
the run's clusters are removed from it at the end.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if cfg.Mix, err = ParseMix(mix); err != nil {
				return fmt.Errorf("--mix: %w", err)
			}
			if cfg.ServiceLayout, err = publish.ParseServiceLayout(layout); err != nil {
				return fmt.Errorf("--service-layout: %w", err)
			}
			if err := cfg.Validate(); err != nil {
				return err
			}
			if len(brokerURLs) > 0 {
				for _, u := range brokerURLs {
					if !strings.HasPrefix(u, "https://") {
						return fmt.Errorf("--broker %q: want https://host:port", u)
					}
				}
				if brokerCA == "" || rootPassFile == "" {
					return fmt.Errorf("--broker needs --broker-ca and --root-password-file")
				}
				if brokerMetrics != "" && !strings.HasPrefix(brokerMetrics, "http") {
					return fmt.Errorf("--broker-metrics %q: want http(s)://host:port", brokerMetrics)
				}
				ca, err := os.ReadFile(brokerCA)
				if err != nil {
					return fmt.Errorf("--broker-ca: %w", err)
				}
				pw, err := os.ReadFile(rootPassFile)
				if err != nil {
					return fmt.Errorf("--root-password-file: %w", err)
				}
				cfg.Broker = &ExternalBroker{Endpoints: brokerURLs, CACertPEM: ca, RootPassword: strings.TrimSpace(string(pw)),
					MetricsURL: strings.TrimSuffix(brokerMetrics, "/metrics")}
			}
			cfg.Stderr = cmd.ErrOrStderr()
			_, err = Run(cmd.Context(), cfg, cmd.OutOrStdout())
			return err
		},
	}
	f := cmd.Flags()
	f.IntVar(&cfg.Clusters, "clusters", 20, "clusters in the mesh at the start (IDs 1..N; at most 511)")
	f.IntVar(&cfg.Nodes, "nodes", 20, "nodes per cluster")
	f.IntVar(&cfg.Endpoints, "endpoints", 200, "service endpoints per cluster, a multiple of --nodes")
	f.Float64Var(&cfg.Rate, "rate", 200, "churn changes per second (0: none)")
	f.DurationVar(&cfg.Duration, "duration", time.Minute, "how long the churn runs")
	f.StringVar(&mix, "mix", DefaultMix, "weights of the kinds of churn: flap, scale-up, scale-down, join, leave")
	f.Uint64Var(&cfg.Seed, "seed", 0, "seed of the churn's choices (0: random, printed)")
	f.IntVar(&cfg.ConsumerClusters, "consumer-clusters", 1, "clusters running consumers (the first ones by ID); they never leave")
	f.IntVar(&cfg.ConsumersPerCluster, "consumers-per-cluster", 1, "consumers in each consumer cluster, each with its own connection")
	f.StringVar(&cfg.Via, "consumers-via", ViaDirect, "how consumers reach the mesh: direct (the shared etcd) or relay (a relay per consumer cluster, in a process of its own)")
	f.StringVar(&layout, "service-layout", string(publish.LayoutBoth), "how services are published: both (the operator's default), chunked or single")
	f.DurationVar(&cfg.LeaseTTL, "lease-ttl", publish.DefaultLeaseTTL, "the clusters' lease TTL")
	f.Float64Var(&cfg.RawRate, "raw-rate", 20, "raw baseline puts per second, beside the churn (0: none)")
	f.DurationVar(&cfg.Timeout, "timeout", 10*time.Minute, "give up on publishing, the consumers' sync or the drain after this long")
	f.StringSliceVar(&brokerURLs, "broker", nil, "an existing broker's client URLs (https); default: run one")
	f.StringVar(&brokerCA, "broker-ca", "", "with --broker: the CA certificate (PEM) of its server certificates")
	f.StringVar(&rootPassFile, "root-password-file", "", "with --broker: file holding its root password")
	f.StringVar(&brokerMetrics, "broker-metrics", "", "with --broker: its etcd /metrics URL, for CPU, RSS, watch streams and events")
	f.StringVar(&cfg.ProfileDir, "profile-dir", "", "write CPU profiles of this process, the consumers and the broker it runs here")
	cmd.AddCommand(consumeCommand(), relayCommand())
	return cmd
}
