package agent

import (
	"net/netip"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/datapath"
	"github.com/braidmesh/braid/clustermesh/remote"
)

func TestDesiredStateMergesSharedBackendsAcrossClusters(t *testing.T) {
	ports := []clustermesh.ServicePort{{Name: "http", Port: 80, Protocol: clustermesh.TCP}}
	backend := func(ip, node, zone string, ready bool) clustermesh.Backend {
		return clustermesh.Backend{IP: netip.MustParseAddr(ip), Ports: []clustermesh.BackendPort{{Name: "http", Port: 8080}},
			Node: node, Zone: zone, Ready: ready, Serving: ready}
	}
	snap := &remote.Snapshot{Clusters: map[clustermesh.ClusterName]*remote.ClusterState{
		"east": {Config: clustermesh.ClusterConfig{Name: "east", ID: 1}, Services: map[string]clustermesh.Service{
			"default/web": {Cluster: "east", Namespace: "default", Name: "web", Global: true, Shared: true, Affinity: clustermesh.AffinityLocal,
				ClusterIPs: []netip.Addr{netip.MustParseAddr("172.21.0.10")}, Ports: ports,
				Backends: []clustermesh.Backend{backend("10.1.0.2", "e1", "za", true), backend("10.1.0.3", "e2", "zb", false)}},
			"default/local-only": {Cluster: "east", Namespace: "default", Name: "local-only", Global: false, Shared: true, Affinity: clustermesh.AffinityNone,
				ClusterIPs: []netip.Addr{netip.MustParseAddr("172.21.0.11")}, Ports: ports},
		}, IPs: map[netip.Prefix]clustermesh.IPEntry{
			netip.MustParsePrefix("10.1.0.2/32"): {Prefix: netip.MustParsePrefix("10.1.0.2/32"), Cluster: "east", Identity: 1<<16 + 1, HostIP: netip.MustParseAddr("192.168.1.1")},
		}},
		"west": {Config: clustermesh.ClusterConfig{Name: "west", ID: 2}, Services: map[string]clustermesh.Service{
			"default/web": {Cluster: "west", Namespace: "default", Name: "web", Global: true, Shared: true, Affinity: clustermesh.AffinityNone,
				ClusterIPs: []netip.Addr{netip.MustParseAddr("172.22.0.10")}, Ports: ports,
				Backends: []clustermesh.Backend{backend("10.2.0.2", "w1", "za", true)}},
		}, IPs: map[netip.Prefix]clustermesh.IPEntry{
			netip.MustParsePrefix("10.2.0.2/32"): {Prefix: netip.MustParsePrefix("10.2.0.2/32"), Cluster: "west", Identity: 2<<16 + 1, HostIP: netip.MustParseAddr("192.168.2.1")},
		}},
		"north": {Config: clustermesh.ClusterConfig{Name: "north", ID: 3}, Services: map[string]clustermesh.Service{
			"default/web": {Cluster: "north", Namespace: "default", Name: "web", Global: true, Shared: false, Affinity: clustermesh.AffinityNone, Ports: ports},
		}},
	}}
	want := DesiredState(snap, "east", nil)
	if len(want.IPCache) != 2 || want.ClusterIDs["west"] != 2 {
		t.Fatalf("ipcache %v cluster IDs %v", want.IPCache, want.ClusterIDs)
	}
	if len(want.Services) != 1 {
		t.Fatalf("got %d services, want only the global one: %+v", len(want.Services), want.Services)
	}
	svc := want.Services[0]
	if svc.Affinity != clustermesh.AffinityLocal || len(svc.Frontends) != 1 || svc.Frontends[0].Addr != netip.MustParseAddrPort("172.21.0.10:80") {
		t.Fatalf("service %+v: want east's VIP and affinity", svc)
	}
	wantBackends := []datapath.Backend{
		{Addr: netip.MustParseAddrPort("10.1.0.2:8080"), Cluster: "east", Node: "e1", Zone: "za", Healthy: true},
		{Addr: netip.MustParseAddrPort("10.1.0.3:8080"), Cluster: "east", Node: "e2", Zone: "zb", Healthy: false},
		{Addr: netip.MustParseAddrPort("10.2.0.2:8080"), Cluster: "west", Node: "w1", Zone: "za", Healthy: true},
	}
	if len(svc.Backends) != len(wantBackends) {
		t.Fatalf("backends %+v, want %+v", svc.Backends, wantBackends)
	}
	for i := range wantBackends {
		if svc.Backends[i] != wantBackends[i] {
			t.Errorf("backend %d = %+v, want %+v", i, svc.Backends[i], wantBackends[i])
		}
	}

	// Gossip finds w1 unreachable, west's nodes are in east's region, and
	// the service asks for close backends: the backend is marked, nothing
	// is removed, the ipcache keeps w1's pod.
	west := *snap.Clusters["west"]
	west.Nodes = map[string]clustermesh.Node{"w1": {Name: "w1", Cluster: "west", Region: "eu"}}
	snap.Clusters["west"] = &west
	east := *snap.Clusters["east"]
	east.Services = map[string]clustermesh.Service{"default/web": east.Services["default/web"]}
	web := east.Services["default/web"]
	web.Topology = clustermesh.TopologyZone
	east.Services["default/web"] = web
	snap.Clusters["east"] = &east
	want = DesiredState(snap, "east", func(c clustermesh.ClusterName, node string) bool { return c == "west" && node == "w1" })
	if len(want.IPCache) != 2 {
		t.Errorf("gossip removed ipcache entries: %v", want.IPCache)
	}
	svc = want.Services[0]
	w1 := svc.Backends[2]
	if svc.Topology != clustermesh.TopologyZone || !w1.NodeUnreachable || w1.Region != "eu" || svc.Backends[0].NodeUnreachable {
		t.Errorf("service %+v: want topology zone, only w1 unreachable, w1 in region eu", svc)
	}
}

// TestDesiredStateServesClusterSetIP: a local import's ClusterSetIP is
// served per port with the backends of the clusters the import names for
// that port (the loser of a port conflict serves nothing on it), whether or
// not the cluster has the service itself.
func TestDesiredStateServesClusterSetIP(t *testing.T) {
	exported := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	backend := func(ip string, port uint16) clustermesh.Backend {
		return clustermesh.Backend{IP: netip.MustParseAddr(ip), Ports: []clustermesh.BackendPort{{Name: "tcp", Port: port}}, Ready: true, Serving: true}
	}
	tcp := clustermesh.ServicePort{Name: "tcp", Port: 42, Protocol: clustermesh.TCP}
	snap := &remote.Snapshot{Clusters: map[clustermesh.ClusterName]*remote.ClusterState{
		"east": {Config: clustermesh.ClusterConfig{Name: "east", ID: 1}, Services: map[string]clustermesh.Service{
			"default/hello": {Cluster: "east", Namespace: "default", Name: "hello", Global: true, Affinity: clustermesh.AffinityNone,
				Ports: []clustermesh.ServicePort{}, Import: &clustermesh.ImportSpec{IPs: []netip.Addr{netip.MustParseAddr("172.21.128.7")},
					Ports: []clustermesh.ServicePort{tcp}, Clusters: map[string][]clustermesh.ClusterName{"tcp": {"west"}}}},
		}},
		"west": {Config: clustermesh.ClusterConfig{Name: "west", ID: 2}, Services: map[string]clustermesh.Service{
			"default/hello": {Cluster: "west", Namespace: "default", Name: "hello", Global: true, Shared: true, Affinity: clustermesh.AffinityNone,
				ExportedAt: exported, Ports: []clustermesh.ServicePort{tcp}, Backends: []clustermesh.Backend{backend("10.2.0.2", 8042)}},
		}},
		"north": {Config: clustermesh.ClusterConfig{Name: "north", ID: 3}, Services: map[string]clustermesh.Service{
			// Exports port "tcp" as 43: a conflict it lost, so not named for "tcp".
			"default/hello": {Cluster: "north", Namespace: "default", Name: "hello", Global: true, Shared: true, Affinity: clustermesh.AffinityNone,
				ExportedAt: exported.Add(time.Second), Ports: []clustermesh.ServicePort{{Name: "tcp", Port: 43, Protocol: clustermesh.TCP}},
				Backends: []clustermesh.Backend{backend("10.3.0.2", 8043)}},
		}},
	}}
	want := DesiredState(snap, "east", nil)
	if len(want.Services) != 1 {
		t.Fatalf("services %+v, want the ClusterSetIP's IPv4 one", want.Services)
	}
	svc := want.Services[0]
	if len(svc.Frontends) != 1 || svc.Frontends[0].Addr != netip.MustParseAddrPort("172.21.128.7:42") {
		t.Fatalf("frontends %+v", svc.Frontends)
	}
	if len(svc.Backends) != 1 || svc.Backends[0].Addr != netip.MustParseAddrPort("10.2.0.2:8042") || svc.Backends[0].Cluster != "west" {
		t.Fatalf("backends %+v, want west's only", svc.Backends)
	}
}
