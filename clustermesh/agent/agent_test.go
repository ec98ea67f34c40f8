package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/braidmesh/braid/bpf"
	"github.com/braidmesh/braid/bpf/bpftest"
	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/agent"
	"github.com/braidmesh/braid/clustermesh/publish"
	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/kvstore/memory"
)

func cluster(name string, id int, pod, svc string) clustermesh.ClusterConfig {
	return clustermesh.ClusterConfig{Name: clustermesh.ClusterName(name), ID: clustermesh.ClusterID(id),
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix(pod)}, ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix(svc)}}
}

func webService(c clustermesh.ClusterConfig, vip string, backend netip.Addr, node, zone string, ready bool) *clustermesh.Service {
	s := &clustermesh.Service{Cluster: c.Name, Namespace: "default", Name: "web", Global: true, Shared: true,
		Affinity: clustermesh.AffinityLocal, Ports: []clustermesh.ServicePort{{Name: "http", Port: 80, Protocol: clustermesh.TCP}},
		Backends: []clustermesh.Backend{{IP: backend, Ports: []clustermesh.BackendPort{{Name: "http", Port: bpftest.BackendPort}},
			Node: node, Zone: zone, Ready: ready, Serving: ready}}}
	if vip != "" {
		s.ClusterIPs = []netip.Addr{netip.MustParseAddr(vip)}
	}
	return s
}

// runPublisher publishes c, starting from an empty state of every kind,
// until ctx is done.
func runPublisher(t testing.TB, ctx context.Context, c clustermesh.ClusterConfig, store kvstore.Store) *publish.Publisher {
	t.Helper()
	g := c.Grant()
	v, err := json.Marshal(&g)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Put(ctx, g.Key(), v, 0); err != nil {
		t.Fatal(err)
	}
	p, err := publish.New(publish.Config{Cluster: c}, store, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range clustermesh.Kinds {
		_ = p.Replace(k, nil)
	}
	go func() { _ = p.Run(ctx) }()
	return p
}

// TestAgentServesMeshServiceThroughSocketLB runs the whole pipeline:
// publishers write two clusters' state to the store, the agent mirrors it
// and programs real BPF maps, and a connect() to east's service VIP from a
// process in the agent's cgroup reaches the backend the affinity selects.
func TestAgentServesMeshServiceThroughSocketLB(t *testing.T) {
	bpftest.RequireRoot(t)
	lab := bpftest.NewLB(t)
	cg := bpftest.Cgroup(t)
	pins := bpftest.PinDir(t)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	store := memory.New()
	defer store.Close()
	east := cluster("east", 1, "10.201.1.0/24", "172.21.0.0/16")
	west := cluster("west", 2, "10.201.2.0/24", "172.22.0.0/16")

	pubEast := runPublisher(t, ctx, east, store)
	pubWest := runPublisher(t, ctx, west, store)
	if err := pubEast.Upsert(webService(east, "172.21.0.10", lab.LocalV4, "e1", "za", true)); err != nil {
		t.Fatal(err)
	}
	if err := pubWest.Upsert(webService(west, "172.22.0.10", lab.RemoteV4, "w1", "zb", true)); err != nil {
		t.Fatal(err)
	}

	a, stopAgent := runAgent(t, ctx, agent.Config{Cluster: "east", Node: "e1", Zone: "za", BPF: bpf.Config{PinDir: pins}, CgroupPath: cg}, store)
	defer stopAgent()
	bpftest.EnterCgroup(t, cg)

	vip := netip.MustParseAddrPort("172.21.0.10:80")
	expect := func(want string) {
		t.Helper()
		testenv.Eventually(t, 10*time.Second, func() error {
			name, peer, err := bpftest.Ask(lab.Client, "tcp", vip)
			if err != nil || name != want || peer != vip {
				return fmt.Errorf("connect to %v: got %q peer %v err %v, want backend %q seen as the VIP; agent status %+v", vip, name, peer, err, want, a.Snapshot())
			}
			return nil
		})
		for i := range 50 {
			name, _, err := bpftest.Ask(lab.Client, "tcp", vip)
			if err != nil || name != want {
				t.Fatalf("connection %d: %q, %v; want every connection on %q", i, name, err, want)
			}
		}
	}
	// Affinity local, a healthy local backend: all local.
	expect("local")
	// The local backend goes unready in east: all go to west's.
	start := time.Now()
	if err := pubEast.Upsert(webService(east, "172.21.0.10", lab.LocalV4, "e1", "za", false)); err != nil {
		t.Fatal(err)
	}
	expect("remote")
	t.Logf("failover to the remote backend visible to connect() after %v", time.Since(start).Round(time.Millisecond))
	// East's backend is ready again: all local.
	if err := pubEast.Upsert(webService(east, "172.21.0.10", lab.LocalV4, "e1", "za", true)); err != nil {
		t.Fatal(err)
	}
	expect("local")
	backends := func(want int) func() error {
		return func() error {
			for _, m := range a.Snapshot().Maps {
				if m.Name == "backends" && m.Entries == want {
					return nil
				}
			}
			return fmt.Errorf("want %d entries in the backends map; agent status %+v", want, a.Snapshot().Maps)
		}
	}
	testenv.Eventually(t, 10*time.Second, backends(2)) // east's and west's
	// West withdraws its service: its backend leaves the datapath, and
	// east's, ready again, keeps every connection.
	pubWest.Delete(webService(west, "", lab.RemoteV4, "", "", true).Key())
	testenv.Eventually(t, 10*time.Second, backends(1))
	expect("local")
	if snap := a.Snapshot(); !snap.Healthy {
		t.Errorf("agent unhealthy: %v", snap.Problems)
	}
}

// runAgent runs an agent of cfg on store until ctx is done or stop is
// called; stop waits for it and reports its error.
func runAgent(t *testing.T, ctx context.Context, cfg agent.Config, store kvstore.Store) (a *agent.Agent, stop func()) {
	t.Helper()
	a, err := agent.New(cfg, store, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	return a, func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	}
}
