package meshsim

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/broker"
	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/clustermesh/publish"
	"github.com/braidmesh/braid/clustermesh/relay"
	"github.com/braidmesh/braid/cmd/braid/benchkit"
	"github.com/braidmesh/braid/reconcile"
)

// Limits of a run.
const (
	maxConsumersPerCluster = 1000
	maxRate                = 100_000
)

// How consumers reach the mesh (Config.Via).
const (
	// ViaDirect: every consumer watches the broker with its cluster's
	// credentials.
	ViaDirect = "direct"
	// ViaRelay: each consumer cluster runs a relay (clustermesh/relay) in
	// a process of its own (`braid sim relay`) with the cluster's
	// credentials, and its consumers watch the relay's etcd with the
	// relay's agents' bundle, as braid-agent --relay does.
	ViaRelay = "relay"
)

// rawKey is the raw baseline's key, outside clustermesh.Root so that no
// Watcher decodes it.
const rawKey = "braid-sim/raw"

// The raw key's permissions are roles of their own, granted to the
// consumer clusters' users beside their cluster roles: a broker brings
// every cluster role to exactly the key schema's permissions when it
// starts (broker.SyncClusterRoles), which may happen after its root user
// first answers, and would revoke a permission added to the cluster role.
const (
	rawWriterRole = "braid-sim-raw-writer"
	rawReaderRole = "braid-sim-raw-reader"
)

// grantRawKey lets the first consumer cluster write the raw key and the
// others read it.
func grantRawKey(ctx context.Context, admin *clientv3.Client, consumers []*simCluster) error {
	for role, perm := range map[string]clientv3.PermissionType{rawWriterRole: clientv3.PermissionType(clientv3.PermReadWrite), rawReaderRole: clientv3.PermissionType(clientv3.PermRead)} {
		if _, err := admin.RoleAdd(ctx, role); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
			return fmt.Errorf("add role %s: %w", role, err)
		}
		if _, err := admin.RoleGrantPermission(ctx, role, rawKey, "", perm); err != nil {
			return fmt.Errorf("grant role %s the raw key: %w", role, err)
		}
	}
	for i, c := range consumers {
		role := rawReaderRole
		if i == 0 {
			role = rawWriterRole
		}
		if _, err := admin.UserGrantRole(ctx, broker.ClusterUser(c.cfg.Name), role); err != nil {
			return fmt.Errorf("grant %s the raw key: %w", c.cfg.Name, err)
		}
	}
	return nil
}

// revokeRawKey deletes the raw key's roles from an external broker.
func revokeRawKey(ctx context.Context, admin *clientv3.Client, log *slog.Logger) {
	for _, role := range []string{rawWriterRole, rawReaderRole} {
		if _, err := admin.RoleDelete(ctx, role); err != nil && !errors.Is(err, rpctypes.ErrRoleNotFound) {
			log.Error("delete role", "role", role, "err", err)
		}
	}
}

// Config is one simulation run. Run validates it.
type Config struct {
	// Clusters start in the mesh, with IDs 1..Clusters; clusters that join
	// later take the next IDs (up to twice Clusters, at most 511), then
	// clusters that left come back.
	Clusters int
	// Nodes and Endpoints are per cluster; Endpoints is a multiple of
	// Nodes: Endpoints/Nodes services, each with a backend on every node.
	Nodes, Endpoints int
	// Rate is churn changes per second; zero applies none.
	Rate     float64
	Duration time.Duration
	Mix      Mix
	Seed     uint64 // zero: random
	// ConsumerClusters (the first ones, by ID) each run
	// ConsumersPerCluster consumers in one process of their own.
	ConsumerClusters, ConsumersPerCluster int
	// Via is how consumers reach the mesh: ViaDirect or ViaRelay.
	Via           string
	ServiceLayout publish.ServiceLayout
	LeaseTTL      time.Duration
	// RawRate is the raw baseline's puts per second.
	RawRate float64
	// Timeout bounds each wait: publishing, the consumers' sync, the
	// drain after the churn.
	Timeout time.Duration
	// Broker is an existing broker to use; nil runs one (`braid broker`
	// as a child process).
	Broker *ExternalBroker
	// Exe is the braid binary children run; empty means this one.
	Exe string
	// Env is added to the children's environment.
	Env        []string
	ProfileDir string
	// Stderr receives the children's errors and progress lines.
	Stderr io.Writer
}

// ExternalBroker is an existing broker (any etcd with TLS and
// authentication) administered as root.
type ExternalBroker struct {
	Endpoints    []string
	CACertPEM    []byte
	RootPassword string
	// MetricsURL, if set, is where its /metrics is served (etcd's
	// --listen-metrics-urls), for the broker's figures.
	MetricsURL string
}

// Validate checks c, naming the flag of what is wrong.
func (c *Config) Validate() error {
	switch {
	case c.Clusters < 2 || c.Clusters > int(clustermesh.MaxClusterID):
		return fmt.Errorf("--clusters %d: must be in 2..%d (the cluster ID space)", c.Clusters, clustermesh.MaxClusterID)
	case c.Nodes < 1 || c.Nodes > 250:
		return fmt.Errorf("--nodes %d: must be in 1..250", c.Nodes)
	case c.Endpoints < c.Nodes || c.Endpoints%c.Nodes != 0 || c.Endpoints/c.Nodes > 200:
		return fmt.Errorf("--endpoints %d: must be a multiple of --nodes (%d), at most 200 times it (each service has a backend on every node)", c.Endpoints, c.Nodes)
	case !poolFits(c.poolSize(), c.Nodes):
		return fmt.Errorf("--clusters %d with --nodes %d: their pod CIDRs (a /24 per node, rounded up to a power of two) do not fit in 10.0.0.0/8", c.poolSize(), c.Nodes)
	case c.Rate < 0 || c.Rate > maxRate:
		return fmt.Errorf("--rate %g: must be in 0..%d changes/s", c.Rate, maxRate)
	case c.Duration <= 0 || c.Duration > 24*time.Hour:
		return fmt.Errorf("--duration %v: must be positive, at most 24h", c.Duration)
	case c.ConsumerClusters < 1 || c.ConsumerClusters > c.Clusters:
		return fmt.Errorf("--consumer-clusters %d: must be in 1..--clusters (%d)", c.ConsumerClusters, c.Clusters)
	case c.ConsumersPerCluster < 1 || c.ConsumersPerCluster > maxConsumersPerCluster:
		return fmt.Errorf("--consumers-per-cluster %d: must be in 1..%d", c.ConsumersPerCluster, maxConsumersPerCluster)
	case c.Via != ViaDirect && c.Via != ViaRelay:
		return fmt.Errorf("--consumers-via %q: want %s or %s", c.Via, ViaDirect, ViaRelay)
	case c.RawRate < 0 || c.RawRate > 1000:
		return fmt.Errorf("--raw-rate %g: must be in 0..1000 puts/s", c.RawRate)
	case c.Timeout <= 0:
		return fmt.Errorf("--timeout %v: must be positive", c.Timeout)
	case len(c.Mix) == 0:
		return errors.New("--mix: no churn kinds")
	}
	if _, err := publish.ParseServiceLayout(string(c.ServiceLayout)); err != nil {
		return fmt.Errorf("--service-layout: %w", err)
	}
	if err := clustermesh.ValidateLeaseTTL(c.LeaseTTL); err != nil {
		return fmt.Errorf("--lease-ttl: %w", err)
	}
	return nil
}

// poolSize is how many clusters are granted: the starting ones and, if
// clusters may join, as many spare IDs (at most 511 in all).
func (c *Config) poolSize() int {
	if c.Mix[opJoin] == 0 {
		return c.Clusters
	}
	return min(2*c.Clusters, int(clustermesh.MaxClusterID))
}

// Result is what a run measured; Run also prints it.
type Result struct {
	Started int // clusters in the mesh when the churn began
	Pool    int // clusters granted: those and the ones that may join
	// SyncCounts is what each consumer held after its initial sync, and
	// WantSync what it should have held; FinalCounts and WantFinal the same
	// once the churn was over and drained.
	SyncCounts, WantSync   []Counts
	FinalCounts, WantFinal []Counts
	Applied                map[string]int // churn changes by kind
	Fallbacks              int
	Matched                matched
	Raw                    benchkit.Latencies
	RawMissing             int

	SetupGrants, SetupPublish, ConsumerSync time.Duration
	ChurnElapsed                            time.Duration
	LoadStart, LoadEnd                      string
	Broker                                  processFigures
	BrokerMetrics                           benchkit.Metrics // at the end of the churn
	EventsPerSec, PutsPerSec                float64
	DBSize                                  int64
	Consumers                               []processFigures
	// Relays are the relay processes' figures (ViaRelay), one per
	// consumer cluster; RelayMetrics their etcds' metrics at the end of
	// the churn, and RelayEventsPerSec the watch events/s each sent its
	// consumers during the churn.
	Relays            []processFigures
	RelayMetrics      []benchkit.Metrics
	RelayEventsPerSec []float64
	Driver            processFigures
}

type processFigures struct {
	CPU, CPUChurn   time.Duration
	RSS, PeakRSS    int64
	CPUKnown, Known bool
}

// metricNames are the broker metrics a run reads.
var metricNames = []string{
	"etcd_debugging_mvcc_watch_stream_total", "etcd_debugging_mvcc_watcher_total", "etcd_debugging_mvcc_events_total",
	"etcd_mvcc_put_total", "etcd_mvcc_delete_total", "etcd_mvcc_db_total_size_in_bytes",
	"process_cpu_seconds_total", "process_resident_memory_bytes",
	// Disk: each write waits for its WAL fsync; both etcds share a disk.
	"etcd_disk_wal_fsync_duration_seconds_sum", "etcd_disk_wal_fsync_duration_seconds_count",
}

// brokerConn is the broker a run uses.
type brokerConn struct {
	admin      *clientv3.Client
	endpoints  []string
	ca         []byte
	metricsURL string
	pid        int // zero for an external broker
	close      func()
}

func (b *brokerConn) addCluster(ctx context.Context, g clustermesh.Grant) (join.Credentials, error) {
	c, err := broker.AddCluster(ctx, b.admin, g)
	if err != nil {
		return c, err
	}
	c.Endpoints, c.CACertPEM = slices.Clone(b.endpoints), slices.Clone(b.ca)
	return c, nil
}

func connectBroker(ctx context.Context, cfg *Config, exe, dir string) (*brokerConn, error) {
	if cfg.Broker == nil {
		env := cfg.Env
		if cfg.ProfileDir != "" {
			env = append(slices.Clone(env), "BRAID_CPUPROFILE="+filepath.Join(cfg.ProfileDir, "broker.cpu.pprof"))
		}
		bp, err := benchkit.StartBroker(ctx, exe, filepath.Join(dir, "broker"), env, cfg.Stderr)
		if err != nil {
			return nil, err
		}
		return &brokerConn{admin: bp.Admin, endpoints: []string{bp.Endpoint}, ca: bp.CACertPEM, metricsURL: bp.MetricsURL, pid: bp.PID(), close: bp.Close}, nil
	}
	tlsCfg, err := join.ClientTLSConfig(cfg.Broker.CACertPEM)
	if err != nil {
		return nil, fmt.Errorf("--broker-ca: %w", err)
	}
	admin, err := broker.AdminClient(ctx, broker.AdminConfig{Endpoints: cfg.Broker.Endpoints, TLS: tlsCfg, Password: cfg.Broker.RootPassword})
	if err != nil {
		return nil, err
	}
	return &brokerConn{admin: admin, endpoints: cfg.Broker.Endpoints, ca: cfg.Broker.CACertPEM, metricsURL: cfg.Broker.MetricsURL,
		close: func() { admin.Close() }}, nil
}

// brokerFigures reads the broker's CPU and memory: from /proc for a child
// process, from its metrics otherwise.
func (b *brokerConn) figures(ctx context.Context) (processFigures, benchkit.Metrics) {
	var f processFigures
	var m benchkit.Metrics
	if b.metricsURL != "" {
		m, _ = benchkit.Scrape(ctx, b.metricsURL+"/metrics", metricNames...)
	}
	if b.pid != 0 {
		if s, err := benchkit.ReadProc(b.pid); err == nil {
			f = processFigures{CPU: s.CPU, RSS: s.RSS, PeakRSS: s.PeakRSS, CPUKnown: true, Known: true}
		}
	} else if m != nil {
		f.CPU = time.Duration(m["process_cpu_seconds_total"] * float64(time.Second))
		f.RSS = int64(m["process_resident_memory_bytes"])
		f.CPUKnown = true
	}
	return f, m
}

// Run runs the simulation and writes its report to out. It returns the
// figures, and an error if the run failed or a consumer's view did not
// match what was published.
func Run(ctx context.Context, cfg Config, out io.Writer) (*Result, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.Stderr = cmp.Or[io.Writer](cfg.Stderr, io.Discard)
	progress := func(format string, args ...any) {
		fmt.Fprintf(cfg.Stderr, "%s sim: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
	}
	exe := cfg.Exe
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return nil, err
		}
	}
	if cfg.ProfileDir != "" {
		if err := os.MkdirAll(cfg.ProfileDir, 0o755); err != nil {
			return nil, fmt.Errorf("--profile-dir: %w", err)
		}
		stop, err := benchkit.StartCPUProfile(filepath.Join(cfg.ProfileDir, "driver.cpu.pprof"))
		if err != nil {
			return nil, fmt.Errorf("--profile-dir: %w", err)
		}
		defer stop()
	}
	dir, err := os.MkdirTemp("", "braid-sim-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	log := slog.New(slog.NewTextHandler(cfg.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	res := &Result{Applied: map[string]int{}}

	b, err := connectBroker(ctx, &cfg, exe, dir)
	if err != nil {
		return nil, err
	}
	defer b.close()
	sh := shape{nodes: cfg.Nodes, endpoints: cfg.Endpoints, layout: cfg.ServiceLayout, leaseTTL: cfg.LeaseTTL}

	// Grants first, and the raw key's permissions: every change to users
	// and roles makes etcd's password clients authenticate again, so they
	// are all made before any cluster connects.
	start := time.Now()
	clusters := make([]*simCluster, cfg.poolSize())
	for i := range clusters {
		c, err := newSimCluster(clustermesh.ClusterID(i+1), sh)
		if err != nil {
			return nil, err
		}
		g := c.cfg.Grant()
		if c.creds, err = b.addCluster(ctx, g); err != nil {
			return nil, err
		}
		c.consumes = i < cfg.ConsumerClusters
		clusters[i] = c
	}
	if cfg.Broker != nil {
		defer removeClusters(context.WithoutCancel(ctx), b, clusters, log)
	}
	if err := grantRawKey(ctx, b.admin, clusters[:cfg.ConsumerClusters]); err != nil {
		return nil, err
	}
	if cfg.Broker != nil {
		defer revokeRawKey(context.WithoutCancel(ctx), b.admin, log)
	}
	res.SetupGrants = time.Since(start)
	progress("%d clusters granted in %v", len(clusters), res.SetupGrants.Round(time.Millisecond))

	// Connections, then the starting clusters' publishers, 32 at a time.
	if err := forEach(ctx, clusters, 16, func(c *simCluster) error {
		var err error
		c.store, err = join.Connect(ctx, c.creds, log)
		return err
	}); err != nil {
		return nil, err
	}
	defer func() {
		for _, c := range clusters {
			c.stop()
			if c.store != nil {
				c.store.Close()
			}
		}
	}()
	start = time.Now()
	pctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	err = forEach(pctx, clusters[:cfg.Clusters], 32, func(c *simCluster) error {
		if err := c.start(pctx, sh, log); err != nil {
			return err
		}
		c.mu.Lock()
		c.status = active
		c.mu.Unlock()
		return nil
	})
	cancel()
	if err != nil {
		return nil, err
	}
	res.SetupPublish = time.Since(start)
	res.Started, res.Pool = cfg.Clusters, len(clusters)
	progress("%d clusters published in %v", cfg.Clusters, res.SetupPublish.Round(time.Millisecond))

	// Consumers, each cluster's in a process of its own; with ViaRelay,
	// behind the cluster's relay, in a process of its own too.
	col := newCollector()
	var relays []*consumerProc
	var relayMetricsURLs []string
	defer func() {
		for _, p := range relays {
			p.stop()
		}
	}()
	var procs []*consumerProc
	defer func() {
		for _, p := range procs {
			p.stop()
		}
	}()
	var infos []consumerInfo
	var rawConsumers []int
	start = time.Now()
	for i := range cfg.ConsumerClusters {
		c := clusters[i]
		joinFile := filepath.Join(dir, string(c.cfg.Name)+".join.json")
		if err := c.creds.Save(joinFile); err != nil {
			return nil, err
		}
		consumerJoin, rawArgs := joinFile, []string{"--raw-key", rawKey}
		if cfg.Via == ViaRelay {
			// The raw baseline is watched on the relay's broker connection
			// (the agent user may read only the mesh), as it is on the
			// first consumer's connection when direct.
			relayDir := filepath.Join(dir, string(c.cfg.Name)+".relay")
			args := []string{"sim", "relay", "--join", joinFile, "--data-dir", relayDir, "--raw-key", rawKey}
			if cfg.ProfileDir != "" {
				args = append(args, "--profile-dir", cfg.ProfileDir)
			}
			rp, err := startConsumer(exe, args, cfg.Env, cfg.Stderr, len(infos), 1, col)
			if err != nil {
				return nil, err
			}
			relays = append(relays, rp)
			u, err := rp.waitReady(ctx, cfg.Timeout)
			if err != nil {
				return nil, fmt.Errorf("relay of %s: %w", c.cfg.Name, err)
			}
			relayMetricsURLs = append(relayMetricsURLs, u)
			consumerJoin, rawArgs = filepath.Join(relayDir, relay.AgentsFile), nil
		}
		args := []string{"sim", "consume", "--join", consumerJoin, "--consumers", strconv.Itoa(cfg.ConsumersPerCluster),
			"--expect", strconv.Itoa(cfg.Clusters - 1)}
		args = append(args, rawArgs...)
		if cfg.ProfileDir != "" {
			args = append(args, "--profile-dir", cfg.ProfileDir)
		}
		p, err := startConsumer(exe, args, cfg.Env, cfg.Stderr, len(infos), cfg.ConsumersPerCluster, col)
		if err != nil {
			return nil, err
		}
		procs = append(procs, p)
		rawConsumers = append(rawConsumers, len(infos))
		for range cfg.ConsumersPerCluster {
			infos = append(infos, consumerInfo{cluster: c.cfg.Name})
		}
	}
	wantByCluster := func(self clustermesh.ClusterName) map[clustermesh.ClusterName]Counts {
		by := map[clustermesh.ClusterName]Counts{}
		for _, c := range clusters {
			c.mu.Lock()
			in := c.status == active
			c.mu.Unlock()
			if in && c.cfg.Name != self {
				by[c.cfg.Name] = c.counts()
			}
		}
		return by
	}
	want := func(self clustermesh.ClusterName) Counts {
		var n Counts
		for _, c := range clusters {
			c.mu.Lock()
			in := c.status == active
			c.mu.Unlock()
			if in && c.cfg.Name != self {
				n.add(c.counts())
			}
		}
		return n
	}
	if err := col.wait(ctx, cfg.Timeout, func() error {
		if len(col.synced) < len(infos) {
			return fmt.Errorf("%d of %d consumers synced", len(col.synced), len(infos))
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("consumers' initial sync: %w", err)
	}
	var lastSync int64
	for i, info := range infos {
		ev := col.synced[i]
		lastSync = max(lastSync, ev.T)
		res.SyncCounts = append(res.SyncCounts, *ev.Counts)
		res.WantSync = append(res.WantSync, want(info.cluster))
	}
	res.ConsumerSync = time.Unix(0, lastSync).Sub(start)
	progress("%d consumers synced in %v", len(infos), res.ConsumerSync.Round(time.Millisecond))
	for i := range infos {
		if res.SyncCounts[i] != res.WantSync[i] {
			return res, fmt.Errorf("consumer %d (cluster %s) synced %+v, want %+v (what was published)", i, infos[i].cluster, res.SyncCounts[i], res.WantSync[i])
		}
	}

	// The churn, and the raw baseline beside it.
	seed := cfg.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	ch := &churner{clusters: clusters, sh: sh, mix: cfg.Mix, rnd: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), log: log, applied: map[string]int{}}
	res.LoadStart = benchkit.LoadAverage()
	brokerBefore, metricsBefore := b.figures(ctx)
	driverCPU := benchkit.SelfCPU()
	consumerCPU := make([]time.Duration, len(procs))
	for i, p := range procs {
		if s, err := benchkit.ReadProc(p.cmd.Process.Pid); err == nil {
			consumerCPU[i] = s.CPU
		}
	}
	relayCPU := make([]time.Duration, len(relays))
	for i, p := range relays {
		if s, err := benchkit.ReadProc(p.cmd.Process.Pid); err == nil {
			relayCPU[i] = s.CPU
		}
	}
	relayBefore := scrapeAll(ctx, relayMetricsURLs)
	progress("churn: %g changes/s for %v (mix %s, seed %d)", cfg.Rate, cfg.Duration, cfg.Mix, seed)
	churnStart := time.Now()
	rawPuts := map[string]int64{}
	var rawMu sync.Mutex
	cctx, stopChurn := context.WithCancel(ctx)
	var bg sync.WaitGroup
	if cfg.RawRate > 0 {
		bg.Go(func() {
			client := clusters[0].store.Client()
			t := time.NewTicker(time.Duration(float64(time.Second) / cfg.RawRate))
			defer t.Stop()
			for seq := 0; ; seq++ {
				select {
				case <-cctx.Done():
					return
				case <-t.C:
				}
				v := strconv.Itoa(seq)
				start := time.Now().UnixNano()
				if _, err := client.Put(cctx, rawKey, v); err != nil {
					if cctx.Err() == nil {
						ch.fail(fmt.Errorf("raw put: %w", err))
					}
					return
				}
				rawMu.Lock()
				rawPuts[v] = start
				rawMu.Unlock()
			}
		})
	}
	if cfg.Rate > 0 {
		interval := time.Duration(float64(time.Second) / cfg.Rate)
		end := churnStart.Add(cfg.Duration)
		timer := time.NewTimer(0)
	churn:
		for i := 0; ; i++ {
			at := churnStart.Add(time.Duration(i) * interval)
			if !at.Before(end) {
				break
			}
			if d := time.Until(at); d > 0 {
				timer.Reset(d)
				select {
				case <-ctx.Done():
					break churn
				case <-timer.C:
				}
			}
			ch.step(ctx)
		}
		timer.Stop()
	} else {
		select {
		case <-ctx.Done():
		case <-time.After(cfg.Duration):
		}
	}
	stopChurn()
	bg.Wait()
	ch.wg.Wait()
	res.ChurnElapsed = time.Since(churnStart)
	if err := ctx.Err(); err != nil {
		return res, err
	}
	progress("churn over: %d changes in %v; waiting for the consumers", len(ch.ops), res.ChurnElapsed.Round(time.Millisecond))

	// Drain: until every change reached every consumer, or the timeout.
	_ = col.wait(ctx, cfg.Timeout, func() error {
		m := matchOps(ch.ops, infos, col.obs)
		if m.missing > 0 {
			return fmt.Errorf("%d changes not yet observed", m.missing)
		}
		if _, missing := matchRaw(rawPuts, rawConsumers, col.obs); missing > 0 {
			return fmt.Errorf("%d raw puts not yet observed", missing)
		}
		return nil
	})
	res.LoadEnd = benchkit.LoadAverage()
	brokerAfter, metricsAfter := b.figures(ctx)
	res.Broker = brokerAfter
	res.Broker.CPUChurn = brokerAfter.CPU - brokerBefore.CPU
	res.BrokerMetrics = metricsAfter
	if metricsBefore != nil && metricsAfter != nil {
		secs := res.ChurnElapsed.Seconds()
		res.EventsPerSec = (metricsAfter["etcd_debugging_mvcc_events_total"] - metricsBefore["etcd_debugging_mvcc_events_total"]) / secs
		res.PutsPerSec = (metricsAfter["etcd_mvcc_put_total"] + metricsAfter["etcd_mvcc_delete_total"] -
			metricsBefore["etcd_mvcc_put_total"] - metricsBefore["etcd_mvcc_delete_total"]) / secs
	}
	res.RelayMetrics = scrapeAll(ctx, relayMetricsURLs)
	for i, after := range res.RelayMetrics {
		ev := 0.0
		if before := relayBefore[i]; before != nil && after != nil {
			ev = (after["etcd_debugging_mvcc_events_total"] - before["etcd_debugging_mvcc_events_total"]) / res.ChurnElapsed.Seconds()
		}
		res.RelayEventsPerSec = append(res.RelayEventsPerSec, ev)
	}
	if st, err := b.admin.Status(ctx, b.endpoints[0]); err == nil {
		res.DBSize = st.DbSize
	}
	res.Driver = processFigures{CPU: benchkit.SelfCPU(), CPUChurn: benchkit.SelfCPU() - driverCPU, PeakRSS: benchkit.SelfPeakRSS(), CPUKnown: true, Known: true}

	ch.mu.Lock()
	res.Matched = matchOps(ch.ops, infos, col.obs)
	res.Applied, res.Fallbacks = ch.applied, ch.fallbacks
	churnErrs := errors.Join(ch.errs...)
	ch.mu.Unlock()
	res.Raw, res.RawMissing = matchRaw(rawPuts, rawConsumers, col.obs)

	// What each consumer holds now must be what is published.
	for i := range infos {
		res.WantFinal = append(res.WantFinal, want(infos[i].cluster))
	}
	var countErr error
	retry := reconcile.NewBackoff(100*time.Millisecond, time.Second)
	for deadline := time.Now().Add(cfg.Timeout); ; {
		col.mu.Lock()
		col.counts = map[int]Counts{}
		col.mu.Unlock()
		for _, p := range procs {
			p.send("counts")
		}
		countErr = col.wait(ctx, cfg.Timeout, func() error {
			if len(col.counts) < len(infos) {
				return fmt.Errorf("%d of %d consumers counted", len(col.counts), len(infos))
			}
			return nil
		})
		if countErr != nil {
			break
		}
		res.FinalCounts = res.FinalCounts[:0]
		for i := range infos {
			res.FinalCounts = append(res.FinalCounts, col.counts[i])
			if col.counts[i] != res.WantFinal[i] {
				countErr = fmt.Errorf("consumer %d (cluster %s) holds %+v after the churn, want %+v (what is published); %s",
					i, infos[i].cluster, col.counts[i], res.WantFinal[i], clustersDiffering(col.byCluster[i], wantByCluster(infos[i].cluster), ch))
			}
		}
		// A consumer may still be applying the last changes.
		if countErr == nil || time.Now().After(deadline) || !reconcile.Wait(ctx, retry.Next()) {
			break
		}
	}

	// Consumers' own figures, then theirs at exit.
	for i, p := range procs {
		var f processFigures
		if s, err := benchkit.ReadProc(p.cmd.Process.Pid); err == nil {
			f = processFigures{CPU: s.CPU, CPUChurn: s.CPU - consumerCPU[i], RSS: s.RSS, PeakRSS: s.PeakRSS, CPUKnown: true, Known: true}
		}
		res.Consumers = append(res.Consumers, f)
	}
	for i, p := range relays {
		var f processFigures
		if s, err := benchkit.ReadProc(p.cmd.Process.Pid); err == nil {
			f = processFigures{CPU: s.CPU, CPUChurn: s.CPU - relayCPU[i], RSS: s.RSS, PeakRSS: s.PeakRSS, CPUKnown: true, Known: true}
		}
		res.Relays = append(res.Relays, f)
	}
	for _, p := range procs {
		p.stop()
	}
	procs = nil
	for _, p := range relays {
		p.stop()
	}
	relays = nil
	report(out, &cfg, res, col.errors())
	return res, errors.Join(churnErrs, countErr, col.err())
}

// forEach runs f for every cluster, at most n at a time, and returns the
// first error.
func forEach(ctx context.Context, clusters []*simCluster, n int, f func(*simCluster) error) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		slots = make(chan struct{}, n)
	)
	for _, c := range clusters {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return cmp.Or(first, ctx.Err())
		}
		wg.Go(func() {
			defer func() { <-slots }()
			if err := f(c); err != nil {
				mu.Lock()
				first = cmp.Or(first, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return first
}

// removeClusters withdraws the run's clusters from an external broker.
func removeClusters(ctx context.Context, b *brokerConn, clusters []*simCluster, log *slog.Logger) {
	for _, c := range clusters {
		if pub := c.stop(); pub != nil {
			if err := pub.Withdraw(ctx); err != nil {
				log.Error("withdraw", "cluster", c.cfg.Name, "err", err)
			}
		}
		if err := broker.RemoveCluster(ctx, b.admin, c.cfg.Name); err != nil {
			log.Error("remove", "cluster", c.cfg.Name, "err", err)
		}
	}
}

// collector gathers the consumers' events.
type collector struct {
	mu     sync.Mutex
	wake   chan struct{}
	obs    *observations
	synced map[int]event
	counts map[int]Counts
	// byCluster is each consumer's last counts per cluster.
	byCluster map[int]map[clustermesh.ClusterName]Counts
	errs      []string
}

func newCollector() *collector {
	return &collector{wake: make(chan struct{}, 1), obs: newObservations(), synced: map[int]event{}, counts: map[int]Counts{},
		byCluster: map[int]map[clustermesh.ClusterName]Counts{}}
}

func (c *collector) add(consumer int, ev event) {
	c.mu.Lock()
	switch ev.E {
	case evSynced:
		c.synced[consumer] = ev
	case evCounts:
		c.counts[consumer] = *ev.Counts
		c.byCluster[consumer] = ev.ByCluster
	case evError:
		c.errs = append(c.errs, ev.Msg)
	default:
		c.obs.add(consumer, ev)
	}
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// wait calls cond (under the collector's lock) whenever events arrive, and
// at least every 200 ms, until it returns nil; it gives up after timeout.
// An expensive cond (matching every change with every observation) is
// called again only after three times as long as it took has passed
// without the lock: called on every event, it would hold the lock nearly
// always and starve the readers of the consumers' output, so that the
// drain it waits for would never end.
func (c *collector) wait(ctx context.Context, timeout time.Duration, cond func() error) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		start := time.Now()
		c.mu.Lock()
		err := cond()
		c.mu.Unlock()
		if err == nil {
			return nil
		}
		if took := time.Since(start); took > time.Millisecond {
			pause := time.NewTimer(3 * took)
			select {
			case <-ctx.Done():
				pause.Stop()
				return ctx.Err()
			case <-deadline.C:
				pause.Stop()
				return fmt.Errorf("%w after %v", err, timeout)
			case <-pause.C:
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return fmt.Errorf("%w after %v", err, timeout)
		case <-c.wake:
		case <-tick.C:
		}
	}
}

func (c *collector) errors() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.errs)
}

func (c *collector) err() error {
	if errs := c.errors(); len(errs) > 0 {
		return fmt.Errorf("consumers reported %d errors, the first: %s", len(errs), errs[0])
	}
	return nil
}

// consumerProc is one `braid sim consume` process.
type consumerProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	// ready receives a relay process's metrics URL once it serves.
	ready    chan string
	mu       sync.Mutex
	done     chan struct{}
	stopOnce sync.Once
}

func startConsumer(exe string, args, env []string, stderr io.Writer, first, n int, col *collector) (*consumerProc, error) {
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start consumer: %w", err)
	}
	p := &consumerProc{cmd: cmd, stdin: stdin, ready: make(chan string, 1), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var ev event
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				col.add(first, event{E: evError, Msg: fmt.Sprintf("consumer said %q: %v", sc.Text(), err)})
				continue
			}
			switch ev.E {
			case evFinal:
				continue // the driver reads the process's figures from /proc
			case evReady:
				select {
				case p.ready <- ev.Msg:
				default:
				}
				continue
			}
			if ev.C < 0 || ev.C >= n {
				continue
			}
			col.add(first+ev.C, ev)
		}
		_ = cmd.Wait()
	}()
	return p, nil
}

// waitReady waits until a relay process serves and returns its etcd's
// metrics URL.
func (p *consumerProc) waitReady(ctx context.Context, timeout time.Duration) (string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case u := <-p.ready:
		return u, nil
	case <-p.done:
		return "", errors.New("exited before serving")
	case <-t.C:
		return "", fmt.Errorf("not serving after %v", timeout)
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// scrapeAll reads the metrics a run needs from each URL; an entry is nil
// where the scrape failed.
func scrapeAll(ctx context.Context, urls []string) []benchkit.Metrics {
	out := make([]benchkit.Metrics, len(urls))
	for i, u := range urls {
		if m, err := benchkit.Scrape(ctx, u+"/metrics", metricNames...); err == nil {
			out[i] = m
		}
	}
	return out
}

func (p *consumerProc) send(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, _ = io.WriteString(p.stdin, line+"\n")
}

// stop ends the process (end of its input, then an interrupt after 30 s)
// and waits for it.
func (p *consumerProc) stop() {
	p.stopOnce.Do(func() {
		p.mu.Lock()
		p.stdin.Close()
		p.mu.Unlock()
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
}

// clustersDiffering names the clusters whose counts in a consumer's view
// (have) differ from what is published (want), at most five, each with
// the last churn ops applied to it: what a failed final check needs to be
// traced.
func clustersDiffering(have, want map[clustermesh.ClusterName]Counts, ch *churner) string {
	var names []clustermesh.ClusterName
	for n, c := range want {
		if have[n] != c {
			names = append(names, n)
		}
	}
	for n := range have {
		if _, ok := want[n]; !ok {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return "no cluster differs (the totals were read at another time)"
	}
	slices.Sort(names)
	ch.mu.Lock()
	defer ch.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "%d cluster(s) differ:", len(names))
	for _, n := range names[:min(5, len(names))] {
		fmt.Fprintf(&b, " %s holds %+v, want %+v, last changes", n, have[n], want[n])
		var last []string
		for i := len(ch.ops) - 1; i >= 0 && len(last) < 3; i-- {
			if o := ch.ops[i]; o.cluster == n {
				last = append(last, fmt.Sprintf("%s %s at %s", o.kind, o.service, time.Unix(0, o.start).Format("15:04:05.000")))
			}
		}
		fmt.Fprintf(&b, " [%s];", strings.Join(last, ", "))
	}
	return b.String()
}
