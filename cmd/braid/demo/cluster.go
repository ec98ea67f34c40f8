package demo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/publish"
	"github.com/braidmesh/braid/clustermesh/remote"
	"github.com/braidmesh/braid/clustermesh/sim"
	"github.com/braidmesh/braid/clustermesh/status"
	"github.com/braidmesh/braid/kvstore"
)

// cluster is one simulated cluster of the demo: what braid-operator runs
// for a state file (a publisher, a watcher of the rest of the mesh and the
// status page), wired here from the same parts so that braid does not link
// the operator's composition root and its Kubernetes informers.
type cluster struct {
	cfg     clustermesh.ClusterConfig
	store   kvstore.Store
	pub     *publish.Publisher
	watcher *remote.Watcher
	reg     *prometheus.Registry
	ln      net.Listener

	// Set by runDemo around Run.
	cancel context.CancelFunc
	done   chan error
}

func newCluster(cfg clustermesh.ClusterConfig, store kvstore.Store, ttl time.Duration, log *slog.Logger) (*cluster, error) {
	log = log.With("cluster", cfg.Name)
	reg := prometheus.NewRegistry()
	pub, err := publish.New(publish.Config{Cluster: cfg, LeaseTTL: ttl}, store, log, reg)
	if err != nil {
		return nil, fmt.Errorf("simulate cluster %s: %w", cfg.Name, err)
	}
	w, err := remote.New(remote.Config{Self: cfg.Name}, store, log, reg)
	if err != nil {
		return nil, fmt.Errorf("simulate cluster %s: %w", cfg.Name, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("simulate cluster %s: serve status: %w", cfg.Name, err)
	}
	return &cluster{cfg: cfg, store: store, pub: pub, watcher: w, reg: reg, ln: ln}, nil
}

// Apply validates s and makes it the cluster's published state.
func (c *cluster) Apply(s sim.State) error {
	recs, err := s.Records(&c.cfg)
	if err != nil {
		return fmt.Errorf("local state: %w", err)
	}
	for _, kind := range clustermesh.Kinds {
		if err := c.pub.Replace(kind, recs[kind]); err != nil {
			return fmt.Errorf("local state: %w", err)
		}
	}
	return nil
}

// Run publishes, watches and serves the status page until ctx is done or
// the mesh refuses the cluster.
func (c *cluster) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(3)
	go func() {
		defer wg.Done()
		if err := status.Serve(ctx, c.ln, c, promhttp.HandlerFor(c.reg, promhttp.HandlerOpts{})); err != nil {
			cancel(err)
		}
	}()
	go func() {
		defer wg.Done()
		if err := c.pub.Run(ctx); err != nil {
			cancel(err)
		}
	}()
	go func() {
		defer wg.Done()
		_ = c.watcher.Run(ctx)
	}()
	<-ctx.Done()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// close releases the status listener of a cluster that never ran.
func (c *cluster) close() { _ = c.ln.Close() }

// StatusURL is the base URL of the cluster's status page.
func (c *cluster) StatusURL() string { return "http://" + c.ln.Addr().String() }

// Snapshot implements status.Source.
func (c *cluster) Snapshot() status.Snapshot {
	ps := c.pub.Status()
	s := status.Snapshot{
		Cluster: c.cfg.Name,
		Role:    "operator",
		Time:    time.Now(),
		Publish: &ps,
		Remotes: c.watcher.Status(),
	}
	s.InvalidClusterConfigs, _ = c.watcher.InvalidConfigs()
	if ps.LastError != "" && !ps.Registered {
		s.Problems = append(s.Problems, "publish: "+ps.LastError)
	}
	s.SetHealth()
	return s
}
