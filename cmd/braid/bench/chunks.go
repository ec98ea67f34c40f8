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
	"github.com/braidmesh/braid/kvstore"
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
round flips one backend's readiness in one of them (alternating, so both
see the same load) and measures the bytes the publisher wrote to etcd
(keys and values) and the time from the change until the consumer's
Snapshot holds it. The first tenth warms up.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if backends < 1 || backends > 60000 || n < 1 {
				return fmt.Errorf("--backends must be in 1..60000 and --changes at least 1")
			}
			return benchChunks(cmd.Context(), cmd.OutOrStdout(), backends, n)
		},
	}
	cmd.Flags().IntVar(&backends, "backends", 5000, "backends of the service")
	cmd.Flags().IntVar(&n, "changes", 200, "changes measured on each side")
	return cmd
}

// countingStore counts the bytes of keys and values Put through it.
type countingStore struct {
	kvstore.Store
	bytes atomic.Int64
}

func (s *countingStore) Put(ctx context.Context, key string, value []byte, lease kvstore.LeaseID) error {
	s.bytes.Add(int64(len(key) + len(value)))
	return s.Store.Put(ctx, key, value, lease)
}

type chunkSide struct {
	name   clustermesh.ClusterName
	layout publish.ServiceLayout
	store  *countingStore
	pub    *publish.Publisher
	svc    *clustermesh.Service
	bytes  []int64
	lat    latencies
}

func benchChunks(ctx context.Context, out io.Writer, backends, n int) error {
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
		s.store = &countingStore{Store: st}
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

	const wait = 20 * time.Second
	for i := range n + n/10 {
		for _, s := range sides {
			j := (i * 37) % backends
			ready := !s.svc.Backends[j].Ready
			s.svc.Backends[j].Ready = ready
			ip := s.svc.Backends[j].IP
			before := s.store.bytes.Load()
			start := time.Now()
			if err := s.pub.Upsert(s.svc); err != nil {
				return err
			}
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
			// The publisher's writes for this change are done once the
			// consumer saw it (the chunk, or the whole value, is written
			// in one pass).
			if i >= n/10 {
				s.lat = append(s.lat, elapsed)
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
