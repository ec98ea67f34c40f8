package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/braidmesh/braid/bpf"
	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/datapath"
	"github.com/braidmesh/braid/clustermesh/remote"
	"github.com/braidmesh/braid/clustermesh/status"
	"github.com/braidmesh/braid/internal/atomicfile"
	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/tunnel"
)

// DefaultMinReconcileInterval bounds how often a burst of changes makes the
// agent recompute and reconcile; a lone change is applied at once.
const DefaultMinReconcileInterval = 10 * time.Millisecond

// PublicKeyFile is where, in the tunnel's state directory, the agent keeps
// its current WireGuard public key for the operator to publish.
const PublicKeyFile = "wireguard.pub"

// Config configures an Agent.
type Config struct {
	Cluster clustermesh.ClusterName
	// Node, Zone and NodeIPs place this node; backends are tiered against
	// them (same node, same zone, same cluster, remote).
	Node    string
	Zone    string
	NodeIPs []netip.Addr
	// BPF configures the maps and pins.
	BPF bpf.Config
	// CgroupPath is the cgroup v2 directory the socket-level load balancer
	// attaches to; empty disables it.
	CgroupPath string
	// Interfaces are the pod-facing devices the tc programs attach to.
	Interfaces []string
	// Tunnel, if set, is this node's WireGuard device; peers are every
	// other cluster's nodes.
	Tunnel *tunnel.Config
	// PublishKey, if set, hands the node's WireGuard public key to whatever
	// publishes the node (in Kubernetes: an annotation on the Node, which
	// the operator reads). It is called at start and after every rotation,
	// and retried until it succeeds. The key is also kept in PublicKeyFile.
	PublishKey func(ctx context.Context, key string) error
	// StatusAddr, if set, serves the status page, /api/status and /metrics.
	StatusAddr string
	// MinReconcileInterval: zero means DefaultMinReconcileInterval.
	MinReconcileInterval time.Duration
}

// Agent is one node's agent. See the package doc.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	reg     *prometheus.Registry
	watcher *remote.Watcher

	mu       sync.Mutex
	dp       *datapath.Reconciler
	dev      *tunnel.Device
	problems map[string]string
	listener net.Listener
}

// New builds an Agent over store. It starts nothing and touches no kernel
// state.
func New(cfg Config, store kvstore.Store, log *slog.Logger) (*Agent, error) {
	if err := cfg.Cluster.Validate(); err != nil {
		return nil, fmt.Errorf("new agent: %w", err)
	}
	if cfg.MinReconcileInterval == 0 {
		cfg.MinReconcileInterval = DefaultMinReconcileInterval
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("cluster", cfg.Cluster, "node", cfg.Node)
	reg := prometheus.NewRegistry()
	// The agent mirrors every cluster, its own included: local services'
	// virtual IPs and backends come from what the operator published.
	w, err := remote.New(remote.Config{}, store, log, reg)
	if err != nil {
		return nil, fmt.Errorf("new agent: %w", err)
	}
	return &Agent{cfg: cfg, log: log, reg: reg, watcher: w, problems: map[string]string{}}, nil
}

// Watcher returns the agent's view of the mesh.
func (a *Agent) Watcher() *remote.Watcher { return a.watcher }

// Run loads and attaches the datapath, opens the tunnel, and keeps both
// equal to the mesh until ctx is done. The BPF objects stay pinned; the
// tunnel device is removed.
func (a *Agent) Run(ctx context.Context) error {
	objs, err := bpf.Load(a.cfg.BPF)
	if err != nil {
		return fmt.Errorf("load datapath: %w", err)
	}
	defer objs.Close()
	if a.cfg.CgroupPath != "" {
		if err := objs.AttachCgroup(a.cfg.CgroupPath); err != nil {
			return fmt.Errorf("attach socket load balancer to %s: %w", a.cfg.CgroupPath, err)
		}
	}
	for _, name := range a.cfg.Interfaces {
		ifi, err := net.InterfaceByName(name)
		if err != nil {
			return fmt.Errorf("attach tc to %s: %w", name, err)
		}
		if _, err := objs.AttachTC(ifi.Index); err != nil {
			return fmt.Errorf("attach tc to %s: %w", name, err)
		}
	}

	topo := datapath.Topology{Node: a.cfg.Node, Zone: a.cfg.Zone, Cluster: a.cfg.Cluster, NodeIPs: a.cfg.NodeIPs}
	var dev *tunnel.Device
	if a.cfg.Tunnel != nil {
		dev, err = tunnel.New(*a.cfg.Tunnel, a.log)
		if err != nil {
			return err
		}
		if err := dev.Open(); err != nil {
			return fmt.Errorf("open tunnel: %w", err)
		}
		defer dev.Close()
		if ifi, err := net.InterfaceByName(dev.Name()); err == nil {
			topo.TunnelIfindex = uint32(ifi.Index)
		}
	}
	dp, err := datapath.New(datapath.Config{Topology: topo}, datapath.MapsOf(objs), a.log, a.reg)
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.dp, a.dev = dp, dev
	a.mu.Unlock()

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	defer wg.Wait()
	if err := a.serveStatus(ctx, &wg, cancel); err != nil {
		return err
	}
	changes := a.watcher.Subscribe(ctx)
	wg.Add(3)
	go func() { defer wg.Done(); _ = a.watcher.Run(ctx) }()
	go func() { defer wg.Done(); _ = dp.Run(ctx) }()
	go func() { defer wg.Done(); a.loop(ctx, changes) }()
	if dev != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.publishKeys(ctx, dev)
		}()
	}
	<-ctx.Done()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// loop recomputes the desired state after changes: at once for a change
// after a quiet spell, then at most once per MinReconcileInterval while
// changes keep coming, so a burst costs a few reconciles and a lone change
// costs no waiting.
func (a *Agent) loop(ctx context.Context, changes <-chan remote.Change) {
	a.apply()
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-changes:
			if !ok {
				return
			}
		}
		a.apply()
		for pending := true; pending; {
			pending = false
			timer := time.NewTimer(a.cfg.MinReconcileInterval)
		window:
			for {
				select {
				case <-ctx.Done():
					timer.Stop()
					return
				case _, ok := <-changes:
					if !ok {
						timer.Stop()
						return
					}
					pending = true
				case <-timer.C:
					break window
				}
			}
			if pending {
				a.apply()
			}
		}
	}
}

func (a *Agent) apply() {
	snap := a.watcher.Snapshot()
	a.mu.Lock()
	dp, dev := a.dp, a.dev
	a.mu.Unlock()
	dp.Update(DesiredState(snap, a.cfg.Cluster))
	if dev == nil {
		return
	}
	port := uint16(tunnel.DefaultListenPort)
	if a.cfg.Tunnel.ListenPort != 0 {
		port = uint16(a.cfg.Tunnel.ListenPort)
	}
	peers, errs := DesiredPeers(snap, a.cfg.Cluster, port)
	if err := errors.Join(append(errs, dev.Configure(peers))...); err != nil {
		a.setProblem("tunnel", err)
		a.log.Warn("configure tunnel peers", "err", err)
	} else {
		a.setProblem("tunnel", nil)
	}
}

// publishKeys publishes the device's key now and after every rotation,
// retrying a failed publication every RetryInterval until it succeeds or a
// newer key replaces it.
func (a *Agent) publishKeys(ctx context.Context, dev *tunnel.Device) {
	key := dev.PublicKey().String()
	for {
		err := a.writePublicKey(key)
		if err == nil && a.cfg.PublishKey != nil {
			err = a.cfg.PublishKey(ctx, key)
		}
		a.setProblem("publish WireGuard key", err)
		var retry <-chan time.Time
		if err != nil {
			a.log.Warn("publish WireGuard key, retrying", "err", err)
			retry = time.After(keyRetryInterval)
		}
		select {
		case <-ctx.Done():
			return
		case k := <-dev.KeyChanges():
			key = k.String()
		case <-retry:
		}
	}
}

// keyRetryInterval is how soon a failed key publication is retried.
const keyRetryInterval = 2 * time.Second

func (a *Agent) writePublicKey(key string) error {
	path := filepath.Join(a.cfg.Tunnel.StateDir, PublicKeyFile)
	if err := atomicfile.WriteFile(path, []byte(key+"\n"), 0o644); err != nil {
		return fmt.Errorf("write public key: %w", err)
	}
	return nil
}

func (a *Agent) setProblem(part string, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err == nil {
		delete(a.problems, part)
		return
	}
	a.problems[part] = err.Error()
}

func (a *Agent) serveStatus(ctx context.Context, wg *sync.WaitGroup, cancel context.CancelCauseFunc) error {
	if a.cfg.StatusAddr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", a.cfg.StatusAddr)
	if err != nil {
		return fmt.Errorf("serve status on %s: %w", a.cfg.StatusAddr, err)
	}
	a.mu.Lock()
	a.listener = ln
	a.mu.Unlock()
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := status.Serve(ctx, ln, a, promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{})); err != nil {
			cancel(err)
		}
	}()
	return nil
}

// StatusURL returns the status server's base URL once Run bound it.
func (a *Agent) StatusURL() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.listener == nil {
		return ""
	}
	return "http://" + a.listener.Addr().String()
}

// Snapshot implements status.Source.
func (a *Agent) Snapshot() status.Snapshot {
	s := status.Snapshot{Cluster: a.cfg.Cluster, Role: "agent", Node: a.cfg.Node, Time: time.Now()}
	for _, r := range a.watcher.Status() {
		if r.Name == a.cfg.Cluster {
			continue // the agent's own cluster is mirrored, not remote
		}
		s.Remotes = append(s.Remotes, r)
	}
	s.InvalidClusterConfigs, _ = a.watcher.InvalidConfigs()
	a.mu.Lock()
	dp := a.dp
	for part, p := range a.problems {
		s.Problems = append(s.Problems, part+": "+p)
	}
	a.mu.Unlock()
	if dp != nil {
		for _, m := range dp.Status().Maps {
			s.Maps = append(s.Maps, status.MapFill{Name: m.Name, Entries: m.Entries, Capacity: m.Capacity, Pressure: m.Pressure})
		}
		for _, r := range dp.Health().Reasons {
			s.Problems = append(s.Problems, "datapath: "+r)
		}
	}
	s.SetHealth()
	return s
}
