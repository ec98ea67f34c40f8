package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/broker"
	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/clustermesh/publish"
	"github.com/braidmesh/braid/clustermesh/sim"
	"github.com/braidmesh/braid/cmd/braid/benchkit"
	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/kvstore/etcd"
)

// The sim shape of issue #15's acceptance: 20 nodes, 200 endpoints.
const (
	scaleNodes     = 20
	scaleEndpoints = 200
)

// scaleBroker is a broker child process (TLS, authentication, fsync on)
// holding some clusters, each published by its own publisher.
type scaleBroker struct {
	bp   *benchkit.BrokerProcess
	cpu  func() time.Duration
	stop []func()
}

func startScaleBroker(b *testing.B, ctx context.Context) *scaleBroker {
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	// Not b.TempDir(): a sub-benchmark's name holds "=", which etcd's
	// token option (key=value pairs naming the broker's key files) refuses.
	dir, err := os.MkdirTemp("", "scale-broker-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	bp, err := benchkit.StartBroker(ctx, exe, dir, []string{runAsBraid + "=1"}, os.Stderr)
	if err != nil {
		b.Fatal(err)
	}
	s := &scaleBroker{bp: bp}
	s.cpu = func() time.Duration {
		st, err := benchkit.ReadProc(bp.PID())
		if err != nil {
			b.Fatal(err)
		}
		return st.CPU
	}
	b.Cleanup(func() {
		for _, stop := range slices.Backward(s.stop) {
			stop()
		}
		bp.Close()
	})
	return s
}

// scaleCluster is cluster id's config in the sim's layout (cmd/braid/meshsim).
func scaleCluster(id int) clustermesh.ClusterConfig {
	block := 1 << bits.Len(uint(scaleNodes-1))
	first := uint32(10)<<24 | uint32((id-1)*block)<<8
	cidr := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(first >> 24), byte(first >> 16), byte(first >> 8), 0}), 24-(bits.Len(uint(block))-1))
	return clustermesh.ClusterConfig{Name: clustermesh.ClusterName(fmt.Sprintf("sim-%d", id)), ID: clustermesh.ClusterID(id), PodCIDRs: []netip.Prefix{cidr}}
}

// grant adds clusters first..last to the broker and returns their
// credentials.
func (s *scaleBroker) grant(b *testing.B, ctx context.Context, first, last int) []join.Credentials {
	var out []join.Credentials
	for id := first; id <= last; id++ {
		cfg := scaleCluster(id)
		c, err := broker.AddCluster(ctx, s.bp.Admin, cfg.Grant())
		if err != nil {
			b.Fatal(err)
		}
		c.Endpoints, c.CACertPEM = []string{s.bp.Endpoint}, s.bp.CACertPEM
		out = append(out, c)
	}
	return out
}

// publishCluster publishes cluster id's sim state with the cluster's own
// credentials and returns once every kind is written, with how long that
// took and the publisher's stop.
func publishCluster(b *testing.B, ctx context.Context, id int, store *etcd.Store, keysPerLease int) (time.Duration, func(withdraw bool)) {
	cfg := scaleCluster(id)
	services := make([]string, scaleEndpoints/scaleNodes)
	for i := range services {
		services[i] = fmt.Sprintf("svc-%d", i)
	}
	st, err := sim.Generate(cfg, scaleNodes, len(services)+1, services)
	if err != nil {
		b.Fatal(err)
	}
	recs, err := st.Records(&cfg)
	if err != nil {
		b.Fatal(err)
	}
	p, err := publish.New(publish.Config{Cluster: cfg, LeaseTTL: time.Minute, KeysPerLease: keysPerLease}, store, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	for _, kind := range []clustermesh.Kind{clustermesh.KindNodes, clustermesh.KindIdentities, clustermesh.KindIPs, clustermesh.KindServices} {
		if err := p.Replace(kind, recs[kind]); err != nil {
			b.Fatal(err)
		}
	}
	pctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- p.Run(pctx) }()
	for tick := time.NewTicker(5 * time.Millisecond); ; {
		if allSynced(p.Status()) {
			tick.Stop()
			break
		}
		select {
		case err := <-done:
			b.Fatalf("publisher of %s stopped: %v", cfg.Name, err)
		case <-tick.C:
		}
	}
	took := time.Since(start)
	return took, func(withdraw bool) {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
		if withdraw {
			if err := p.Withdraw(ctx); err != nil {
				b.Error(err)
			}
		}
	}
}

// allSynced says every kind is written (services in both layouts).
func allSynced(st clustermesh.PublishStatus) bool {
	for _, k := range clustermesh.Kinds {
		if !st.Synced[k] {
			return false
		}
	}
	return true
}

// rewriteNodes writes cluster's node keys n times in all, one after the
// other, each with its value and lease unchanged (as a churn write of the
// publisher does), and returns how long that took.
func rewriteNodes(b *testing.B, ctx context.Context, store *etcd.Store, cluster clustermesh.ClusterName, n int) time.Duration {
	kvs, _, err := store.List(ctx, clustermesh.KindPrefix(clustermesh.KindNodes, cluster))
	if err != nil || len(kvs) == 0 {
		b.Fatalf("list %s's nodes: %d, %v", cluster, len(kvs), err)
	}
	start := time.Now()
	for i := range n {
		kv := kvs[i%len(kvs)]
		if err := store.Put(ctx, kv.Key, kv.Value, kv.Lease); err != nil {
			b.Fatal(err)
		}
	}
	return time.Since(start)
}

// leasesOf counts the leases cluster's keys are bound to, and the most
// keys on one.
func (s *scaleBroker) leasesOf(b *testing.B, ctx context.Context, cluster clustermesh.ClusterName) (leases, maxKeys int) {
	by := map[int64]int{}
	for _, p := range append(clustermesh.OwnedPrefixes(cluster), clustermesh.ClusterKey(cluster)) {
		resp, err := s.bp.Admin.Get(ctx, p, clientv3.WithPrefix())
		if err != nil {
			b.Fatal(err)
		}
		for _, kv := range resp.Kvs {
			by[kv.Lease]++
		}
	}
	for id, n := range by {
		if id == 0 {
			b.Fatalf("%d keys of %s bound to no lease", n, cluster)
		}
		maxKeys = max(maxKeys, n)
	}
	return len(by), maxKeys
}

// BenchmarkPublishOneCluster publishes one cluster of the sim shape (20
// nodes × 200 endpoints, 287 keys) into a broker (a child process: TLS,
// authentication, fsync on) already holding N others, each with its own
// credentials, with every key on one lease (the baseline: KeysPerLease
// unbounded) and with the publisher's default bound, alternately, and
// reports the broker's CPU time (from /proc) and the wall time until every
// kind is written, per cluster.
//
//	go test -run '^$' -bench PublishOneCluster -benchtime 1x -timeout 30m ./cmd/braid/
func BenchmarkPublishOneCluster(b *testing.B) {
	const (
		rounds      = 4   // measured clusters per mode
		churnWrites = 400 // writes to a published cluster's nodes, per cluster
	)
	for _, others := range []int{0, 100} {
		b.Run(fmt.Sprintf("others=%d", others), func(b *testing.B) {
			for b.Loop() {
				ctx := b.Context()
				s := startScaleBroker(b, ctx)
				// Every grant first: a change to users or roles makes
				// every password client authenticate again.
				creds := s.grant(b, ctx, 1, others+2*rounds)
				var mu sync.Mutex
				sem := make(chan struct{}, 16)
				var wg sync.WaitGroup
				for i := range others {
					sem <- struct{}{}
					wg.Add(1)
					go func() {
						defer func() { <-sem; wg.Done() }()
						store, err := join.Connect(ctx, creds[i], nil)
						if err != nil {
							b.Error(err)
							return
						}
						_, stop := publishCluster(b, ctx, i+1, store, 0)
						mu.Lock()
						s.stop = append(s.stop, func() { stop(false); store.Close() })
						mu.Unlock()
					}()
				}
				wg.Wait()
				if b.Failed() {
					return
				}
				type mode struct {
					name         string
					keysPerLease int
					cpu, wall    time.Duration
					leases, most int
					// churn: the writes of a cluster already published
					churnCPU, churnWall time.Duration
				}
				modes := []*mode{{name: "one-lease", keysPerLease: math.MaxInt}, {name: "bounded", keysPerLease: 0}}
				id := others
				for r := range rounds {
					for k := range modes {
						m := modes[(k+r)%2] // alternate which goes first
						id++
						store, err := join.Connect(ctx, creds[id-1], nil)
						if err != nil {
							b.Fatal(err)
						}
						cpu0 := s.cpu()
						wall, stop := publishCluster(b, ctx, id, store, m.keysPerLease)
						m.cpu += s.cpu() - cpu0
						m.wall += wall
						m.leases, m.most = s.leasesOf(b, ctx, scaleCluster(id).Name)
						cpu0 = s.cpu()
						m.churnWall += rewriteNodes(b, ctx, store, scaleCluster(id).Name, churnWrites)
						m.churnCPU += s.cpu() - cpu0
						stop(true) // revoke its leases: no expiry during later rounds
						store.Close()
					}
				}
				for _, m := range modes {
					b.ReportMetric(m.cpu.Seconds()/rounds*1000, m.name+"-broker-cpu-ms/cluster")
					b.ReportMetric(m.wall.Seconds()/rounds*1000, m.name+"-wall-ms/cluster")
					b.ReportMetric(m.churnCPU.Seconds()/rounds/churnWrites*1e6, m.name+"-write-broker-cpu-µs")
					b.ReportMetric(m.churnWall.Seconds()/rounds/churnWrites*1e6, m.name+"-write-wall-µs")
					b.ReportMetric(float64(m.leases), m.name+"-leases")
					b.ReportMetric(float64(m.most), m.name+"-max-keys/lease")
				}
			}
		})
	}
}

// BenchmarkAddCluster measures broker.AddCluster (a grant, a role with its
// 9 permissions, a user) on a broker child process (TLS, authentication,
// fsync on) already holding N clusters, beside a root Put of one small key
// at the same moment (the raft and fsync floor every write pays). etcd
// rebuilds every user's permission cache on each permission granted and
// on each user added or given a role, so AddCluster grows with N.
//
//	go test -run '^$' -bench AddCluster -benchtime 1x -timeout 30m ./cmd/braid/
func BenchmarkAddCluster(b *testing.B) {
	const samples = 5 // clusters added (and raw puts) per point
	points := []int{0, 100, 500}
	for b.Loop() {
		ctx := b.Context()
		s := startScaleBroker(b, ctx)
		id := 0
		for _, n := range points {
			for id < n {
				id++
				s.grant(b, ctx, id, id)
			}
			var add, raw, cpu time.Duration
			for range samples {
				start := time.Now()
				if _, err := s.bp.Admin.Put(ctx, "braid-bench/raw", "x"); err != nil {
					b.Fatal(err)
				}
				raw += time.Since(start)
				id++
				cpu0 := s.cpu()
				start = time.Now()
				s.grant(b, ctx, id, id)
				add += time.Since(start)
				cpu += s.cpu() - cpu0
			}
			b.ReportMetric(add.Seconds()/samples*1000, fmt.Sprintf("add-ms@%d", n))
			b.ReportMetric(cpu.Seconds()/samples*1000, fmt.Sprintf("add-broker-cpu-ms@%d", n))
			b.ReportMetric(raw.Seconds()/samples*1000, fmt.Sprintf("raw-put-ms@%d", n))
		}
	}
}

// BenchmarkStarvedBroker stops a broker child process (SIGSTOP: it keeps
// its connections but answers nothing, as a broker starved of CPU) for
// 18 s while clients hold leases on it, then lets it go on, with the
// clients' gRPC keepalive timeout at the old 5 s (the baseline) and at
// etcd.DefaultKeepAliveTimeout. It reports how many lease streams the
// clients opened again (after closing a connection whose ping went
// unanswered) and how many times they authenticated again (each a bcrypt
// verification and a raft entry on the broker), how long until every client renewed its lease again, and
// how many leases were lost, and how many of the reads in flight during
// the stop (one a client) failed instead of completing after it.
//
//	go test -run '^$' -bench StarvedBroker -benchtime 1x ./cmd/braid/
func BenchmarkStarvedBroker(b *testing.B) {
	const (
		clients = 20
		pause   = 18 * time.Second // past 10 s + 5 s, short of 10 s + 20 s
	)
	for b.Loop() {
		ctx := b.Context()
		s := startScaleBroker(b, ctx)
		creds := s.grant(b, ctx, 1, clients)
		for _, timeout := range []time.Duration{5 * time.Second, etcd.DefaultKeepAliveTimeout} {
			name := fmt.Sprintf("timeout-%v", timeout)
			var stores []*etcd.Store
			var leases []kvstore.LeaseID
			for _, c := range creds {
				tlsCfg, err := c.TLSConfig()
				if err != nil {
					b.Fatal(err)
				}
				st, err := etcd.New(ctx, etcd.Config{Endpoints: c.Endpoints, TLS: tlsCfg, Username: c.Username, Password: c.Password, KeepAliveTimeout: timeout})
				if err != nil {
					b.Fatal(err)
				}
				id, err := st.GrantLease(ctx, time.Minute)
				if err != nil {
					b.Fatal(err)
				}
				// Start its keeper (and lease stream) before the stop.
				if err := st.KeepAlive(ctx, id); err != nil {
					b.Fatal(err)
				}
				stores, leases = append(stores, st), append(leases, id)
			}
			auth0, streams0 := s.grpcCalls(b, ctx, "Authenticate"), s.grpcCalls(b, ctx, "LeaseKeepAlive")
			if err := syscall.Kill(s.bp.PID(), syscall.SIGSTOP); err != nil {
				b.Fatal(err)
			}
			stopped := time.Now()
			// A read in flight on every client during the stop: it fails
			// if the client gives up the connection.
			var reads sync.WaitGroup
			var dropped atomic.Int64
			for i, st := range stores {
				reads.Add(1)
				go func() {
					defer reads.Done()
					rctx, cancel := context.WithTimeout(ctx, pause+10*time.Second)
					defer cancel()
					_, err := st.Get(rctx, clustermesh.ClusterKey(creds[i].Cluster))
					if err != nil && !errors.Is(err, kvstore.ErrNotFound) {
						dropped.Add(1)
					}
				}()
			}
			for time.Since(stopped) < pause {
				time.Sleep(time.Second)
				if err := syscall.Kill(s.bp.PID(), 0); err != nil {
					b.Fatalf("broker gone %v into its stop: %v", time.Since(stopped), err)
				}
			}
			if err := syscall.Kill(s.bp.PID(), syscall.SIGCONT); err != nil {
				b.Fatal(err)
			}
			// Every client renews its lease again.
			var wg sync.WaitGroup
			var mu sync.Mutex
			var recovered time.Duration
			lost := 0
			for i, st := range stores {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
						err := st.KeepAlive(rctx, leases[i])
						cancel()
						if err == nil || errors.Is(err, kvstore.ErrLeaseNotFound) || ctx.Err() != nil {
							mu.Lock()
							recovered = max(recovered, time.Since(stopped)-pause)
							if err != nil {
								lost++
							}
							mu.Unlock()
							return
						}
					}
				}()
			}
			wg.Wait()
			reads.Wait()
			auth := s.grpcCalls(b, ctx, "Authenticate") - auth0
			streams := s.grpcCalls(b, ctx, "LeaseKeepAlive") - streams0
			for i, st := range stores {
				_ = st.RevokeLease(ctx, leases[i])
				st.Close()
			}
			b.ReportMetric(auth, name+"-authenticate-calls")
			b.ReportMetric(streams, name+"-lease-streams-reopened")
			b.ReportMetric(recovered.Seconds()*1000, name+"-recovery-ms")
			b.ReportMetric(float64(lost), name+"-leases-lost")
			b.ReportMetric(float64(dropped.Load()), name+"-reads-failed")
		}
	}
}

// grpcCalls reads how many calls of method the broker started.
func (s *scaleBroker) grpcCalls(b *testing.B, ctx context.Context, method string) float64 {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.bp.MetricsURL+"/metrics", nil)
	if err != nil {
		b.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	var n float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "grpc_server_started_total{") && strings.Contains(line, `grpc_method="`+method+`"`) {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			n += v
		}
	}
	return n
}
