package lab

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"

	"github.com/vishvananda/netlink"

	"github.com/braidmesh/braid/clustermesh"
)

// Fixed ports on the underlay's host address (unique per run, so two labs
// never clash): apiserver i listens on APIServerPort+i, operator i serves
// its status page on OperatorStatusPort+i (and its relay, if it runs one,
// on RelayPort+i, its relay's etcd metrics on RelayMetricsPort+i); each agent serves its status on AgentStatusPort at its
// node's address.
const (
	APIServerPort      = 6443
	BrokerPort         = 2379
	BrokerPeerPort     = 2380
	BrokerJoinPort     = 2381
	OperatorStatusPort = 9876
	AgentStatusPort    = 9877
	RelayPort          = 2479
	RelayMetricsPort   = 2579
)

// MaxClusters and MaxNodes bound a lab: cluster address ranges are derived
// from the cluster index, node addresses from a /24 underlay.
const (
	MaxClusters = 16
	MaxNodes    = 200
)

// clusterNames are the first cluster names; more are "cluster5", ...
var clusterNames = []string{"east", "west", "north", "south"}

// ClusterName returns the name of cluster i (0-based).
func ClusterName(i int) clustermesh.ClusterName {
	if i < len(clusterNames) {
		return clustermesh.ClusterName(clusterNames[i])
	}
	return clustermesh.ClusterName("cluster" + strconv.Itoa(i+1))
}

// Plan is every name and address of one run, derived from the run ID and
// the sizes, so a record of it is enough to clean up after a killed run.
type Plan struct {
	Run        string       `json:"run"`
	Dir        string       `json:"dir"`
	Bridge     string       `json:"bridge"`
	Underlay   netip.Prefix `json:"underlay"`
	HostIP     netip.Addr   `json:"hostIP"`
	CgroupRoot string       `json:"cgroupRoot"` // <cgroup2>/braid-lab-<run>
	PinRoot    string       `json:"pinRoot"`    // /sys/fs/bpf/braid-lab-<run>
	Clusters   []ClusterPlan
}

type ClusterPlan struct {
	Name        clustermesh.ClusterName `json:"name"`
	ID          clustermesh.ClusterID   `json:"id"`
	PodCIDR     netip.Prefix            `json:"podCIDR"`
	ServiceCIDR netip.Prefix            `json:"serviceCIDR"`
	Dir         string                  `json:"dir"`
	Kubeconfig  string                  `json:"kubeconfig"`
	APIServer   string                  `json:"apiServer"`
	Status      string                  `json:"status"` // operator status page URL
	Nodes       []NodePlan              `json:"nodes"`
}

type NodePlan struct {
	Name      string     `json:"name"`
	Zone      string     `json:"zone"`
	IP        netip.Addr `json:"ip"`
	Netns     string     `json:"netns"`
	HostVeth  string     `json:"hostVeth"`
	WireGuard string     `json:"wireguard"`
	Cgroup    string     `json:"cgroup"`
	PinDir    string     `json:"pinDir"`
	Dir       string     `json:"dir"`
	Status    string     `json:"status"` // agent status page URL
}

func newRunID() string {
	var b [2]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// newPlan lays out a run of clusters × nodes under dir.
func newPlan(run, dir, cgroup2 string, clusters, nodes int) (*Plan, error) {
	if clusters < 1 || clusters > MaxClusters {
		return nil, fmt.Errorf("--clusters %d: want 1..%d", clusters, MaxClusters)
	}
	if nodes < 1 || clusters*nodes > MaxNodes {
		return nil, fmt.Errorf("--nodes %d: want at least 1 and at most %d nodes in all", nodes, MaxNodes)
	}
	underlay, err := freeUnderlay()
	if err != nil {
		return nil, err
	}
	host := underlay.Addr().Next()
	p := &Plan{
		Run:        run,
		Dir:        filepath.Join(dir, run),
		Bridge:     "bl" + run,
		Underlay:   underlay,
		HostIP:     host,
		CgroupRoot: filepath.Join(cgroup2, "braid-lab-"+run),
		PinRoot:    "/sys/fs/bpf/braid-lab-" + run,
	}
	ip := underlay.Addr()
	for i := 0; i < 10; i++ {
		ip = ip.Next()
	}
	for c := range clusters {
		name := ClusterName(c)
		cp := ClusterPlan{
			Name:        name,
			ID:          clustermesh.ClusterID(c + 1),
			PodCIDR:     netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(100 + c), 0, 0}), 16),
			ServiceCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{172, byte(16 + c), 0, 0}), 16),
			Dir:         filepath.Join(p.Dir, string(name)),
			APIServer:   "https://" + net.JoinHostPort(host.String(), strconv.Itoa(APIServerPort+c)),
			Status:      "http://" + net.JoinHostPort(host.String(), strconv.Itoa(OperatorStatusPort+c)),
		}
		cp.Kubeconfig = filepath.Join(cp.Dir, "admin.kubeconfig")
		for n := range nodes {
			ip = ip.Next()
			nodeName := fmt.Sprintf("%s-%d", name, n)
			cp.Nodes = append(cp.Nodes, NodePlan{
				Name:      nodeName,
				Zone:      fmt.Sprintf("%s-zone-%c", name, 'a'+n%3),
				IP:        ip,
				Netns:     fmt.Sprintf("bl%s-%s", run, nodeName),
				HostVeth:  fmt.Sprintf("bl%sc%dn%d", run, c, n),
				WireGuard: fmt.Sprintf("bw%sc%dn%d", run, c, n),
				Cgroup:    filepath.Join(p.CgroupRoot, nodeName),
				PinDir:    filepath.Join(p.PinRoot, nodeName),
				Dir:       filepath.Join(cp.Dir, "nodes", nodeName),
				Status:    "http://" + net.JoinHostPort(ip.String(), strconv.Itoa(AgentStatusPort)),
			})
		}
		p.Clusters = append(p.Clusters, cp)
	}
	return p, nil
}

// Region is the region label of every lab node.
const Region = "lab"

// freeUnderlay picks a /24 in 10.250.0.0/16 that no route on this machine
// overlaps, starting at a random one.
func freeUnderlay() (netip.Prefix, error) {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("list routes: %w", err)
	}
	var b [1]byte
	_, _ = rand.Read(b[:])
	for i := range 256 {
		cand := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 250, b[0] + byte(i), 0}), 24)
		if !overlapsAny(cand, routes) {
			return cand, nil
		}
	}
	return netip.Prefix{}, errors.New("no free /24 for the underlay in 10.250.0.0/16")
}

func overlapsAny(p netip.Prefix, routes []netlink.Route) bool {
	for _, r := range routes {
		if r.Dst == nil {
			continue // the default route covers everything; a more specific route wins
		}
		a, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		if ones == 0 {
			continue // the default route: a more specific route wins
		}
		if netip.PrefixFrom(a.Unmap(), ones).Overlaps(p) {
			return true
		}
	}
	return false
}
