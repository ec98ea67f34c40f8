package meshsim

import (
	"context"
	"fmt"
	"log/slog"
	"math/bits"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/clustermesh/publish"
	"github.com/braidmesh/braid/clustermesh/sim"
	"github.com/braidmesh/braid/kvstore/etcd"
)

// clusterState says where a simulated cluster is in its life.
type clusterState int

const (
	inactive clusterState = iota // granted, not publishing
	active                       // publishing, all kinds written
	busy                         // joining or leaving
)

// simCluster is one simulated cluster: its grant, its credentials and
// connection, its desired state and, while it is in the mesh, its
// publisher.
type simCluster struct {
	cfg      clustermesh.ClusterConfig
	creds    join.Credentials
	store    *etcd.Store
	services []string

	mu    sync.Mutex // guards everything below
	state sim.State
	// nextPod is, per node, the pod index a scale-up uses next.
	nextPod  []int
	status   clusterState
	leftAt   time.Time
	pub      *publish.Publisher
	stopPub  context.CancelFunc
	pubDone  chan struct{}
	consumes bool // hosts consumers: never leaves
}

// shape is a run's cluster shape.
type shape struct {
	nodes, endpoints int
	layout           publish.ServiceLayout
	leaseTTL         time.Duration
}

func (s shape) services() int    { return s.endpoints / s.nodes }
func (s shape) podsPerNode() int { return s.services() + 1 }

// podBlock is how many /24s each cluster's pod CIDR holds: one per node,
// rounded up to a power of two.
func podBlock(nodes int) int { return 1 << bits.Len(uint(nodes-1)) }

// poolFits reports whether clusters pod CIDRs of podBlock(nodes) /24s fit
// in 10.0.0.0/8.
func poolFits(clusters, nodes int) bool { return clusters*podBlock(nodes) <= 1<<16 }

// clusterConfig is cluster id's config: name sim-ID and its pod CIDR,
// the id-th block of 10.0.0.0/8.
func clusterConfig(id clustermesh.ClusterID, nodes int) clustermesh.ClusterConfig {
	block := podBlock(nodes)
	first := uint32(10)<<24 | uint32(int(id-1)*block)<<8
	bitsLen := 24 - (bits.Len(uint(block)) - 1)
	cidr := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(first >> 24), byte(first >> 16), byte(first >> 8), 0}), bitsLen)
	return clustermesh.ClusterConfig{Name: clustermesh.ClusterName(fmt.Sprintf("sim-%d", id)), ID: id, PodCIDRs: []netip.Prefix{cidr}}
}

func newSimCluster(id clustermesh.ClusterID, sh shape) (*simCluster, error) {
	c := &simCluster{cfg: clusterConfig(id, sh.nodes)}
	for i := range sh.services() {
		c.services = append(c.services, fmt.Sprintf("svc-%d", i))
	}
	st, err := sim.Generate(c.cfg, sh.nodes, sh.podsPerNode(), c.services)
	if err != nil {
		return nil, err
	}
	c.state = st
	c.nextPod = make([]int, sh.nodes)
	for i := range c.nextPod {
		c.nextPod[i] = sh.podsPerNode()
	}
	return c, nil
}

// start publishes the cluster's state under a new publisher and returns
// once every kind is written (or ctx is done). The publisher runs until
// stop.
func (c *simCluster) start(ctx context.Context, sh shape, log *slog.Logger) error {
	pub, err := publish.New(publish.Config{Cluster: c.cfg, LeaseTTL: sh.leaseTTL, ServiceLayout: sh.layout}, c.store, log, nil)
	if err != nil {
		return err
	}
	c.mu.Lock()
	st := c.state
	recs, err := st.Records(&c.cfg)
	if err == nil {
		for _, kind := range []clustermesh.Kind{clustermesh.KindNodes, clustermesh.KindIdentities, clustermesh.KindIPs, clustermesh.KindServices} {
			if err = pub.Replace(kind, recs[kind]); err != nil {
				break
			}
		}
	}
	c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("publish cluster %s: %w", c.cfg.Name, err)
	}
	pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := pub.Run(pctx); err != nil {
			log.Error("publisher stopped", "cluster", c.cfg.Name, "err", err)
		}
	}()
	c.mu.Lock()
	c.pub, c.stopPub, c.pubDone = pub, cancel, done
	c.mu.Unlock()
	want := 3 + len(layoutKinds(sh.layout))
	for tick := time.NewTicker(20 * time.Millisecond); ; {
		st := pub.Status()
		n := 0
		for _, ok := range st.Synced {
			if ok {
				n++
			}
		}
		if n >= want {
			tick.Stop()
			return nil
		}
		select {
		case <-ctx.Done():
			tick.Stop()
			return fmt.Errorf("publish cluster %s: %w (last error: %s)", c.cfg.Name, ctx.Err(), st.LastError)
		case <-tick.C:
		}
	}
}

// stop stops the publisher, leaving its keys under their lease.
func (c *simCluster) stop() *publish.Publisher {
	c.mu.Lock()
	pub, cancel, done := c.pub, c.stopPub, c.pubDone
	c.pub, c.stopPub, c.pubDone = nil, nil, nil
	c.mu.Unlock()
	if pub == nil {
		return nil
	}
	cancel()
	<-done
	return pub
}

func layoutKinds(l publish.ServiceLayout) []clustermesh.Kind {
	switch l {
	case publish.LayoutSingle:
		return []clustermesh.Kind{clustermesh.KindServices}
	case publish.LayoutChunked:
		return []clustermesh.Kind{clustermesh.KindServicesV2}
	}
	return []clustermesh.Kind{clustermesh.KindServices, clustermesh.KindServicesV2}
}

// counts is what a consumer outside the cluster sees of it.
func (c *simCluster) counts() Counts {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := Counts{Clusters: 1, Nodes: len(c.state.Nodes), Identities: len(c.state.Identities), IPs: len(c.state.IPs), Services: len(c.state.Services)}
	for _, s := range c.state.Services {
		n.Backends += len(s.Backends)
	}
	return n
}

func (n *Counts) add(o Counts) {
	n.Clusters += o.Clusters
	n.Nodes += o.Nodes
	n.Identities += o.Identities
	n.IPs += o.IPs
	n.Services += o.Services
	n.Backends += o.Backends
}

// cloneService copies s deeply enough for the publisher to keep.
func cloneService(s *clustermesh.Service) *clustermesh.Service {
	c := *s
	c.Backends = slices.Clone(s.Backends)
	c.Ports = slices.Clone(s.Ports)
	return &c
}
