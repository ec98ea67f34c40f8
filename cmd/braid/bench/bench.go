package bench

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/broker"
	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/clustermesh/publish"
	"github.com/braidmesh/braid/clustermesh/remote"
	"github.com/braidmesh/braid/clustermesh/sim"
)

// Command returns `braid bench`.
func Command() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure Braid against the raw baseline on this machine",
	}
	cmd.AddCommand(benchPropagationCommand(), benchColdSyncCommand(), benchConsumeCommand())
	return cmd
}

type latencies []time.Duration

func (l latencies) pct(p float64) time.Duration {
	s := slices.Clone(l)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	i := int(p / 100 * float64(len(s)-1))
	return s[i]
}

func (l latencies) String() string {
	return fmt.Sprintf("p50 %v  p90 %v  p99 %v  max %v", l.pct(50).Round(time.Microsecond), l.pct(90).Round(time.Microsecond),
		l.pct(99).Round(time.Microsecond), l.pct(100).Round(time.Microsecond))
}

func benchPropagationCommand() *cobra.Command {
	var n int
	cmd := &cobra.Command{
		Use:   "propagation",
		Short: "Latency from a publisher's change to a remote consumer's event, beside raw etcd put→watch",
		Long: `Runs a broker (embedded etcd, TLS, authentication, fsync on) in this process,
cluster "a" publishing and cluster "b" consuming with their own credentials.
Each round changes one service through the publisher and times it until b's
Watcher delivers the change; beside it, a raw put by a's etcd client timed
until b's raw etcd watch sees it. Rounds alternate so both see the same load.`,
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
	dir, err := os.MkdirTemp("", "braid-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	log := slog.New(slog.DiscardHandler)
	b, stop, err := broker.StartLocal(ctx, dir, log)
	if err != nil {
		return err
	}
	defer stop()
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
	for {
		if cs := w.Snapshot().Clusters["a"]; cs != nil && cs.Synced {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}

	rawKey := clustermesh.KindPrefix(clustermesh.KindServices, "a") + "bench/raw"
	rawEvents := storeB.Client().Watch(ctx, rawKey)
	svc := state.Services[0]
	var braid, raw latencies
	for i := range n + n/10 { // the first tenth warms up
		// Braid: publisher → etcd → remote watcher → subscriber.
		svc.Backends[0].Ports = []clustermesh.BackendPort{{Name: "http", Port: uint16(10000 + i%50000)}}
		start := time.Now()
		if err := pub.Upsert(&svc); err != nil {
			return err
		}
		for got := false; !got; {
			select {
			case ch := <-changes:
				got = ch.Type == remote.Upsert && ch.Key == svc.Key()
			case <-time.After(10 * time.Second):
				return errors.New("no change delivered within 10s")
			}
		}
		if i >= n/10 {
			braid = append(braid, time.Since(start))
		}
		// Raw: put → watch event.
		start = time.Now()
		if _, err := storeA.Client().Put(ctx, rawKey, strconv.Itoa(i)); err != nil {
			return fmt.Errorf("raw put: %w", err)
		}
		select {
		case <-rawEvents:
		case <-time.After(10 * time.Second):
			return errors.New("no raw watch event within 10s")
		}
		if i >= n/10 {
			raw = append(raw, time.Since(start))
		}
	}
	fmt.Fprintf(out, "propagation over %d changes each (broker: embedded etcd, TLS, auth, fsync on)\n", n)
	fmt.Fprintf(out, "  braid publish → remote event: %v\n", braid)
	fmt.Fprintf(out, "  raw etcd put → watch event:   %v\n", raw)
	fmt.Fprintf(out, "  ratio braid/raw: p50 %.2f  p99 %.2f\n", float64(braid.pct(50))/float64(raw.pct(50)), float64(braid.pct(99))/float64(raw.pct(99)))
	return nil
}

func benchColdSyncCommand() *cobra.Command {
	var spec fillSpec
	cmd := &cobra.Command{
		Use:   "cold-sync",
		Short: "Time for a fresh consumer to sync a large mesh, and its peak RSS, beside a raw list",
		Long: `Starts a broker as a separate process, fills it with --clusters clusters'
state (nodes, identities, IP entries and services each), then runs a fresh
consumer as another process (braid bench consume) with a cluster's
credentials: it syncs every cluster with the remote Watcher and reports the
time until all are synced and its peak RSS. The baseline is the same
process reading the whole mesh prefix with raw range reads (10,000 keys a
page) and nothing else.`,
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
	return cmd
}

type fillSpec struct {
	Clusters, Nodes, PodsPerNode, Services int
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
	cport, _ := freePort()
	pport, _ := freePort()
	endpoint := fmt.Sprintf("https://127.0.0.1:%d", cport)
	brokerProc := exec.CommandContext(ctx, self, "broker", "--data-dir", filepath.Join(dir, "broker"), "--listen", endpoint,
		"--listen-peer", fmt.Sprintf("https://127.0.0.1:%d", pport), "--log-level", "error")
	brokerProc.Stderr = os.Stderr
	if err := brokerProc.Start(); err != nil {
		return err
	}
	defer func() {
		_ = brokerProc.Process.Signal(os.Interrupt)
		_ = brokerProc.Wait()
	}()
	var admin *clientv3.Client
	for deadline := time.Now().Add(30 * time.Second); ; {
		cfg, err := broker.LocalAdminConfig(filepath.Join(dir, "broker"), []string{endpoint})
		if err == nil {
			actx, cancel := context.WithTimeout(ctx, 2*time.Second)
			admin, err = broker.AdminClient(actx, cfg)
			cancel()
			if err == nil {
				if _, err = admin.Get(ctx, "x"); err == nil {
					break
				}
				admin.Close()
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("broker not ready: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	defer admin.Close()
	creds, err := broker.AddCluster(ctx, admin, clustermesh.Grant{Name: "consumer", ID: clustermesh.MaxClusterID})
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "broker", "pki", "ca.crt"))
	if err != nil {
		return err
	}
	creds.Endpoints, creds.CACertPEM = []string{endpoint}, caPEM
	joinFile := filepath.Join(dir, "consumer.join.json")
	if err := creds.Save(joinFile); err != nil {
		return err
	}

	start := time.Now()
	keys, bytes, err := fill(ctx, admin, spec)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "cold sync: %d clusters × (%d nodes, %d identities, %d IP entries, %d services) = %d keys, %.1f MiB, filled in %v\n",
		spec.Clusters, spec.Nodes, spec.Services+1, spec.Nodes*spec.PodsPerNode, spec.Services, keys, float64(bytes)/(1<<20), time.Since(start).Round(time.Millisecond))

	for _, mode := range []string{"raw", "watcher"} {
		c := exec.CommandContext(ctx, self, "bench", "consume", "--join", joinFile, "--mode", mode, "--clusters", strconv.Itoa(spec.Clusters))
		c.Stderr = os.Stderr
		res, err := c.Output()
		if err != nil {
			return fmt.Errorf("consumer (%s): %w", mode, err)
		}
		var r consumeResult
		if err := json.Unmarshal(res, &r); err != nil {
			return fmt.Errorf("consumer (%s) said %q: %w", mode, res, err)
		}
		label := "raw range reads of the whole mesh"
		if mode == "watcher" {
			label = "braid remote.Watcher, all synced"
		}
		fmt.Fprintf(out, "  %-36s %8v  peak RSS %5.0f MiB  (%d entries)\n", label+":", r.Elapsed.Round(time.Millisecond), float64(r.PeakRSS)/(1<<20), r.Entries)
	}
	return nil
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
	PeakRSS int64         `json:"peakRSS"`
	Entries int           `json:"entries"`
}

func benchConsumeCommand() *cobra.Command {
	var (
		joinFile string
		mode     string
		clusters int
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
			creds, err := join.LoadCredentials(joinFile)
			if err != nil {
				return err
			}
			start := time.Now()
			store, err := join.Connect(ctx, creds, nil)
			if err != nil {
				return err
			}
			defer store.Close()
			var r consumeResult
			switch mode {
			case "raw":
				kvs, _, err := store.List(ctx, clustermesh.Root)
				if err != nil {
					return err
				}
				r.Entries = len(kvs)
			case "watcher":
				w, err := remote.New(remote.Config{Self: "consumer"}, store, nil, nil)
				if err != nil {
					return err
				}
				wctx, cancel := context.WithCancel(ctx)
				done := make(chan struct{})
				go func() { defer close(done); _ = w.Run(wctx) }()
				for {
					synced := 0
					for _, st := range w.Status() {
						if st.Synced {
							synced++
						}
					}
					if synced == clusters {
						break
					}
					time.Sleep(5 * time.Millisecond)
				}
				r.Elapsed = time.Since(start)
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
				cancel()
				<-done
			default:
				return fmt.Errorf("--mode %q: want raw or watcher", mode)
			}
			if r.Elapsed == 0 {
				r.Elapsed = time.Since(start)
			}
			r.PeakRSS = peakRSS()
			return json.NewEncoder(cmd.OutOrStdout()).Encode(r)
		},
	}
	cmd.Flags().StringVar(&joinFile, "join", "", "join bundle of the consuming cluster")
	cmd.Flags().StringVar(&mode, "mode", "watcher", "raw or watcher")
	cmd.Flags().IntVar(&clusters, "clusters", 0, "clusters to wait for")
	return cmd
}

// peakRSS reads VmHWM from /proc/self/status, in bytes.
func peakRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
