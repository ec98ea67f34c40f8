package bench

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/broker"
	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/clustermesh/publish"
	"github.com/braidmesh/braid/clustermesh/remote"
	"github.com/braidmesh/braid/clustermesh/sim"
	"github.com/braidmesh/braid/cmd/braid/benchkit"
	"github.com/braidmesh/braid/kvstore"
)

// Command returns `braid bench`.
func Command() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure Braid against the raw baseline on this machine",
	}
	cmd.AddCommand(benchPropagationCommand(), benchColdSyncCommand(), benchConsumeCommand(), benchChunksCommand())
	return cmd
}

// latencies is the benchmarks' sample of durations.
type latencies = benchkit.Latencies

func benchPropagationCommand() *cobra.Command {
	var n int
	cmd := &cobra.Command{
		Use:   "propagation",
		Short: "Latency from a publisher's change to a remote consumer's event, beside raw etcd put→watch",
		Long: `Runs a broker (embedded etcd, TLS, authentication, fsync on) in this process,
cluster "a" publishing and cluster "b" consuming with their own credentials.
Each round changes one service's port through the publisher and times it
until b's Watcher delivers that port; beside it, a raw put by a's etcd
client of a key outside the mesh's prefixes, timed until b's raw etcd watch
delivers the value just put. Rounds alternate so both see the same load;
the first tenth warms up.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if n < 1 {
				return fmt.Errorf("--changes %d: must be at least 1", n)
			}
			return benchPropagation(cmd.Context(), cmd.OutOrStdout(), n)
		},
	}
	cmd.Flags().IntVar(&n, "changes", 1000, "number of changes measured on each side")
	return cmd
}

func benchPropagation(ctx context.Context, out io.Writer, n int) error {
	b, dir, stop, err := startLocalBroker(ctx)
	if err != nil {
		return err
	}
	defer stop()
	log := slog.New(slog.DiscardHandler)
	credsA, err := b.AddCluster(ctx, clustermesh.Grant{Name: "a", ID: 1, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}})
	if err != nil {
		return err
	}
	credsB, err := b.AddCluster(ctx, clustermesh.Grant{Name: "b", ID: 2})
	if err != nil {
		return err
	}
	storeA, err := join.Connect(ctx, credsA, log)
	if err != nil {
		return err
	}
	defer storeA.Close()
	storeB, err := join.Connect(ctx, credsB, log)
	if err != nil {
		return err
	}
	defer storeB.Close()

	cfgA := clustermesh.ClusterConfig{Name: "a", ID: 1, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}}
	pub, err := publish.New(publish.Config{Cluster: cfgA}, storeA, log, nil)
	if err != nil {
		return err
	}
	state, err := sim.Generate(cfgA, 10, 10, []string{"web"})
	if err != nil {
		return err
	}
	recs, err := state.Records(&cfgA)
	if err != nil {
		return err
	}
	for kind, rs := range recs {
		if err := pub.Replace(kind, rs); err != nil {
			return err
		}
	}
	w, err := remote.New(remote.Config{Self: "b"}, storeB, log, nil)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	changes := w.Subscribe(ctx)
	wg.Add(2)
	go func() { defer wg.Done(); _ = pub.Run(ctx) }()
	go func() { defer wg.Done(); _ = w.Run(ctx) }()
	if err := waitSynced(ctx, changes, "a", 30*time.Second); err != nil {
		return err
	}

	// The raw baseline's key lies outside every prefix a Watcher decodes
	// (outside clustermesh.Root), so its events never reach the Watcher;
	// a may write it and b read it, over the same TLS and authentication.
	admin, err := adminClient(ctx, dir, b.Endpoints())
	if err != nil {
		return err
	}
	defer admin.Close()
	const rawKey = "braid-bench/raw"
	if _, err := admin.RoleGrantPermission(ctx, broker.ClusterUser("a"), rawKey, "", clientv3.PermissionType(clientv3.PermReadWrite)); err != nil {
		return fmt.Errorf("grant a the raw key: %w", err)
	}
	if _, err := admin.RoleGrantPermission(ctx, broker.ClusterUser("b"), rawKey, "", clientv3.PermissionType(clientv3.PermRead)); err != nil {
		return fmt.Errorf("grant b the raw key: %w", err)
	}
	rawEvents := storeB.Client().Watch(ctx, rawKey)
	svc := state.Services[0]
	var braid, raw latencies
	const wait = 10 * time.Second
	for i := range n + n/10 { // the first tenth warms up
		// Braid: publisher → etcd → remote watcher → subscriber. The round
		// ends only on the port just published: no earlier round's event
		// (nor the initial sync) can end it.
		port := uint16(10000 + i%50000)
		svc.Backends[0].Ports = []clustermesh.BackendPort{{Name: "http", Port: port}}
		start := time.Now()
		if err := pub.Upsert(&svc); err != nil {
			return err
		}
		timeout := time.NewTimer(wait)
		for got := false; !got; {
			select {
			case ch := <-changes:
				got = ch.Type == remote.Upsert && ch.Key == svc.Key() && servicePort(ch.Record) == port
			case <-timeout.C:
				return fmt.Errorf("round %d: port %d not delivered within %v", i, port, wait)
			}
		}
		timeout.Stop()
		if i >= n/10 {
			braid = append(braid, time.Since(start))
		}
		// Raw: put → watch event carrying the value just put.
		took, err := timeRawPut(ctx, storeA.Client(), rawEvents, rawKey, strconv.Itoa(i), wait)
		if err != nil {
			return fmt.Errorf("round %d: %w", i, err)
		}
		if i >= n/10 {
			raw = append(raw, took)
		}
	}
	fmt.Fprintf(out, "propagation over %d changes each (broker: embedded etcd, TLS, auth, fsync on)\n", n)
	fmt.Fprintf(out, "  braid publish → remote event: %v\n", braid)
	fmt.Fprintf(out, "  raw etcd put → watch event:   %v\n", raw)
	fmt.Fprintf(out, "  ratio braid/raw: p50 %.2f  p99 %.2f\n", float64(braid.Pct(50))/float64(raw.Pct(50)), float64(braid.Pct(99))/float64(raw.Pct(99)))
	return nil
}

func benchColdSyncCommand() *cobra.Command {
	var spec fillSpec
	cmd := &cobra.Command{
		Use:   "cold-sync",
		Short: "Time for a fresh consumer to sync a large mesh, and its peak RSS, beside a raw list",
		Long: `Starts a broker as a separate process, fills it with --clusters clusters'
state (nodes, identities, IP entries and services each), then runs fresh
consumer processes (braid bench consume) with a cluster's credentials. The
Watcher consumer syncs every cluster and reports the time until all are
synced and its peak RSS; the raw consumer reads the same keys with range
reads and nothing else, with the Watcher's concurrency (the cluster list,
then 8 clusters at a time, each its sync markers and its kinds at once).
Each run starts one of each, raw first on odd runs (ABBA); every count is
checked against what was loaded.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Cluster i gets ID i and pod CIDR 10.i-1.0.0/16; the consumer
			// takes the last ID.
			if spec.Clusters < 1 || spec.Clusters > 255 {
				return fmt.Errorf("--clusters %d: must be in 1..255", spec.Clusters)
			}
			for _, f := range []struct {
				name string
				v    int
			}{{"--nodes", spec.Nodes}, {"--pods-per-node", spec.PodsPerNode}, {"--services", spec.Services}} {
				if f.v < 1 || f.v > 1_000_000 {
					return fmt.Errorf("%s %d: must be in 1..1000000", f.name, f.v)
				}
			}
			return benchColdSync(cmd.Context(), cmd.OutOrStdout(), spec)
		},
	}
	f := cmd.Flags()
	f.IntVar(&spec.Clusters, "clusters", 250, "clusters in the mesh")
	f.IntVar(&spec.Nodes, "nodes", 100, "nodes per cluster")
	f.IntVar(&spec.PodsPerNode, "pods-per-node", 10, "pod IP entries per node")
	f.IntVar(&spec.Services, "services", 100, "global services per cluster (one identity each, plus one)")
	f.IntVar(&spec.Runs, "runs", 2, "consumer runs of each kind; the order alternates (raw first on odd runs)")
	f.DurationVar(&spec.Timeout, "timeout", 5*time.Minute, "give up on a fill or a consumer after this long")
	return cmd
}

type fillSpec struct {
	Clusters, Nodes, PodsPerNode, Services int
	Runs                                   int
	Timeout                                time.Duration
}

func benchColdSync(ctx context.Context, out io.Writer, spec fillSpec) error {
	if spec.Clusters > 250 {
		return errors.New("--clusters: at most 250 (one /16 of 10.0.0.0/8 each)")
	}
	dir, err := os.MkdirTemp("", "braid-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	self, err := os.Executable()
	if err != nil {
		return err
	}
	bp, err := benchkit.StartBroker(ctx, self, filepath.Join(dir, "broker"), nil, os.Stderr)
	if err != nil {
		return err
	}
	defer bp.Close()
	admin := bp.Admin
	creds, err := bp.AddCluster(ctx, clustermesh.Grant{Name: "consumer", ID: clustermesh.MaxClusterID})
	if err != nil {
		return err
	}
	joinFile := filepath.Join(dir, "consumer.join.json")
	if err := creds.Save(joinFile); err != nil {
		return err
	}

	start := time.Now()
	fctx, cancel := context.WithTimeout(ctx, spec.Timeout)
	keys, bytes, err := fill(fctx, admin, spec)
	cancel()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "cold sync: %d clusters × (%d nodes, %d identities, %d IP entries, %d services) = %d keys, %.1f MiB, filled in %v\n",
		spec.Clusters, spec.Nodes, spec.Services+1, spec.Nodes*spec.PodsPerNode, spec.Services, keys, float64(bytes)/(1<<20), time.Since(start).Round(time.Millisecond))

	// Expected counts: raw reads every key loaded and the consumer's own
	// grant (written by AddCluster); the Watcher holds every entry but the
	// cluster configs, grants and sync markers.
	want := map[string]int{"raw": keys + 1, "watcher": keys - spec.Clusters*(2+len(clustermesh.Kinds))}
	// Fresh consumer processes, in ABBA order over pairs of runs so that
	// drift on a shared machine falls on both sides alike.
	for run := range spec.Runs {
		order := []string{"raw", "watcher"}
		if run%2 == 1 {
			order = []string{"watcher", "raw"}
		}
		for _, mode := range order {
			cctx, cancel := context.WithTimeout(ctx, spec.Timeout+30*time.Second)
			c := exec.CommandContext(cctx, self, "bench", "consume", "--join", joinFile, "--mode", mode,
				"--clusters", strconv.Itoa(spec.Clusters), "--timeout", spec.Timeout.String())
			c.Stderr = os.Stderr
			res, err := c.Output()
			cancel()
			if err != nil {
				return fmt.Errorf("consumer (%s): %w", mode, err)
			}
			var r consumeResult
			if err := json.Unmarshal(res, &r); err != nil {
				return fmt.Errorf("consumer (%s) said %q: %w", mode, res, err)
			}
			if r.Entries != want[mode] {
				return fmt.Errorf("consumer (%s) read %d entries, want %d (what was loaded)", mode, r.Entries, want[mode])
			}
			label := "raw range reads, 8 clusters at a time"
			if mode == "watcher" {
				label = "braid remote.Watcher, all synced"
			}
			fmt.Fprintf(out, "  run %d %-38s %8v  CPU %8v  peak RSS %5.0f MiB  (%d entries)\n", run+1, label+":", r.Elapsed.Round(time.Millisecond), r.CPU.Round(time.Millisecond), float64(r.PeakRSS)/(1<<20), r.Entries)
		}
	}
	return nil
}

// waitSynced waits until changes reports cluster synced, at most d.
func waitSynced(ctx context.Context, changes <-chan remote.Change, cluster clustermesh.ClusterName, d time.Duration) error {
	timeout := time.NewTimer(d)
	defer timeout.Stop()
	for {
		select {
		case ch, ok := <-changes:
			if !ok {
				return ctx.Err()
			}
			if ch.Type == remote.ClusterSynced && ch.Cluster == cluster {
				return nil
			}
		case <-timeout.C:
			return fmt.Errorf("cluster %s not synced within %v", cluster, d)
		}
	}
}

// servicePort returns the first backend's first port of a service record.
func servicePort(rec any) uint16 {
	var s clustermesh.Service
	switch r := rec.(type) {
	case clustermesh.Service:
		s = r
	case *clustermesh.Service:
		s = *r
	default:
		return 0
	}
	if len(s.Backends) == 0 || len(s.Backends[0].Ports) == 0 {
		return 0
	}
	return s.Backends[0].Ports[0].Port
}

// startLocalBroker starts an in-process broker, discarding its log, in a
// fresh temporary directory; stop stops it and removes the directory.
func startLocalBroker(ctx context.Context) (b *broker.Broker, dir string, stop func(), err error) {
	dir, err = os.MkdirTemp("", "braid-bench-")
	if err != nil {
		return nil, "", nil, err
	}
	b, stopBroker, err := broker.StartLocal(ctx, dir, slog.New(slog.DiscardHandler))
	if err != nil {
		os.RemoveAll(dir)
		return nil, "", nil, err
	}
	return b, dir, func() { stopBroker(); os.RemoveAll(dir) }, nil
}

// adminClient connects to the broker on dir as root.
func adminClient(ctx context.Context, dir string, endpoints []string) (*clientv3.Client, error) {
	cfg, err := broker.LocalAdminConfig(dir, endpoints)
	if err != nil {
		return nil, err
	}
	return broker.AdminClient(ctx, cfg)
}

// fill writes the mesh state with root credentials, 128 operations a
// transaction (etcd's default limit), 16 transactions at a time.
func fill(ctx context.Context, c *clientv3.Client, spec fillSpec) (int, int, error) {
	type kv struct{ k, v string }
	work := make(chan []kv, 64)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for batch := range work {
				ops := make([]clientv3.Op, len(batch))
				for i, e := range batch {
					ops[i] = clientv3.OpPut(e.k, e.v)
				}
				if _, err := c.Txn(ctx).Then(ops...).Commit(); err != nil {
					mu.Lock()
					first = cmp.Or(first, err)
					mu.Unlock()
				}
			}
		}()
	}
	services := make([]string, spec.Services)
	for i := range services {
		services[i] = fmt.Sprintf("svc-%d", i)
	}
	keys, size := 0, 0
	var batch []kv
	add := func(k string, v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		batch = append(batch, kv{k, string(b)})
		keys++
		size += len(k) + len(b)
		if len(batch) == 128 {
			work <- batch
			batch = nil
		}
		return nil
	}
	var err error
	for i := range spec.Clusters {
		cfg := clustermesh.ClusterConfig{Name: clustermesh.ClusterName(fmt.Sprintf("cluster-%d", i+1)), ID: clustermesh.ClusterID(i + 1),
			PodCIDRs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16)}}
		var st sim.State
		if st, err = sim.Generate(cfg, spec.Nodes, spec.PodsPerNode, services); err != nil {
			break
		}
		for j := range st.Nodes {
			err = errors.Join(err, add(st.Nodes[j].Key(), &st.Nodes[j]))
		}
		for j := range st.Identities {
			err = errors.Join(err, add(st.Identities[j].Key(), &st.Identities[j]))
		}
		for j := range st.IPs {
			err = errors.Join(err, add(st.IPs[j].Key(), &st.IPs[j]))
		}
		for j := range st.Services {
			err = errors.Join(err, add(st.Services[j].Key(), &st.Services[j]))
		}
		counts := map[clustermesh.Kind]int{clustermesh.KindNodes: len(st.Nodes), clustermesh.KindIdentities: len(st.Identities),
			clustermesh.KindIPs: len(st.IPs), clustermesh.KindServices: len(st.Services)}
		for _, k := range clustermesh.Kinds {
			err = errors.Join(err, add(clustermesh.SyncedKey(cfg.Name, k), clustermesh.SyncMarker{Entries: counts[k]}))
		}
		err = errors.Join(err, add(cfg.Key(), &cfg))
		g := clustermesh.Grant{Name: cfg.Name, ID: cfg.ID, PodCIDRs: cfg.PodCIDRs}
		err = errors.Join(err, add(g.Key(), &g))
	}
	if len(batch) > 0 {
		work <- batch
	}
	close(work)
	wg.Wait()
	return keys, size, errors.Join(err, first)
}

type consumeResult struct {
	Elapsed time.Duration `json:"elapsed"`
	// CPU is the process's user and system time: on a shared machine the
	// wall time follows the share of the cores the process got, its CPU
	// time much less so.
	CPU     time.Duration `json:"cpu"`
	PeakRSS int64         `json:"peakRSS"`
	Entries int           `json:"entries"`
}

func benchConsumeCommand() *cobra.Command {
	var (
		joinFile string
		mode     string
		clusters int
		timeout  time.Duration
	)
	cmd := &cobra.Command{
		Use:    "consume",
		Short:  "One cold-sync consumer (run by bench cold-sync); prints JSON",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Measure with the agent's runtime setting (cmd/braid-agent:
			// GOGC 50 unless the environment says otherwise).
			if os.Getenv("GOGC") == "" {
				debug.SetGCPercent(50)
			}
			ctx := cmd.Context()
			creds, err := join.LoadCredentials(joinFile, slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil)))
			if err != nil {
				return err
			}
			stop, err := benchkit.StartCPUProfile(os.Getenv("BRAID_CPUPROFILE"))
			if err != nil {
				return err
			}
			defer stop()
			start := time.Now()
			store, err := join.Connect(ctx, creds, nil)
			if err != nil {
				return err
			}
			defer store.Close()
			var r consumeResult
			switch mode {
			case "raw":
				if r.Entries, err = rawRead(ctx, store, remote.DefaultConcurrentSyncs, timeout); err != nil {
					return err
				}
			case "watcher":
				w, err := remote.New(remote.Config{Self: "consumer"}, store, nil, nil)
				if err != nil {
					return err
				}
				wctx, cancel := context.WithCancel(ctx)
				changes := w.Subscribe(wctx)
				done := make(chan struct{})
				go func() { defer close(done); _ = w.Run(wctx) }()
				err = waitAllSynced(changes, clusters, timeout)
				r.Elapsed = time.Since(start)
				if err == nil {
					if f := os.Getenv("BRAID_HEAPPROFILE"); f != "" {
						pf, _ := os.Create(f)
						_ = pprof.WriteHeapProfile(pf)
						pf.Close()
					}
					for _, st := range w.Status() {
						for _, n := range st.Entries {
							r.Entries += n
						}
					}
				}
				cancel()
				<-done
				if err != nil {
					return err
				}
			default:
				return fmt.Errorf("--mode %q: want raw or watcher", mode)
			}
			if r.Elapsed == 0 {
				r.Elapsed = time.Since(start)
			}
			r.PeakRSS = benchkit.SelfPeakRSS()
			r.CPU = benchkit.SelfCPU()
			return json.NewEncoder(cmd.OutOrStdout()).Encode(r)
		},
	}
	cmd.Flags().StringVar(&joinFile, "join", "", "join bundle of the consuming cluster")
	cmd.Flags().StringVar(&mode, "mode", "watcher", "raw or watcher")
	cmd.Flags().IntVar(&clusters, "clusters", 0, "clusters to wait for")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "give up after this long")
	return cmd
}

// rawRead reads the mesh as the Watcher does, without decoding: the
// cluster configs and the grants, then per cluster its sync markers and each kind's
// entries (the kinds at once), with at most concurrency clusters reading at
// a time, through the same kvstore List. It returns the keys read.
func rawRead(ctx context.Context, store kvstore.Store, concurrency int, timeout time.Duration) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	configs, _, err := store.List(ctx, clustermesh.ClustersPrefix)
	if err != nil {
		return 0, fmt.Errorf("raw read: %w", err)
	}
	grants, _, err := store.List(ctx, clustermesh.GrantsPrefix)
	if err != nil {
		return 0, fmt.Errorf("raw read: %w", err)
	}
	var (
		total atomic.Int64
		slots = make(chan struct{}, concurrency)
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	total.Add(int64(len(configs) + len(grants)))
	list := func(prefix string) {
		kvs, _, err := store.List(ctx, prefix)
		if err != nil {
			mu.Lock()
			first = cmp.Or(first, fmt.Errorf("raw read %s: %w", prefix, err))
			mu.Unlock()
			return
		}
		total.Add(int64(len(kvs)))
	}
	for _, kv := range configs {
		pk, err := clustermesh.ParseKey(kv.Key)
		if err != nil {
			return 0, fmt.Errorf("raw read: %w", err)
		}
		wg.Add(1)
		slots <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			list(clustermesh.SyncedPrefix(pk.Cluster))
			var kinds sync.WaitGroup
			for _, k := range clustermesh.Kinds {
				kinds.Go(func() { list(clustermesh.KindPrefix(k, pk.Cluster)) })
			}
			kinds.Wait()
		}()
	}
	wg.Wait()
	return int(total.Load()), first
}

// waitAllSynced waits until changes reports n clusters synced, at most d.
func waitAllSynced(changes <-chan remote.Change, n int, d time.Duration) error {
	timeout := time.NewTimer(d)
	defer timeout.Stop()
	synced := map[clustermesh.ClusterName]bool{}
	for len(synced) < n {
		select {
		case ch, ok := <-changes:
			if !ok {
				return errors.New("watcher stopped")
			}
			if ch.Type == remote.ClusterSynced {
				synced[ch.Cluster] = true
			}
		case <-timeout.C:
			return fmt.Errorf("%d of %d clusters synced within %v", len(synced), n, d)
		}
	}
	return nil
}

// timeRawPut puts val at key and returns the time until events (a watch
// on key) delivers it: the raw etcd floor beside each benchmark's figure.
func timeRawPut(ctx context.Context, cli *clientv3.Client, events clientv3.WatchChan, key, val string, wait time.Duration) (time.Duration, error) {
	start := time.Now()
	if _, err := cli.Put(ctx, key, val); err != nil {
		return 0, fmt.Errorf("raw put: %w", err)
	}
	timeout := time.NewTimer(wait)
	defer timeout.Stop()
	for {
		select {
		case resp := <-events:
			if err := resp.Err(); err != nil {
				return 0, fmt.Errorf("raw watch: %w", err)
			}
			for _, ev := range resp.Events {
				if string(ev.Kv.Value) == val {
					return time.Since(start), nil
				}
			}
		case <-timeout.C:
			return 0, fmt.Errorf("raw value %s not delivered within %v", val, wait)
		}
	}
}
