package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/broker"
	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/clustermesh/publish"
	"github.com/braidmesh/braid/clustermesh/remote"
	"github.com/braidmesh/braid/cmd/braid/benchkit"
	"github.com/braidmesh/braid/kvstore"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func benchChunksCommand() *cobra.Command {
	var backends, n int
	cmd := &cobra.Command{
		Use:   "chunks",
		Short: "One-backend change in a large service: bytes written and time to a remote snapshot, single-value vs chunked layout",
		Long: `Runs a broker (embedded etcd, TLS, authentication, fsync on) in this
process. Cluster "single" publishes a service of --backends backends in the
single-value layout, cluster "chunked" the same service in the chunked
layout; cluster "consumer" follows both through a remote.Watcher. Each
round flips one backend's readiness in one of them (all of the chunked
layout's rounds first, then the single layout's, so that the single
layout's large writes do not load the chunked layout's phase) and measures
the bytes the publisher wrote to etcd (keys and values) and the time from the change until the consumer's
Snapshot holds it, split into Upsert (encoding), the publisher's loop up to
its write, and the write to the consumer's snapshot. Beside them, each round
also times a raw etcd put of a chunk-sized value outside the mesh's prefixes
until the consumer's own etcd watch delivers it: the floor under both. The
first tenth warms up. With BRAID_CPUPROFILE=FILE the run writes a CPU
profile of the whole process there.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if backends < 1 || backends > 60000 || n < 1 {
				return fmt.Errorf("--backends must be in 1..60000 and --changes at least 1")
			}
			stop, err := benchkit.StartCPUProfile(os.Getenv("BRAID_CPUPROFILE"))
			if err != nil {
				return err
			}
			defer stop()
			return benchChunks(cmd.Context(), cmd.OutOrStdout(), backends, n)
		},
	}
	cmd.Flags().IntVar(&backends, "backends", 5000, "backends of the service")
	cmd.Flags().IntVar(&n, "changes", 200, "changes measured on each side")
	return cmd
}

// countingStore counts the bytes of keys and values Put through it and
// records when the last Put began.
type countingStore struct {
	kvstore.Store
	bytes    atomic.Int64
	putStart atomic.Int64 // UnixNano
}

func (s *countingStore) Put(ctx context.Context, key string, value []byte, lease kvstore.LeaseID) error {
	s.bytes.Add(int64(len(key) + len(value)))
	s.putStart.Store(time.Now().UnixNano())
	return s.Store.Put(ctx, key, value, lease)
}

type chunkSide struct {
	name   clustermesh.ClusterName
	layout publish.ServiceLayout
	store  *countingStore
	client *clientv3.Client // the raw client under store
	pub    *publish.Publisher
	svc    *clustermesh.Service
	bytes  []int64
	lat    latencies
	// The phases of lat: Upsert (encoding), Upsert's return to the
	// write's start (the publisher's loop), and the write's start to the
	// consumer's snapshot (etcd, watch, decode, assembly).
	upsert, queue, deliver latencies
	raw                    latencies // the raw baseline during this side's phase
}

func benchChunks(ctx context.Context, out io.Writer, backends, n int) error {
	b, dir, stop, err := startLocalBroker(ctx)
	if err != nil {
		return err
	}
	defer stop()
	log := slog.New(slog.DiscardHandler)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	creds, err := b.AddCluster(ctx, clustermesh.Grant{Name: "consumer", ID: 3})
	if err != nil {
		return err
	}
	cstore, err := join.Connect(ctx, creds, log)
	if err != nil {
		return err
	}
	defer cstore.Close()
	sides := []*chunkSide{{name: "single", layout: publish.LayoutSingle}, {name: "chunked", layout: publish.LayoutChunked}}
	for i, s := range sides {
		id := clustermesh.ClusterID(i + 1)
		pods := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i + 1), 0, 0}), 16)
		creds, err := b.AddCluster(ctx, clustermesh.Grant{Name: s.name, ID: id, PodCIDRs: []netip.Prefix{pods}})
		if err != nil {
			return err
		}
		st, err := join.Connect(ctx, creds, log)
		if err != nil {
			return err
		}
		defer st.Close()
		s.store, s.client = &countingStore{Store: st}, st.Client()
		cfg := clustermesh.ClusterConfig{Name: s.name, ID: id, PodCIDRs: []netip.Prefix{pods}}
		if s.pub, err = publish.New(publish.Config{Cluster: cfg, ServiceLayout: s.layout}, s.store, log, nil); err != nil {
			return err
		}
		s.svc = &clustermesh.Service{Cluster: s.name, Namespace: "default", Name: "big", Global: true, Shared: true,
			Affinity: clustermesh.AffinityNone, Ports: []clustermesh.ServicePort{{Name: "http", Port: 80, Protocol: clustermesh.TCP}}}
		for j := range backends {
			s.svc.Backends = append(s.svc.Backends, clustermesh.Backend{IP: netip.AddrFrom4([4]byte{10, byte(i + 1), byte(j / 250), byte(j%250 + 1)}),
				Ports: []clustermesh.BackendPort{{Name: "http", Port: 8080}}, Node: fmt.Sprintf("%s-node-%d", s.name, j%100),
				Zone: fmt.Sprintf("zone-%c", 'a'+j%3), Ready: true, Serving: true})
		}
		for _, k := range []clustermesh.Kind{clustermesh.KindNodes, clustermesh.KindIdentities, clustermesh.KindIPs} {
			if err := s.pub.Replace(k, nil); err != nil {
				return err
			}
		}
		if err := s.pub.Replace(clustermesh.KindServices, []publish.Record{s.svc}); err != nil {
			return err
		}
		wg.Add(1)
		go func() { defer wg.Done(); _ = s.pub.Run(ctx) }()
	}
	w, err := remote.New(remote.Config{Self: "consumer"}, cstore, log, nil)
	if err != nil {
		return err
	}
	changes := w.Subscribe(ctx)
	wg.Add(1)
	go func() { defer wg.Done(); _ = w.Run(ctx) }()
	if err := waitAllSynced(changes, len(sides), 2*time.Minute); err != nil {
		return err
	}
	// Let the initial publishes finish before counting bytes.
	for _, s := range sides {
		for deadline := time.Now().Add(30 * time.Second); ; {
			snap := w.Snapshot()
			if cs := snap.Clusters[s.name]; cs != nil && len(cs.Services["default/big"].Backends) == backends {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("cluster %s: service not complete at the consumer within 30s", s.name)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	// The raw baseline: cluster "chunked"'s etcd client puts a value the
	// size of a chunk at a key outside the mesh's prefixes (so the
	// Watcher never sees it), timed until the consumer's own etcd watch
	// delivers it; the floor under both layouts' figures.
	admin, err := adminClient(ctx, dir, b.Endpoints())
	if err != nil {
		return err
	}
	defer admin.Close()
	const rawKey, rawSize = "braid-bench/raw-chunk", 640
	if _, err := admin.RoleGrantPermission(ctx, broker.ClusterUser("chunked"), rawKey, "", clientv3.PermissionType(clientv3.PermReadWrite)); err != nil {
		return fmt.Errorf("grant chunked the raw key: %w", err)
	}
	if _, err := admin.RoleGrantPermission(ctx, broker.ClusterUser("consumer"), rawKey, "", clientv3.PermissionType(clientv3.PermRead)); err != nil {
		return fmt.Errorf("grant consumer the raw key: %w", err)
	}
	rawEvents := cstore.Client().Watch(ctx, rawKey)

	const wait = 20 * time.Second
	// One phase per layout, the chunked one first: the single layout's
	// 630 kB writes load etcd's backend commits, its history and the
	// collector for seconds after they stop, and would put that load in
	// the other layout's figures. Each phase has its own raw baseline.
	for _, s := range []*chunkSide{sides[1], sides[0]} {
		for i := range n + n/10 {
			took, err := timeRawPut(ctx, sides[1].client, rawEvents, rawKey, fmt.Sprintf("%s-%0*d", s.layout, rawSize, i), wait)
			if err != nil {
				return fmt.Errorf("round %d: %w", i, err)
			}
			if i >= n/10 {
				s.raw = append(s.raw, took)
			}

			j := (i * 37) % backends
			ready := !s.svc.Backends[j].Ready
			s.svc.Backends[j].Ready = ready
			ip := s.svc.Backends[j].IP
			before := s.store.bytes.Load()
			start := time.Now()
			if err := s.pub.Upsert(s.svc); err != nil {
				return err
			}
			upserted := time.Now()
			timeout := time.NewTimer(wait)
			for got := false; !got; {
				select {
				case ch := <-changes:
					if ch.Type != remote.Upsert || ch.Cluster != s.name || ch.Kind != clustermesh.KindServices {
						continue
					}
					snap := w.Snapshot()
					got = backendReady(snap.Clusters[s.name].Services["default/big"], ip) == ready
				case <-timeout.C:
					return fmt.Errorf("round %d: %s's change not in the consumer's snapshot within %v", i, s.name, wait)
				}
			}
			timeout.Stop()
			elapsed := time.Since(start)
			putStart := time.Unix(0, s.store.putStart.Load())
			// The publisher's writes for this change are done once the
			// consumer saw it (the chunk, or the whole value, is written
			// in one pass).
			if i >= n/10 {
				s.lat = append(s.lat, elapsed)
				s.upsert = append(s.upsert, upserted.Sub(start))
				s.queue = append(s.queue, putStart.Sub(upserted))
				s.deliver = append(s.deliver, start.Add(elapsed).Sub(putStart))
				s.bytes = append(s.bytes, s.store.bytes.Load()-before)
			}
		}
	}
	fmt.Fprintf(out, "one-backend change in a %d-backend service, %d changes each (broker: embedded etcd, TLS, auth, fsync on)\n", backends, n)
	for _, s := range sides {
		var sum, maxB int64
		for _, x := range s.bytes {
			sum += x
			maxB = max(maxB, x)
		}
		fmt.Fprintf(out, "  %-8s layout: written per change avg %d B, max %d B; change → consumer snapshot %v\n", s.layout, sum/int64(len(s.bytes)), maxB, s.lat)
		fmt.Fprintf(out, "    Upsert (encode)            %v\n", s.upsert)
		fmt.Fprintf(out, "    Upsert → write starts      %v\n", s.queue)
		fmt.Fprintf(out, "    write → consumer snapshot  %v\n", s.deliver)
		fmt.Fprintf(out, "    raw etcd put → watch event of a %d-byte value, same phase (baseline): %v\n", rawSize, s.raw)
	}
	return nil
}

// backendReady reports whether ip is a ready backend of svc.
func backendReady(svc clustermesh.Service, ip netip.Addr) bool {
	for _, b := range svc.Backends {
		if b.IP == ip {
			return b.Ready
		}
	}
	return false
}
