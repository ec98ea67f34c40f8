package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/braidmesh/braid/bpf"
	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/datapath"
	"github.com/braidmesh/braid/clustermesh/gossip"
	"github.com/braidmesh/braid/clustermesh/policy"
	"github.com/braidmesh/braid/clustermesh/remote"
	"github.com/braidmesh/braid/clustermesh/status"
	"github.com/braidmesh/braid/internal/atomicfile"
	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/reconcile"
	"github.com/braidmesh/braid/tunnel"
)

// DefaultMinReconcileInterval bounds how often a burst of changes makes the
// agent recompute and reconcile; a lone change is applied at once.
const DefaultMinReconcileInterval = 10 * time.Millisecond

// MeshPace is the mesh loop's reconcile.Config.Pace: each round recomputes
// the whole desired state, which a cold sync of hundreds of clusters makes
// large while it keeps changing, so a burst's rounds are spaced by twice
// their duration and the Watcher keeps at least half a core.
const MeshPace = 1

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
	Region  string
	NodeIPs []netip.Addr
	// GossipKeys, if set, turn on liveness by gossip (clustermesh/gossip)
	// with the mesh's keys, the first primary: nodes that stop answering
	// lose their backends' share of new connections. Gossip binds to the
	// first of NodeIPs.
	GossipKeys [][]byte
	// GossipPort is the gossip port, the same on every node; zero means
	// gossip.DefaultPort.
	GossipPort uint16
	// BPF configures the maps and pins.
	BPF bpf.Config
	// CgroupPath is the cgroup v2 directory the socket-level load balancer
	// attaches to; empty disables it.
	CgroupPath string
	// Interfaces are the pod-facing devices the tc programs attach to.
	Interfaces []string
	// PodDevices, when set, finds pod-facing devices by itself and
	// attaches and detaches the tc programs as pods come and go:
	// PodDevicesAuto (host sides of veths whose peer is in another
	// netns) or comma-separated name globs. Empty or PodDevicesOff: only
	// Interfaces.
	PodDevices string
	// SocketLBHostOnly makes the socket-level load balancer act only in
	// the agent's own network namespace (the host's: the netns-cookie
	// filter); pods' service traffic is then translated by the tc programs
	// on their devices. False: every netns under CgroupPath.
	SocketLBHostOnly bool
	// Tunnel, if set, is this node's WireGuard device; peers are every
	// other cluster's nodes.
	Tunnel *tunnel.Config
	// PublishKey, if set, hands the node's WireGuard key state to whatever
	// publishes the node (in Kubernetes: annotations on the Node, which the
	// operator reads): its public key and, for the two-phase key handover
	// (package tunnel), its next key and the peers' next keys it has
	// installed. It is called at start and after every change, and retried
	// until it succeeds. The current key is also kept in PublicKeyFile.
	PublishKey func(ctx context.Context, keys tunnel.KeyState) error
	// StatusAddr, if set, serves the status page, /api/status and /metrics.
	StatusAddr string
	// MinReconcileInterval: zero means DefaultMinReconcileInterval.
	MinReconcileInterval time.Duration
	// BrokerTimeout bounds how long the broker may stay silent or failing
	// before the agent reports itself unhealthy, and how long a remote
	// cluster's watches may before it is shown stale; zero means
	// DefaultBrokerTimeout. It must be several times the broker
	// connection's progress interval (join.ProgressInterval).
	BrokerTimeout time.Duration
	// Policies, if set, supplies the cluster's NetworkPolicies, which the
	// agent enforces for its node's pods (ingress and egress). Unset: no
	// NetworkPolicy is enforced.
	Policies PolicySource
	// NodeStatusInterval is how often the node's status is published
	// (see DefaultNodeStatusInterval); zero means the default.
	NodeStatusInterval time.Duration
	// RestoreTimeout bounds how long a restarted agent leaves the maps it
	// finds pinned untouched while it waits to know the whole mesh again
	// (see the package doc); zero means DefaultRestoreTimeout.
	RestoreTimeout time.Duration
	// Mesh, if set, is where the agent reads the mesh: its cluster's relay
	// (package relay), a mirror of the broker with the same keys, so that
	// the broker serves one set of watches per cluster rather than per
	// node. Nil: the store New was given (the broker). The node's status
	// is written to the broker either way. The caller owns Mesh.
	Mesh kvstore.Store
}

// DefaultRestoreTimeout is Config.RestoreTimeout's default: as long as
// Cilium waits for its cluster mesh to sync before it removes restored
// entries.
const DefaultRestoreTimeout = time.Minute

// DefaultBrokerTimeout is Config.BrokerTimeout's default.
const DefaultBrokerTimeout = remote.DefaultStaleAfter

// Agent is one node's agent. See the package doc.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	reg     *prometheus.Registry
	watcher *remote.Watcher
	store   kvstore.Store

	// configurePeers, if set, replaces dev.Configure (tests inject
	// faults through it).
	configurePeers func(dev *tunnel.Device, want []tunnel.Peer) error
	// interfaceByName, if set, replaces net.InterfaceByName for the
	// tunnel device's index (tests inject faults through it).
	interfaceByName func(name string) (*net.Interface, error)

	mu       sync.Mutex
	pool     *gossip.Pool
	dp       *datapath.Reconciler
	dev      *tunnel.Device
	loops    *loops
	problems map[string]string
	listener net.Listener
	objs     *bpf.Objects         // while Run holds them, for the counters
	devices  map[int]string       // pod devices with the tc programs, by ifindex
	policy   *policyState         // last compiled policy; nil without Config.Policies
	drops    drops                // last read drop counters
	tunnel   *status.TunnelStatus // last sample of the tunnel device
	// restore is set while a restarted agent holds the pinned maps
	// (see restoring).
	restore *restoreHold
	// restoredBlocks are the address-block identities found pinned, kept
	// by the first policy compile.
	restoredBlocks []policy.Block
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
	if cfg.BrokerTimeout <= 0 {
		cfg.BrokerTimeout = DefaultBrokerTimeout
	}
	if cfg.NodeStatusInterval == 0 {
		cfg.NodeStatusInterval = DefaultNodeStatusInterval
	}
	if cfg.RestoreTimeout <= 0 {
		cfg.RestoreTimeout = DefaultRestoreTimeout
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("cluster", cfg.Cluster, "node", cfg.Node)
	reg := prometheus.NewRegistry()
	// The agent mirrors every cluster, its own included: local services'
	// virtual IPs and backends come from what the operator published.
	mesh := cfg.Mesh
	if mesh == nil {
		mesh = store
	}
	w, err := remote.New(remote.Config{StaleAfter: cfg.BrokerTimeout}, mesh, log, reg)
	if err != nil {
		return nil, fmt.Errorf("new agent: %w", err)
	}
	a := &Agent{cfg: cfg, log: log, reg: reg, watcher: w, store: store, problems: map[string]string{}}
	if cfg.Policies != nil {
		a.policy = &policyState{}
		if err := reg.Register(newDropCollector(a)); err != nil {
			return nil, fmt.Errorf("new agent: %w", err)
		}
	}
	return a, nil
}

// Watcher returns the agent's view of the mesh.
func (a *Agent) Watcher() *remote.Watcher { return a.watcher }

// Run loads and attaches the datapath, opens the tunnel, and keeps both
// equal to the mesh until ctx is done. The BPF objects stay pinned; the
// tunnel device is removed.
//
// Each part is a reconcile.Loop (see Snapshot's Loops and /metrics): the
// datapath; "mesh", woken by the Watcher, which hands the desired state to
// the datapath and wakes the tunnel; "tunnel_peers", which finds the
// tunnel device for steering and configures its peers; "tunnel_key",
// which publishes the node's WireGuard key after each rotation. A failed
// round is retried with backoff without waiting for the next change.
func (a *Agent) Run(ctx context.Context) error {
	objs, err := bpf.Load(a.cfg.BPF)
	if err != nil {
		return fmt.Errorf("load datapath: %w", err)
	}
	defer objs.Close()
	if err := a.holdRestored(objs); err != nil {
		return err
	}
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

	var match func(netlink.Link) bool
	if a.cfg.PodDevices != "" && a.cfg.PodDevices != PodDevicesOff {
		addrs := func(l netlink.Link) ([]netlink.Addr, error) { return netlink.AddrList(l, netlink.FAMILY_ALL) }
		if match, err = podDeviceMatcher(a.cfg.PodDevices, a.cfg.NodeIPs, addrs); err != nil {
			return err
		}
	}

	topo := datapath.Topology{Node: a.cfg.Node, Zone: a.cfg.Zone, Region: a.cfg.Region, Cluster: a.cfg.Cluster, NodeIPs: a.cfg.NodeIPs}
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
		// Read on scrape, like the device's other counters: what strict
		// mode dropped shows that plaintext to remote pods was refused.
		dropped := prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "braid_tunnel_strict_dropped_packets_total",
			Help: "Packets to remote pods dropped by strict encryption because they would have left the node outside the tunnel.",
		}, func() float64 {
			n, err := dev.Dropped()
			if err != nil {
				return 0
			}
			return float64(n)
		})
		if err := a.reg.Register(dropped); err != nil {
			return fmt.Errorf("register strict drop counter: %w", err)
		}
		defer a.reg.Unregister(dropped)
		if sameNetns(a.cfg.Tunnel.Netns) {
			// Steer from the first reconcile if we can; the tunnel_peers
			// loop retries (and reports) a failed lookup.
			if ifi, err := net.InterfaceByName(dev.Name()); err == nil {
				topo.TunnelIfindex = uint32(ifi.Index)
			}
		}
	}
	cookie := uint64(0)
	if a.cfg.SocketLBHostOnly {
		if cookie, err = netnsCookie(); err != nil {
			return fmt.Errorf("restrict socket load balancer to the host: %w", err)
		}
	}
	dp, err := datapath.New(datapath.Config{Topology: topo, SocketLBNetnsCookie: cookie}, datapath.MapsOf(objs), a.log, a.reg)
	if err != nil {
		return err
	}
	pool, err := a.newPool()
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.pool = pool
	a.mu.Unlock()
	loops, err := a.newLoops(dp, dev, objs)
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.dp, a.dev, a.loops, a.objs = dp, dev, loops, objs
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		a.objs = nil // closed on return
		a.mu.Unlock()
	}()

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	defer wg.Wait()
	if err := a.serveStatus(ctx, &wg, cancel); err != nil {
		return err
	}
	a.watcher.Notify(ctx, loops.mesh.Trigger)
	run := func(f func(context.Context) error) {
		wg.Add(1)
		go func() { defer wg.Done(); _ = f(ctx) }()
	}
	run(a.watcher.Run)
	run(dp.Run)
	if a.restoring() {
		// Give up waiting for the whole mesh after RestoreTimeout.
		t := time.AfterFunc(a.cfg.RestoreTimeout, loops.mesh.Trigger)
		defer t.Stop()
	}
	run(func(ctx context.Context) error {
		err := loops.status.Run(ctx)
		loops.statusPub.withdraw(ctx)
		return err
	})
	run(loops.mesh.Run)
	if a.cfg.Policies != nil {
		run(func(ctx context.Context) error {
			if err := a.cfg.Policies.Run(ctx, loops.mesh.Trigger); err != nil {
				a.setProblem("network policies", err)
			}
			return nil
		})
		run(loops.drops.Run)
	}
	if match != nil {
		run(func(ctx context.Context) error {
			direct := func(f func() error) error { return f() }
			if err := watchPodDevices(ctx, objs, match, nil, direct, a.log, a.podDeviceChanged); err != nil {
				cancel(err)
			}
			return nil
		})
	}
	if pool != nil {
		run(func(ctx context.Context) error {
			// Without gossip every node counts reachable: report, go on.
			if err := pool.Run(ctx); err != nil {
				a.setProblem("gossip", err)
				a.log.Warn("gossip liveness is off", "err", err)
			}
			return nil
		})
		run(func(ctx context.Context) error {
			for {
				select {
				case <-ctx.Done():
					return nil
				case <-pool.Changes():
					loops.mesh.Trigger() // a node's liveness changed: re-tier its backends
				}
			}
		})
	}
	if dev != nil {
		run(loops.peers.Run)
		run(loops.key.Run)
		run(func(ctx context.Context) error { a.sampleTunnel(ctx, dev); return nil })
		run(func(ctx context.Context) error {
			for {
				select {
				case <-ctx.Done():
					return nil
				case <-dev.KeyChanges():
					loops.key.Trigger()
				}
			}
		})
	}
	<-ctx.Done()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// loops are the agent's reconcile loops; peers and key are nil without a
// tunnel, drops without policies. status publishes the node status with
// statusPub.
type loops struct {
	mesh, peers, key, drops, status *reconcile.Loop
	statusPub                       *nodeStatusPublisher
}

func (a *Agent) newLoops(dp *datapath.Reconciler, dev *tunnel.Device, objs *bpf.Objects) (*loops, error) {
	var l loops
	var err error
	// mesh: a lone change is applied at once, a burst costs one round per
	// MinReconcileInterval.
	l.mesh, err = reconcile.New(reconcile.Config{Name: "mesh", MinInterval: a.cfg.MinReconcileInterval, Pace: MeshPace}, func(context.Context, bool) error {
		snap := a.watcher.Snapshot()
		a.mu.Lock()
		pool := a.pool
		a.mu.Unlock()
		var unreachable func(clustermesh.ClusterName, string) bool
		if pool != nil {
			pool.SetMembers(gossipMembers(snap, a.cfg.NodeIPs[0]))
			unreachable = func(c clustermesh.ClusterName, node string) bool {
				return pool.Unreachable(gossip.MemberName(string(c), node))
			}
		}
		if a.holdsRestored(snap, time.Now()) {
			l.status.Trigger()
			return nil // the pinned maps keep enforcing as they are
		}
		want := DesiredState(snap, a.cfg.Cluster, unreachable)
		a.desirePolicy(&want, snap)
		dp.Update(want)
		if l.peers != nil {
			l.peers.Trigger()
		}
		l.status.Trigger() // a remote may have synced: say so without waiting an interval
		return nil
	}, a.log, a.reg)
	if err != nil {
		return nil, fmt.Errorf("new agent loops: %w", err)
	}
	// status: every interval, and on a change at most once a second (the
	// status is rate-limited: every node of every cluster writes it).
	l.statusPub = a.newNodeStatusPublisher(a.store, a.cfg.NodeStatusInterval)
	l.status, err = reconcile.New(reconcile.Config{Name: "node_status", Resync: a.cfg.NodeStatusInterval,
		MinInterval: nodeStatusMinInterval, MaxBackoff: a.cfg.NodeStatusInterval}, l.statusPub.round, a.log, a.reg)
	if err != nil {
		return nil, fmt.Errorf("new agent loops: %w", err)
	}
	if a.cfg.Policies != nil {
		l.drops, err = reconcile.New(reconcile.Config{Name: "policy_drops", Resync: DropsInterval}, func(context.Context, bool) error {
			d, err := readDrops(objs.PolicyDrops, objs)
			if err != nil {
				return err
			}
			a.mu.Lock()
			a.drops = d
			a.mu.Unlock()
			return nil
		}, a.log, a.reg)
		if err != nil {
			return nil, fmt.Errorf("new agent loops: %w", err)
		}
	}
	if dev == nil {
		return &l, nil
	}
	l.peers, err = reconcile.New(reconcile.Config{Name: "tunnel_peers", Resync: peersResyncInterval}, func(context.Context, bool) error {
		return a.reconcileTunnel(dp, dev)
	}, a.log, a.reg)
	if err != nil {
		return nil, fmt.Errorf("new agent loops: %w", err)
	}
	l.key, err = reconcile.New(reconcile.Config{Name: "tunnel_key", MaxBackoff: keyMaxBackoff}, func(ctx context.Context, _ bool) error {
		return a.publishKey(ctx, dev.Keys())
	}, a.log, a.reg)
	if err != nil {
		return nil, fmt.Errorf("new agent loops: %w", err)
	}
	return &l, nil
}

// desirePolicy fills want's policy part from the cluster's NetworkPolicies,
// or, until they and the cluster's own identities are known, asks the
// datapath to keep what it enforces.
func (a *Agent) desirePolicy(want *datapath.Desired, snap *remote.Snapshot) {
	if a.cfg.Policies == nil {
		return
	}
	pols, ok := a.cfg.Policies.NetworkPolicies()
	own := snap.Clusters[a.cfg.Cluster]
	if !ok || own == nil || !own.Synced {
		want.KeepPolicy = true
		return
	}
	a.mu.Lock()
	prev := a.policy.result.Blocks
	if !a.policy.synced {
		prev = a.restoredBlocks // the first compile since the start
	}
	a.mu.Unlock()
	res := ApplyPolicy(want, snap, a.cfg.Cluster, pols, prev)
	want.PolicyRevision = PolicyRevision(pols)
	ps := &policyState{synced: true, policies: len(pols), result: res, revision: want.PolicyRevision,
		labels: map[clustermesh.NumericIdentity]map[string]string{}, clusters: map[clustermesh.ClusterID]clustermesh.ClusterName{}}
	for id := range res.Selected {
		ps.labels[id] = own.Identities[id].Labels
	}
	for name, cs := range snap.Clusters {
		ps.clusters[cs.Config.ID] = name
	}
	a.setProblem("network policies", errors.New(strings.Join(res.Problems, "; ")))
	if len(res.Problems) == 0 {
		a.setProblem("network policies", nil)
	}
	a.mu.Lock()
	a.policy = ps
	a.mu.Unlock()
}

// peersResyncInterval is how often the tunnel's peers and the device's
// index are checked without a mesh change (repairing what changed behind
// the agent's back).
const peersResyncInterval = 5 * time.Minute

// keyMaxBackoff bounds the retry delay of a failed key publication: the
// node is unreachable until its key is published.
const keyMaxBackoff = 2 * time.Second

// reconcileTunnel points the datapath at the tunnel device and makes the
// device's peers every other cluster's nodes. Nodes with an invalid key
// are reported, not retried: only another cluster can fix them.
func (a *Agent) reconcileTunnel(dp *datapath.Reconciler, dev *tunnel.Device) error {
	var errs []error
	if sameNetns(a.cfg.Tunnel.Netns) {
		// Steering into the device needs its index in our namespace; a
		// device in another namespace is reached through its routes there.
		lookup := net.InterfaceByName
		if a.interfaceByName != nil {
			lookup = a.interfaceByName
		}
		if ifi, err := lookup(dev.Name()); err != nil {
			errs = append(errs, fmt.Errorf("find tunnel device %s to steer remote pod traffic into it: %w", dev.Name(), err))
		} else {
			dp.SetTunnelIfindex(uint32(ifi.Index))
		}
	}
	port := uint16(tunnel.DefaultListenPort)
	if a.cfg.Tunnel.ListenPort != 0 {
		port = uint16(a.cfg.Tunnel.ListenPort)
	}
	snap := a.watcher.Snapshot()
	if own := snap.Clusters[a.cfg.Cluster]; own != nil && own.Config.Capabilities.StrictEncryption {
		// The cluster asks for strict encryption: drop plaintext to
		// remote pods before any peer or route changes.
		if err := dev.EnableStrict(); err != nil {
			errs = append(errs, fmt.Errorf("enforce strict encryption: %w", err))
		}
	}
	peers, invalid := DesiredPeers(snap, a.cfg.Cluster, port)
	a.setProblem("tunnel peers", errors.Join(invalid...))
	configure := dev.Configure
	if a.configurePeers != nil {
		configure = func(want []tunnel.Peer) error { return a.configurePeers(dev, want) }
	}
	if err := configure(peers); err != nil {
		errs = append(errs, fmt.Errorf("configure tunnel peers: %w", err))
	}
	return errors.Join(errs...)
}

// soNetnsCookie is SO_NETNS_COOKIE (Linux 5.14), missing from x/sys/unix.
const soNetnsCookie = 71

// netnsCookie returns the cookie of the agent's network namespace, as
// bpf_get_netns_cookie reports it.
func netnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("netns cookie: %w", err)
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, soNetnsCookie)
	if err != nil {
		return 0, fmt.Errorf("netns cookie: %w", err)
	}
	return c, nil
}

// newPool returns the gossip pool, or nil when gossip is off.
func (a *Agent) newPool() (*gossip.Pool, error) {
	if len(a.cfg.GossipKeys) == 0 {
		return nil, nil
	}
	if len(a.cfg.NodeIPs) == 0 {
		return nil, fmt.Errorf("gossip: no node IP to bind to")
	}
	addr := netip.AddrPortFrom(a.cfg.NodeIPs[0], a.cfg.GossipPort)
	return gossip.New(gossip.Config{Name: gossip.MemberName(string(a.cfg.Cluster), a.cfg.Node), Addr: addr, Keys: a.cfg.GossipKeys}, a.log, a.reg)
}

// gossipMembers lists every node the mesh publishes, at its first address
// of self's family.
func gossipMembers(snap *remote.Snapshot, self netip.Addr) []gossip.Member {
	var out []gossip.Member
	for cname, cs := range snap.Clusters {
		for _, n := range cs.Nodes {
			for _, ip := range n.IPs {
				if ip.Unmap().Is4() == self.Unmap().Is4() {
					out = append(out, gossip.Member{Name: gossip.MemberName(string(cname), n.Name), Addr: netip.AddrPortFrom(ip.Unmap(), 0)})
					break
				}
			}
		}
	}
	return out
}

// sameNetns reports whether the network namespace at path (empty: ours)
// is the agent's own.
func sameNetns(path string) bool {
	if path == "" {
		return true
	}
	var want, own unix.Stat_t
	if unix.Stat(path, &want) != nil || unix.Stat("/proc/self/ns/net", &own) != nil {
		return false
	}
	return want.Dev == own.Dev && want.Ino == own.Ino
}

// publishKey keeps the current key in PublicKeyFile and hands keys to
// Config.PublishKey.
func (a *Agent) publishKey(ctx context.Context, keys tunnel.KeyState) error {
	if err := a.writePublicKey(keys.Current.String()); err != nil {
		return err
	}
	if a.cfg.PublishKey != nil {
		if err := a.cfg.PublishKey(ctx, keys); err != nil {
			return fmt.Errorf("publish WireGuard key: %w", err)
		}
	}
	return nil
}

func (a *Agent) writePublicKey(key string) error {
	path := filepath.Join(a.cfg.Tunnel.StateDir, PublicKeyFile)
	if err := atomicfile.WriteFile(path, []byte(key+"\n"), 0o644); err != nil {
		return fmt.Errorf("write public key: %w", err)
	}
	return nil
}

// meshProblems says what is wrong with the agent's link to the broker and
// its own cluster's place in the mesh (own: its status in the watcher, nil
// if absent), each with a hint.
func (a *Agent) meshProblems(own *clustermesh.RemoteClusterStatus, now time.Time) []string {
	b := a.watcher.Broker()
	name, bound := a.cfg.Cluster, a.cfg.BrokerTimeout
	switch {
	case b.Refused:
		return []string{fmt.Sprintf("cluster %s was removed from the mesh: the broker refuses its credentials (%s); hint: run `braid broker add-cluster %s`, then restart its operator and agents with the new join bundle", name, b.LastError, name)}
	case !b.FailingSince.IsZero() && now.Sub(b.FailingSince) > bound:
		return []string{fmt.Sprintf("broker unreachable for %v (more than %v): %s; hint: check the broker is running and reachable from node %s", now.Sub(b.FailingSince).Round(time.Second), bound, b.LastError, a.cfg.Node)}
	case b.ProgressSeen && now.Sub(b.LastHeard) > bound:
		return []string{fmt.Sprintf("broker unreachable: nothing heard from it for %v (more than %v); hint: check the broker is running and reachable from node %s", now.Sub(b.LastHeard).Round(time.Second), bound, a.cfg.Node)}
	}
	if !b.ConfigsListed || !b.GrantsListed {
		return nil // not known yet
	}
	switch {
	case own != nil && own.Ungranted != "":
		return []string{fmt.Sprintf("cluster %s is not granted a place in the mesh: %s; hint: run `braid broker add-cluster %s`", name, own.Ungranted, name)}
	case own == nil || own.Gone:
		return []string{fmt.Sprintf("cluster %s is not registered in the mesh: the broker holds no config of it (its operator has not registered it, or stopped and its lease ran out); hint: check cluster %s's braid-operator runs (`braid status --url` on it)", name, name)}
	}
	return nil
}

// podDeviceChanged records a pod device the tc programs were attached to
// (up) or whose device went away.
func (a *Agent) podDeviceChanged(name string, ifindex int, up bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !up {
		delete(a.devices, ifindex)
		return
	}
	if a.devices == nil {
		a.devices = map[int]string{}
	}
	a.devices[ifindex] = name
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
	s := status.Snapshot{Cluster: a.cfg.Cluster, Role: "agent", Node: a.cfg.Node, Zone: a.cfg.Zone, Region: a.cfg.Region, Time: time.Now()}
	var own *clustermesh.RemoteClusterStatus
	for _, r := range a.watcher.Status() {
		if r.Name == a.cfg.Cluster {
			own = &r // the agent's own cluster is mirrored, not remote
			continue
		}
		s.Remotes = append(s.Remotes, r)
	}
	s.Problems = append(s.Problems, a.meshProblems(own, s.Time)...)
	s.InvalidClusterConfigs, _ = a.watcher.InvalidConfigs()
	a.mu.Lock()
	dp, loops, pool := a.dp, a.loops, a.pool
	if a.policy != nil {
		s.Policy = policyStatus(a.policy, a.drops)
	}
	if a.tunnel != nil {
		ts := *a.tunnel
		ts.Peers = slices.Clone(ts.Peers)
		s.Tunnel = &ts
	}
	for part, p := range a.problems {
		s.Problems = append(s.Problems, part+": "+p)
	}
	if h := a.restore; h != nil && h.waiting != "" {
		s.Problems = append(s.Problems, "datapath: "+h.waiting)
	}
	for _, name := range a.devices {
		s.PodDevices = append(s.PodDevices, name)
	}
	if a.objs != nil {
		// A lookup per counter and CPU: cheap, and never waits.
		if cs, err := a.objs.Counters(); err == nil {
			s.Counters = make(map[string]uint64, len(cs))
			for i, v := range cs {
				s.Counters[bpf.Counter(i).String()] = v
			}
		}
	}
	a.mu.Unlock()
	slices.Sort(s.PodDevices)
	if loops != nil {
		s.AddLoops(loops.mesh.Status(), loops.status.Status())
		if loops.drops != nil {
			s.AddLoops(loops.drops.Status())
		}
		if loops.peers != nil {
			s.AddLoops(loops.peers.Status(), loops.key.Status())
		}
	}
	if dp != nil {
		// The datapath's failures are among its Health reasons.
		s.Loops = append(s.Loops, dp.LoopStatus())
		for _, m := range dp.Status().Maps {
			s.Maps = append(s.Maps, status.MapFill{Name: m.Name, Entries: m.Entries, Capacity: m.Capacity, Pressure: m.Pressure})
		}
		for _, r := range dp.Health().Reasons {
			s.Problems = append(s.Problems, "datapath: "+r)
		}
		s.FallbackServices = dp.Status().Fallback
		if s.Policy != nil {
			s.Policy.Enforced = dp.Status().PolicyRevision
		}
	}
	if pool != nil {
		now := time.Now()
		for name, h := range pool.Health() {
			cluster, node, _ := strings.Cut(name, "/")
			nh := status.NodeHealth{Cluster: clustermesh.ClusterName(cluster), Node: node, State: string(h.State),
				Unreachable: pool.Unreachable(name), LastSeenSeconds: -1}
			if !h.LastSeen.IsZero() {
				nh.LastSeenSeconds = now.Sub(h.LastSeen).Seconds()
			}
			s.Nodes = append(s.Nodes, nh)
		}
		slices.SortFunc(s.Nodes, func(x, y status.NodeHealth) int {
			return cmp.Or(cmp.Compare(x.Cluster, y.Cluster), cmp.Compare(x.Node, y.Node))
		})
	}
	s.SetHealth()
	return s
}
