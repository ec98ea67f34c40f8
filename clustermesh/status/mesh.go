package status

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/braidmesh/braid/clustermesh"
)

// MeshAPIVersion versions the Mesh document; fields are only ever added
// within a version.
const MeshAPIVersion = "braid.io/mesh/v1"

// Mesh is the whole mesh as read from the kvstore: what the broker's page
// shows and /api/mesh serves. Durations are in seconds and computed at
// Time, so the document reads the same on any clock.
type Mesh struct {
	APIVersion string `json:"apiVersion"`
	// Source says who serves it: "broker", or "operator" of View.
	Source string                  `json:"source"`
	View   clustermesh.ClusterName `json:"view,omitempty"`
	Time   time.Time               `json:"time"`
	// Ready is false until the first full read of the kvstore.
	Ready    bool            `json:"ready"`
	Clusters []MeshCluster   `json:"clusters"`
	Services []GlobalService `json:"services"`
	// Errors are the most recent rejected entries and watch errors, newest
	// first.
	Errors []MeshError `json:"errors"`
}

// MeshCluster is one cluster of the mesh.
type MeshCluster struct {
	Name         clustermesh.ClusterName `json:"name"`
	ID           clustermesh.ClusterID   `json:"id"`
	PodCIDRs     []netip.Prefix          `json:"podCIDRs,omitempty"`
	ServiceCIDRs []netip.Prefix          `json:"serviceCIDRs,omitempty"`
	// Healthy is true when every kind is synced and no node reports a
	// problem; Problems say what is not, each with a hint.
	Healthy  bool     `json:"healthy"`
	Problems []string `json:"problems,omitempty"`
	// Synced says, per kind, whether the operator finished publishing it;
	// Entries counts what it published.
	Synced  map[clustermesh.Kind]bool `json:"synced"`
	Entries map[clustermesh.Kind]int  `json:"entries"`
	// LastUpdate is when any of the cluster's entries last changed, as
	// seen by this reader; SyncAgeSeconds is Time minus it (-1: never).
	LastUpdate     time.Time  `json:"lastUpdate,omitzero"`
	SyncAgeSeconds float64    `json:"syncAgeSeconds"`
	Nodes          []MeshNode `json:"nodes"`
}

// MeshNode is one node, with the status its agent publishes.
type MeshNode struct {
	Name string       `json:"name"`
	IPs  []netip.Addr `json:"ips"`
	// Agent is false when the node's agent publishes no status.
	Agent bool `json:"agent"`
	// StatusAgeSeconds is how old the agent's status is.
	StatusAgeSeconds float64      `json:"statusAgeSeconds,omitempty"`
	Synced           bool         `json:"synced"`
	Tunnels          []MeshTunnel `json:"tunnels,omitempty"`
	GossipMembers    int          `json:"gossipMembers,omitempty"`
	GossipAlive      int          `json:"gossipAlive,omitempty"`
	StrictDrops      uint64       `json:"strictDrops,omitempty"`
	Problems         []string     `json:"problems,omitempty"`
}

// MeshTunnel is one WireGuard peer of a node.
type MeshTunnel struct {
	Peer string `json:"peer"` // cluster/node
	// HandshakeAgeSeconds is -1 before the first handshake.
	HandshakeAgeSeconds float64 `json:"handshakeAgeSeconds"`
	RxBytes             int64   `json:"rxBytes"`
	TxBytes             int64   `json:"txBytes"`
}

// GlobalService is one global service across the clusters that publish it.
type GlobalService struct {
	Namespace string               `json:"namespace"`
	Name      string               `json:"name"`
	Affinity  clustermesh.Affinity `json:"affinity"`
	// Backends lists, per publishing cluster, its ready and total backends.
	Backends []ClusterBackends `json:"backends"`
	// Tiers says, per cluster that publishes the service, which backends
	// its clients use under the affinity: "local", "remote" or "all".
	Tiers map[clustermesh.ClusterName]string `json:"tiers"`
	// Conflicts name clusters that publish the service inconsistently.
	Conflicts []string `json:"conflicts,omitempty"`
}

// ClusterBackends counts one cluster's backends of a service.
type ClusterBackends struct {
	Cluster clustermesh.ClusterName `json:"cluster"`
	Ready   int                     `json:"ready"`
	Total   int                     `json:"total"`
	// Shared false: the cluster consumes the service but exports none.
	Shared bool `json:"shared"`
}

// MeshError is one recent problem with what a cluster wrote.
type MeshError struct {
	Time    time.Time               `json:"time"`
	Cluster clustermesh.ClusterName `json:"cluster,omitempty"`
	Message string                  `json:"message"`
}

// meshState is what a MeshWatcher has read; build turns it into a Mesh.
type meshState struct {
	configs    map[clustermesh.ClusterName]clustermesh.ClusterConfig
	raw        map[string][]byte // every other key under Root
	lastUpdate map[clustermesh.ClusterName]time.Time
}

// errorSink receives validation errors met while building.
type errorSink func(cluster clustermesh.ClusterName, key string, err error)

func ageSeconds(now, t time.Time) float64 {
	if t.IsZero() {
		return -1
	}
	return now.Sub(t).Round(time.Millisecond).Seconds()
}

// build computes the mesh from st. Entries failing validation are left out
// and reported to bad.
func (st *meshState) build(now time.Time, bad errorSink) ([]MeshCluster, []GlobalService) {
	clusters := map[clustermesh.ClusterName]*MeshCluster{}
	for name, cfg := range st.configs {
		clusters[name] = &MeshCluster{
			Name: name, ID: cfg.ID, PodCIDRs: cfg.PodCIDRs, ServiceCIDRs: cfg.ServiceCIDRs,
			Synced: map[clustermesh.Kind]bool{}, Entries: map[clustermesh.Kind]int{},
			LastUpdate: st.lastUpdate[name], SyncAgeSeconds: ageSeconds(now, st.lastUpdate[name]),
		}
	}
	nodeStatus := map[string]clustermesh.NodeStatus{} // cluster/node
	services := map[string][]clustermesh.Service{}    // namespace/name
	keys := make([]string, 0, len(st.raw))
	for k := range st.raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		value := st.raw[key]
		cluster := clusterOfKey(key)
		cfg, ok := st.configs[cluster]
		if !ok {
			continue // a departed cluster's leftovers, or one not yet registered
		}
		mc := clusters[cluster]
		if strings.HasPrefix(key, clustermesh.NodeStatusPrefix(cluster)) {
			s, err := clustermesh.DecodeNodeStatus(&cfg, key, value)
			if err != nil {
				bad(cluster, key, err)
				continue
			}
			nodeStatus[string(cluster)+"/"+s.Node] = s
			continue
		}
		pk, err := clustermesh.ParseKey(key)
		if err != nil {
			bad(cluster, key, err)
			continue
		}
		switch {
		case pk.Synced:
			kind, _, err := clustermesh.DecodeSyncMarker(&cfg, key, value)
			if err != nil {
				bad(cluster, key, err)
				continue
			}
			mc.Synced[kind] = true
		case pk.Kind == clustermesh.KindNodes:
			n, err := clustermesh.DecodeNode(&cfg, key, value)
			if err != nil {
				bad(cluster, key, err)
				continue
			}
			mc.Entries[pk.Kind]++
			mc.Nodes = append(mc.Nodes, MeshNode{Name: n.Name, IPs: n.IPs})
		case pk.Kind == clustermesh.KindServices:
			s, err := clustermesh.DecodeService(&cfg, key, value)
			if err != nil {
				bad(cluster, key, err)
				continue
			}
			mc.Entries[pk.Kind]++
			services[s.NamespacedName()] = append(services[s.NamespacedName()], s)
		case pk.Kind != "":
			// Identities and IPs are counted, not shown; the agents
			// validate them before they reach a map.
			mc.Entries[pk.Kind]++
		}
	}

	out := make([]MeshCluster, 0, len(clusters))
	for _, mc := range clusters {
		for i := range mc.Nodes {
			n := &mc.Nodes[i]
			s, ok := nodeStatus[string(mc.Name)+"/"+n.Name]
			if !ok {
				continue
			}
			n.Agent, n.Synced = true, s.Synced
			n.StatusAgeSeconds = ageSeconds(now, s.Time)
			n.GossipMembers, n.GossipAlive, n.StrictDrops, n.Problems = s.GossipMembers, s.GossipAlive, s.StrictDrops, s.Problems
			for _, p := range s.Peers {
				n.Tunnels = append(n.Tunnels, MeshTunnel{Peer: p.String(), HandshakeAgeSeconds: ageSeconds(now, p.LastHandshake), RxBytes: p.RxBytes, TxBytes: p.TxBytes})
			}
			for _, p := range s.Problems {
				mc.Problems = append(mc.Problems, fmt.Sprintf("node %s: %s", n.Name, p))
			}
		}
		slices.SortFunc(mc.Nodes, func(a, b MeshNode) int { return strings.Compare(a.Name, b.Name) })
		var unsynced []string
		for _, k := range clustermesh.Kinds {
			if !mc.Synced[k] {
				unsynced = append(unsynced, string(k))
			}
		}
		if len(unsynced) > 0 {
			mc.Problems = append(mc.Problems, fmt.Sprintf("%s not synced yet: is the cluster's braid-operator running and connected? (braid status --context ...)", strings.Join(unsynced, ", ")))
		}
		mc.Healthy = len(mc.Problems) == 0
		out = append(out, *mc)
	}
	slices.SortFunc(out, func(a, b MeshCluster) int { return strings.Compare(string(a.Name), string(b.Name)) })
	return out, globalServices(services)
}

// clusterOfKey is the cluster segment of a key under Root.
func clusterOfKey(key string) clustermesh.ClusterName {
	rest := strings.TrimPrefix(key, clustermesh.Root)
	_, rest, _ = strings.Cut(rest, "/")
	c, _, _ := strings.Cut(rest, "/")
	return clustermesh.ClusterName(c)
}

func globalServices(byName map[string][]clustermesh.Service) []GlobalService {
	out := make([]GlobalService, 0, len(byName))
	for _, svcs := range byName {
		slices.SortFunc(svcs, func(a, b clustermesh.Service) int { return strings.Compare(string(a.Cluster), string(b.Cluster)) })
		first := svcs[0]
		g := GlobalService{Namespace: first.Namespace, Name: first.Name, Affinity: first.Affinity, Tiers: map[clustermesh.ClusterName]string{}}
		if g.Affinity == "" {
			g.Affinity = clustermesh.AffinityNone
		}
		totalReady := 0
		for _, s := range svcs {
			cb := ClusterBackends{Cluster: s.Cluster, Total: len(s.Backends), Shared: s.Shared}
			for _, b := range s.Backends {
				if b.Ready {
					cb.Ready++
				}
			}
			totalReady += cb.Ready
			g.Backends = append(g.Backends, cb)
			if s.Affinity != first.Affinity && s.Affinity != "" {
				g.Conflicts = append(g.Conflicts, fmt.Sprintf("affinity %s in %s, %s in %s", first.Affinity, first.Cluster, s.Affinity, s.Cluster))
			}
			if !samePorts(first.Ports, s.Ports) {
				g.Conflicts = append(g.Conflicts, fmt.Sprintf("ports differ between %s and %s: clients may reach a port a backend does not serve", first.Cluster, s.Cluster))
			}
			if s.Headless != first.Headless {
				g.Conflicts = append(g.Conflicts, fmt.Sprintf("headless in one of %s and %s only", first.Cluster, s.Cluster))
			}
		}
		for _, cb := range g.Backends {
			remoteReady := totalReady - cb.Ready
			tier := "all"
			switch g.Affinity {
			case clustermesh.AffinityLocal:
				if cb.Ready > 0 {
					tier = "local"
				} else {
					tier = "remote"
				}
			case clustermesh.AffinityRemote:
				if remoteReady > 0 {
					tier = "remote"
				} else {
					tier = "local"
				}
			}
			g.Tiers[cb.Cluster] = tier
		}
		out = append(out, g)
	}
	slices.SortFunc(out, func(a, b GlobalService) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	return out
}

func samePorts(a, b []clustermesh.ServicePort) bool {
	key := func(ps []clustermesh.ServicePort) []string {
		out := make([]string, len(ps))
		for i, p := range ps {
			out[i] = fmt.Sprintf("%s/%d/%s", p.Name, p.Port, p.Protocol)
		}
		slices.Sort(out)
		return out
	}
	return slices.Equal(key(a), key(b))
}
