package relay_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/clustermesh/relay"
	"github.com/braidmesh/braid/clustermesh/remote"
	"github.com/braidmesh/braid/internal/etcdlab"
	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/kvstore/etcd"
)

// BenchmarkBrokerWatchers measures what N consumers (agents) of a mesh of
// benchClusters clusters cost the broker: its watch streams and watchers,
// read from the broker etcd's own metrics once every consumer is synced,
// with each consumer watching the broker itself (direct, the baseline)
// and through one relay (relayed).
//
//	go test -run '^$' -bench BrokerWatchers -benchtime 1x ./clustermesh/relay/
func BenchmarkBrokerWatchers(b *testing.B) {
	for _, n := range []int{10, 50, 100} {
		for _, mode := range []string{"direct", "relayed"} {
			b.Run(fmt.Sprintf("consumers=%d/%s", n, mode), func(b *testing.B) {
				for b.Loop() {
					benchWatchers(b, n, mode == "relayed")
				}
			})
		}
	}
}

const benchClusters = 5

func benchWatchers(b *testing.B, consumers int, relayed bool) {
	ctx, cancel := context.WithCancel(b.Context())
	defer cancel()
	// The broker is its own process: etcd's metrics are process-wide, and
	// the relay's etcd runs in this one.
	endpoint, metricsURL, pid := startBroker(b)
	up, err := etcd.New(ctx, etcd.Config{Endpoints: []string{endpoint}})
	if err != nil {
		b.Fatal(err)
	}
	defer up.Close()
	for i := range benchClusters {
		publishBench(b, ctx, up, cluster(fmt.Sprintf("c%d", i), i+1), 20)
	}
	dial := func() kvstore.Store {
		s, err := etcd.New(ctx, etcd.Config{Endpoints: []string{endpoint}})
		if err != nil {
			b.Fatal(err)
		}
		return s
	}
	if relayed {
		w, err := remote.New(remote.Config{}, up, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		r, err := relay.New(relay.Config{Cluster: "local", Upstream: w, DataDir: b.TempDir(),
			Listen:            []string{fmt.Sprintf("https://127.0.0.1:%d", testenv.FreePort(b))},
			HeartbeatInterval: 10 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond})
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()
		defer func() { cancel(); <-done }()
		select {
		case <-r.Ready():
		case err := <-done:
			b.Fatal(err)
		}
		creds := r.AgentCredentials()
		dial = func() kvstore.Store {
			s, err := join.Connect(ctx, creds, nil)
			if err != nil {
				b.Fatal(err)
			}
			return s
		}
	}
	cpu0 := procCPU(b, pid)
	start := time.Now()
	var ws []*remote.Watcher
	for range consumers {
		s := dial()
		defer s.Close()
		w, err := remote.New(remote.Config{}, s, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan struct{})
		go func() { defer close(done); _ = w.Run(ctx) }()
		defer func() { cancel(); <-done }()
		ws = append(ws, w)
	}
	testenv.Eventually(b, 2*time.Minute, func() error {
		for _, w := range ws {
			snap := w.Snapshot()
			for i := range benchClusters {
				if cs := snap.Clusters[clustermesh.ClusterName(fmt.Sprintf("c%d", i))]; cs == nil || !cs.Synced {
					return fmt.Errorf("consumer not synced with c%d", i)
				}
			}
		}
		return nil
	})
	syncTime := time.Since(start)
	cpu := procCPU(b, pid) - cpu0
	m, err := scrape(metricsURL + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(cpu.Seconds(), "broker-cpu-s")
	b.ReportMetric(syncTime.Seconds(), "sync-s")
	b.ReportMetric(m["etcd_debugging_mvcc_watch_stream_total"], "broker-watch-streams")
	b.ReportMetric(m["etcd_debugging_mvcc_watcher_total"], "broker-watchers")
	b.ReportMetric(m["grpc_server_started_total"], "broker-grpc-calls")
}

// startBroker runs etcd (internal/etcdmain) as a process of its own and
// returns its client URL, metrics URL and process ID.
func startBroker(b *testing.B) (endpoint, metrics string, pid int) {
	bin := etcdlab.Binary(b)
	ports := testenv.FreePorts(b, 3)
	client := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	peer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	metrics = fmt.Sprintf("http://127.0.0.1:%d", ports[2])
	cmd := exec.Command(bin, "--name", "broker", "--data-dir", b.TempDir(),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "broker="+peer, "--listen-metrics-urls", metrics, "--log-level", "error")
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	b.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
	testenv.Eventually(b, time.Minute, func() error {
		resp, err := http.Get(metrics + "/health")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("broker health: %s", resp.Status)
		}
		return nil
	})
	return client, metrics, cmd.Process.Pid
}

// procCPU is the CPU time (user + system) process pid has used.
func procCPU(b *testing.B, pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name (in parentheses, which may hold
	// spaces): utime and stime are the 12th and 13th.
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// publishBench grants c and publishes n entries of every kind.
func publishBench(b *testing.B, ctx context.Context, s kvstore.Store, c clustermesh.ClusterConfig, n int) {
	putGrant(b, s, c)
	p, err := newPublisher(c, s)
	if err != nil {
		b.Fatal(err)
	}
	for kind, recs := range records(c, n) {
		if err := p.Replace(kind, recs); err != nil {
			b.Fatal(err)
		}
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Run(ctx) }()
	b.Cleanup(func() { <-done })
}

// scrape sums each metric family's samples on a Prometheus text page.
func scrape(u string) (map[string]float64, error) {
	resp, err := http.Get(u)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, rest, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if i := strings.IndexByte(name, '{'); i >= 0 {
			name = name[:i]
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
		if err == nil {
			out[name] += v
		}
	}
	return out, sc.Err()
}
