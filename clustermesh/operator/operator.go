package operator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"k8s.io/client-go/rest"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/clustermesh/k8s"
	"github.com/braidmesh/braid/clustermesh/publish"
	"github.com/braidmesh/braid/clustermesh/relay"
	"github.com/braidmesh/braid/clustermesh/remote"
	"github.com/braidmesh/braid/clustermesh/status"
	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/reconcile"
)

// DefaultStatePollInterval is how often StateFile is checked for changes.
const DefaultStatePollInterval = 200 * time.Millisecond

// Config configures an Operator.
type Config struct {
	Cluster clustermesh.ClusterConfig
	// LeaseTTL is how long published entries outlive the process; zero
	// means publish.DefaultLeaseTTL.
	LeaseTTL time.Duration
	// ServiceLayout is how services are published; zero means
	// publish.LayoutBoth.
	ServiceLayout publish.ServiceLayout
	// StateFile, if set, is the simulated cluster's state (see State).
	StateFile string
	// StatePollInterval: zero means DefaultStatePollInterval.
	StatePollInterval time.Duration
	// StatusAddr, if set, is where the status page, /api/status and
	// /metrics are served (host:port; port 0 picks one, see StatusURL).
	StatusAddr string
	// Kubernetes, if set, is the cluster whose state is published (see
	// package k8s); use it instead of StateFile.
	Kubernetes *rest.Config
	// KubeClients, if its Kube is set, are used instead of clients built
	// from Kubernetes (tests pass fake clientsets here).
	KubeClients k8s.Clients
	// EnsureCRDs creates the multicluster.x-k8s.io CRDs when absent.
	EnsureCRDs bool
	// ClusterSetCIDRs are the ranges ClusterSetIPs come from (see
	// k8s.Config.ClusterSetCIDRs).
	ClusterSetCIDRs []netip.Prefix
	// MeshCompleteTimeout: zero means DefaultMeshCompleteTimeout.
	MeshCompleteTimeout time.Duration
	// Relay, if set, runs a relay (package relay) beside the operator: it
	// mirrors the mesh, validated with this cluster's broker connection
	// by a remote.Watcher of its own, into an embedded etcd that the
	// cluster's agents read instead of the broker. The operator sets its
	// Cluster, Upstream, Logger and Registerer.
	Relay *relay.Config
	// SaveRelayCredentials, if set, is given the relay's agents' bundle
	// once the relay serves (in Kubernetes: a Secret the agents mount),
	// and retried with backoff until it succeeds.
	SaveRelayCredentials func(context.Context, join.Credentials) error
}

// Operator is one cluster's operator. See the package doc.
type Operator struct {
	cfg     Config
	log     *slog.Logger
	reg     *prometheus.Registry
	pub     *publish.Publisher
	watcher *remote.Watcher
	store   kvstore.Store
	relay   *relay.Relay // nil without Config.Relay

	mu        sync.Mutex
	kube      *k8s.Source
	sourceErr error
	listener  net.Listener
}

// New builds an Operator over store. It starts nothing.
func New(cfg Config, store kvstore.Store, log *slog.Logger) (*Operator, error) {
	if cfg.StatePollInterval == 0 {
		cfg.StatePollInterval = DefaultStatePollInterval
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("cluster", cfg.Cluster.Name)
	reg := prometheus.NewRegistry()
	pub, err := publish.New(publish.Config{Cluster: cfg.Cluster, LeaseTTL: cfg.LeaseTTL, ServiceLayout: cfg.ServiceLayout}, store, log, reg)
	if err != nil {
		return nil, fmt.Errorf("new operator: %w", err)
	}
	w, err := remote.New(remote.Config{Self: cfg.Cluster.Name, LeaseCheckInterval: remote.DefaultLeaseCheckInterval}, store, log, reg)
	if err != nil {
		return nil, fmt.Errorf("new operator: %w", err)
	}
	o := &Operator{cfg: cfg, log: log, reg: reg, pub: pub, watcher: w, store: store}
	if cfg.Relay != nil {
		// The relay's Watcher watches every cluster, this one included
		// (agents mirror their own cluster's services too). It shares the
		// operator's broker connection; its metrics would clash with the
		// operator's Watcher's, and the relay exports its own.
		up, err := remote.New(remote.Config{}, store, log.With("component", "relay-upstream"), nil)
		if err != nil {
			return nil, fmt.Errorf("new operator: %w", err)
		}
		rc := *cfg.Relay
		rc.Cluster, rc.Upstream, rc.Logger, rc.Registerer = cfg.Cluster.Name, up, log, reg
		if o.relay, err = relay.New(rc); err != nil {
			return nil, fmt.Errorf("new operator: %w", err)
		}
	}
	return o, nil
}

// Relay returns the operator's relay, nil without Config.Relay.
func (o *Operator) Relay() *relay.Relay { return o.relay }

// runRelay runs the relay and hands its agents' bundle to
// SaveRelayCredentials once it serves.
func (o *Operator) runRelay(ctx context.Context) error {
	done := make(chan error, 1)
	go func() { done <- o.relay.Run(ctx) }()
	select {
	case err := <-done:
		return err
	case <-o.relay.Ready():
	}
	if save := o.cfg.SaveRelayCredentials; save != nil {
		b := reconcile.NewBackoff(time.Second, time.Minute)
		for {
			err := save(ctx, o.relay.AgentCredentials())
			if err == nil {
				o.log.Info("relay's agents' bundle saved")
				break
			}
			o.log.Warn("saving the relay's agents' bundle failing; retrying", "err", err)
			if !reconcile.Wait(ctx, b.Next()) {
				break
			}
		}
	}
	return <-done
}

// Watcher returns the operator's view of the rest of the mesh.
func (o *Operator) Watcher() *remote.Watcher { return o.watcher }

// Run runs the operator until ctx is done. It returns an error when the
// mesh refuses the cluster or the status address cannot be bound.
func (o *Operator) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	defer wg.Wait()

	if o.cfg.StatusAddr != "" {
		ln, err := net.Listen("tcp", o.cfg.StatusAddr)
		if err != nil {
			return fmt.Errorf("serve status on %s: %w", o.cfg.StatusAddr, err)
		}
		o.mu.Lock()
		o.listener = ln
		o.mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := o.serveStatus(ctx, ln); err != nil {
				cancel(err)
			}
		}()
	}
	if o.cfg.StateFile != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o.followStateFile(ctx)
		}()
	}
	if o.cfg.Kubernetes != nil || o.cfg.KubeClients.Kube != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := o.runKubernetes(ctx); err != nil {
				cancel(fmt.Errorf("kubernetes source: %w", err))
			}
		}()
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := o.pub.Run(ctx); err != nil {
			if o.pub.Status().Removed {
				// Keep serving status: the operator says it was removed.
				o.log.Error("cluster removed from the mesh: the broker refuses its credentials; stopped publishing", "err", err)
				return
			}
			cancel(err)
		}
	}()
	go func() {
		defer wg.Done()
		_ = o.watcher.Run(ctx)
	}()
	if o.relay != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := o.runRelay(ctx); err != nil {
				cancel(err)
			}
		}()
	}
	<-ctx.Done()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// StatusURL returns the base URL of the status server, once Run bound it.
func (o *Operator) StatusURL() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.listener == nil {
		return ""
	}
	return "http://" + o.listener.Addr().String()
}

func (o *Operator) setSourceError(err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err != nil && (o.sourceErr == nil || o.sourceErr.Error() != err.Error()) {
		o.log.Error("local state refused; keeping the last good state", "err", err)
	}
	o.sourceErr = err
}

// Snapshot implements status.Source.
func (o *Operator) Snapshot() status.Snapshot {
	ps := o.pub.Status()
	s := status.Snapshot{
		Cluster: o.cfg.Cluster.Name,
		Role:    "operator",
		Time:    time.Now(),
		Publish: &ps,
		Remotes: o.watcher.Status(),
	}
	s.InvalidClusterConfigs, _ = o.watcher.InvalidConfigs()
	o.mu.Lock()
	if o.sourceErr != nil {
		s.Problems = append(s.Problems, o.sourceErr.Error())
	}
	kube := o.kube
	o.mu.Unlock()
	s.AddLoops(o.pub.LoopStatus())
	if kube != nil {
		ks := kube.Status()
		s.Problems = append(s.Problems, ks.Problems...) // the controllers' failing keys among them
		s.Loops = append(s.Loops, ks.Loops...)
	}
	s.Problems = append(s.Problems, o.publishProblems(ps, s.Time)...)
	if o.relay != nil {
		if rs := o.relay.Status(); rs.LastError != "" {
			s.Problems = append(s.Problems, fmt.Sprintf("relay stopped: %s; hint: its agents keep what they have; restart the operator", rs.LastError))
		}
	}
	s.SetHealth()
	return s
}

// unhealthyAfter is how long the broker may fail before the operator says
// so: one lease TTL, after which its published entries are at risk.
func (o *Operator) unhealthyAfter() time.Duration {
	if o.cfg.LeaseTTL > 0 {
		return o.cfg.LeaseTTL
	}
	return publish.DefaultLeaseTTL
}

// publishProblems says what is wrong with publishing, each with a hint.
func (o *Operator) publishProblems(ps clustermesh.PublishStatus, now time.Time) []string {
	name := o.cfg.Cluster.Name
	switch {
	case ps.Removed:
		return []string{fmt.Sprintf("cluster %s was removed from the mesh: the broker refuses its credentials and it stopped publishing (%s); hint: run `braid broker add-cluster %s` and restart with the new join bundle", name, ps.LastError, name)}
	case !ps.Registered:
		why := "not yet"
		if ps.LastError != "" {
			why = ps.LastError
		}
		return []string{fmt.Sprintf("cluster %s is not registered in the mesh (%s); hint: check the broker is running and reachable", name, why)}
	case !ps.FailingSince.IsZero() && now.Sub(ps.FailingSince) > o.unhealthyAfter():
		return []string{fmt.Sprintf("broker unreachable for %v (more than %v, the lease TTL), lease not renewed: %s; hint: check the broker is running and reachable", now.Sub(ps.FailingSince).Round(time.Second), o.unhealthyAfter(), ps.LastError)}
	}
	return nil
}
