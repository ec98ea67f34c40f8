package agent_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/braidmesh/braid/bpf"
	"github.com/braidmesh/braid/bpf/bpftest"
	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/agent"
	"github.com/braidmesh/braid/clustermesh/datapath"
	"github.com/braidmesh/braid/clustermesh/policy"
	"github.com/braidmesh/braid/clustermesh/policy/policytest"
	"github.com/braidmesh/braid/clustermesh/remote"
)

// policyWorld is policytest's world on one node: a node namespace routing
// between a namespace per endpoint, every pod-facing device with the tc
// programs, and the east agent's datapath reconciler over real maps.
type policyWorld struct {
	objs *bpf.Objects
	dp   *datapath.Reconciler
	eps  []policytest.Endpoint
	ns   map[string]netns.NsHandle
	// node is the node's own namespace: its host stack.
	node netns.NsHandle
	snap *remote.Snapshot
	prev []policy.Block
}

var (
	eastNode = netip.MustParseAddr("192.168.77.1")
	westNode = netip.MustParseAddr("192.168.78.1")
)

func newPolicyWorld(t testing.TB) *policyWorld {
	bpftest.RequireRoot(t)
	objs, err := bpf.Load(bpf.Config{PinDir: bpftest.PinDir(t), IPCacheEntries: 1024, ServiceEntries: 64, BackendEntries: 64, PolicyEntries: 4096, CTEntries: 8192, SockRevEntries: 64})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() { objs.Unpin(); objs.Close() })
	w := &policyWorld{objs: objs, eps: policytest.Endpoints(), ns: map[string]netns.NsHandle{}}
	node := bpftest.NetNS(t)
	w.node = node
	bpftest.Sysctl(t, node, "net/ipv4/ip_forward", "1")
	for i, e := range w.eps {
		pod := bpftest.NetNS(t)
		bits := 24
		if e.Identity == 0 {
			bits = 28 // X1 and X2 share a /24 but not a link
		}
		subnet := netip.PrefixFrom(e.Addr, bits).Masked()
		gw := subnet.Addr().Next()
		idx := bpftest.Veth(t, node, fmt.Sprintf("ep%d", i), []netip.Prefix{netip.PrefixFrom(gw, bits)}, pod, "eth0", []netip.Prefix{netip.PrefixFrom(e.Addr, bits)})
		bpftest.Route(t, pod, netip.MustParsePrefix("0.0.0.0/0"), gw)
		if err := bpftest.Do(node, func() error { _, err := objs.AttachTC(idx); return err }); err != nil {
			t.Fatalf("attach tc to %s: %v", e.Name, err)
		}
		t.Cleanup(func() { bpftest.Do(node, func() error { return objs.DetachTC(idx) }) })
		for _, p := range []int{80, 8080, 53} {
			bpftest.Serve(t, pod, e.Name, p)
		}
		w.ns[e.Name] = pod
	}
	w.snap = worldSnapshot(w.eps)
	w.dp, err = datapath.New(datapath.Config{Topology: datapath.Topology{Cluster: policytest.Local, ClusterID: 1, Node: "n1", NodeIPs: []netip.Addr{eastNode}}},
		datapath.MapsOf(objs), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// worldSnapshot is the mesh as east's agent sees it.
func worldSnapshot(eps []policytest.Endpoint) *remote.Snapshot {
	snap := &remote.Snapshot{Clusters: map[clustermesh.ClusterName]*remote.ClusterState{}}
	for _, c := range []struct {
		name clustermesh.ClusterName
		id   clustermesh.ClusterID
		cidr string
		host netip.Addr
	}{{policytest.Local, 1, "10.1.0.0/16", eastNode}, {policytest.Remote, 2, "10.2.0.0/16", westNode}} {
		cs := &remote.ClusterState{Config: clustermesh.ClusterConfig{Name: c.name, ID: c.id, PodCIDRs: []netip.Prefix{netip.MustParsePrefix(c.cidr)}},
			Synced: true, Identities: map[clustermesh.NumericIdentity]clustermesh.Identity{}, IPs: map[netip.Prefix]clustermesh.IPEntry{}}
		for _, e := range eps {
			if e.Cluster != c.name {
				continue
			}
			cs.Identities[e.Identity] = clustermesh.Identity{ID: e.Identity, Cluster: c.name, Labels: policytest.IdentityLabels(e)}
			p := netip.PrefixFrom(e.Addr, 32)
			cs.IPs[p] = clustermesh.IPEntry{Prefix: p, Cluster: c.name, Identity: e.Identity, HostIP: c.host, NamedPorts: e.Ports}
		}
		snap.Clusters[c.name] = cs
	}
	return snap
}

// apply compiles pols as east's agent does and reconciles the maps.
func (w *policyWorld) apply(t testing.TB, pols []*networkingv1.NetworkPolicy) {
	t.Helper()
	w.applyAs(t, policytest.Local, pols)
}

// applyAs compiles pols as an agent of cluster c does (its rules isolate
// and admit c's pods only) and reconciles the maps. Every endpoint is
// behind this node's programs, which enforce by identity: a west policy
// is enforced here as west's nodes would.
func (w *policyWorld) applyAs(t testing.TB, c clustermesh.ClusterName, pols []*networkingv1.NetworkPolicy) {
	t.Helper()
	want := agent.DesiredState(w.snap, policytest.Local, nil)
	res := agent.ApplyPolicy(&want, w.snap, c, pols, w.prev)
	if len(res.Problems) > 0 {
		t.Fatalf("compile: %v", res.Problems)
	}
	w.prev = res.Blocks
	if err := w.dp.Reconcile(context.Background(), want); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
}

// forgetFlows deletes every tracked flow, so each scenario starts clean.
func (w *policyWorld) forgetFlows(t *testing.T) {
	t.Helper()
	ct, err := w.objs.CT.Dump()
	if err != nil {
		t.Fatal(err)
	}
	keys := make([]bpf.CTKey, 0, len(ct))
	for k := range ct {
		keys = append(keys, k)
	}
	if _, err := w.objs.CT.BatchDelete(keys); err != nil {
		t.Fatal(err)
	}
}

// probe reports whether a connection from ns to the server at to answers.
func probe(ns netns.NsHandle, p policytest.Probe, to netip.Addr, timeout time.Duration) error {
	network := strings.ToLower(string(p.Protocol))
	var c net.Conn
	err := bpftest.Do(ns, func() (err error) {
		c, err = net.DialTimeout(network, netip.AddrPortFrom(to, p.Port).String(), timeout)
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if network == "udp" {
		if _, err := c.Write([]byte("?")); err != nil {
			return err
		}
		buf := make([]byte, 64)
		_, err := c.Read(buf)
		return err
	}
	_, err = bufio.NewReader(c).ReadString('\n')
	return err
}

// deniedWait is how long a probe expected to be dropped waits for an
// answer; allowedWait bounds each attempt of a probe expected to pass,
// which is retried, so a loaded machine cannot fail it.
const (
	deniedWait  = 700 * time.Millisecond
	allowedWait = 3 * time.Second
	attempts    = 3
)

// TestPolicyProbeMatrix applies every policytest scenario in turn to one
// node's real datapath and probes TCP and UDP between every pair of
// endpoints, in parallel; every cell must match the scenario's table.
// The node's own host stack (the kubelet's probes) reaches every local pod
// in every scenario: policy does not apply to it.
func TestPolicyProbeMatrix(t *testing.T) {
	w := newPolicyWorld(t)
	for _, sc := range policytest.Scenarios() {
		t.Run(sc.Name, func(t *testing.T) {
			want, err := sc.Verdicts()
			if err != nil {
				t.Fatal(err)
			}
			w.applyAs(t, sc.Enforcer(), sc.Policies)
			w.forgetFlows(t)
			var mu sync.Mutex
			var wg sync.WaitGroup
			for _, src := range w.eps {
				for _, dst := range w.eps {
					if src.Name == dst.Name {
						continue
					}
					for i, p := range policytest.Probes {
						allowed := want[[2]string{src.Name, dst.Name}][i]
						wg.Add(1)
						go func() {
							defer wg.Done()
							var err error
							if allowed {
								for range attempts {
									if err = probe(w.ns[src.Name], p, dst.Addr, allowedWait); err == nil {
										break
									}
								}
							} else {
								err = probe(w.ns[src.Name], p, dst.Addr, deniedWait)
							}
							if got := err == nil; got != allowed {
								mu.Lock()
								t.Errorf("%s -> %s %s: connected=%v (%v), want %v", src.Name, dst.Name, p, got, err, allowed)
								mu.Unlock()
							}
						}()
					}
				}
			}
			for _, dst := range w.eps {
				if dst.Cluster != policytest.Local {
					continue // only this node's pods are behind its tc programs
				}
				for _, p := range policytest.Probes {
					wg.Add(1)
					go func() {
						defer wg.Done()
						var err error
						for range attempts {
							if err = probe(w.node, p, dst.Addr, allowedWait); err == nil {
								break
							}
						}
						if err != nil {
							mu.Lock()
							t.Errorf("host -> %s %s: %v, want a connection (the pod's own node is always allowed)", dst.Name, p, err)
							mu.Unlock()
						}
					}()
				}
			}
			wg.Wait()
		})
	}
}

// TestPolicyChangeDropsEstablishedFlow: a flow that a policy change denies
// is dropped on its next packet, and a pod whose identity changes (a
// namespace relabel) to one the policy still allows keeps its flow.
func TestPolicyChangeDropsEstablishedFlow(t *testing.T) {
	w := newPolicyWorld(t)
	byName := map[string]policytest.Endpoint{}
	for _, e := range w.eps {
		byName[e.Name] = e
	}
	scenario := func(name string) policytest.Scenario {
		for _, s := range policytest.Scenarios() {
			if s.Name == name {
				return s
			}
		}
		t.Fatalf("no scenario %q", name)
		return policytest.Scenario{}
	}
	dbFromWeb := scenario("podSelector peer stays in its namespace and cluster").Policies
	w.apply(t, dbFromWeb)

	var conn net.Conn
	if err := bpftest.Do(w.ns["A"], func() (err error) {
		conn, err = net.DialTimeout("tcp", netip.AddrPortFrom(byName["D"].Addr, 8080).String(), allowedWait)
		return err
	}); err != nil {
		t.Fatalf("A -> D: %v", err)
	}
	// Before the servers stop (their cleanup waits for every connection
	// to end), let the flow's FIN through again.
	t.Cleanup(func() {
		w.apply(t, nil)
		conn.Close()
	})
	r := bufio.NewReader(conn)
	if _, err := r.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	echo := func(timeout time.Duration) error {
		conn.SetDeadline(time.Now().Add(timeout))
		if _, err := conn.Write([]byte("ping\n")); err != nil {
			return err
		}
		line, err := r.ReadString('\n')
		if err == nil && line != "ping\n" {
			err = fmt.Errorf("echo %q", line)
		}
		return err
	}
	if err := echo(allowedWait); err != nil {
		t.Fatalf("echo before any change: %v", err)
	}

	// Namespace a relabelled: A's pods take a new identity, still app=web
	// in namespace a. The flow survives.
	a := w.snap.Clusters[policytest.Local]
	old := byName["A"].Identity
	relabelled := clustermesh.NumericIdentity(1<<16 | 99)
	lbls := policytest.IdentityLabels(byName["A"])
	lbls[clustermesh.NamespaceLabelPrefix+"env"] = "prod"
	a.Identities[relabelled] = clustermesh.Identity{ID: relabelled, Cluster: policytest.Local, Labels: lbls}
	delete(a.Identities, old)
	pfx := netip.PrefixFrom(byName["A"].Addr, 32)
	e := a.IPs[pfx]
	e.Identity = relabelled
	a.IPs[pfx] = e
	w.apply(t, dbFromWeb)
	if err := echo(allowedWait); err != nil {
		t.Fatalf("echo after A's identity changed from %d to %d: %v", old, relabelled, err)
	}

	// Deny every ingress into namespace a: the next packet is dropped.
	w.apply(t, scenario("default deny ingress in a").Policies)
	err := echo(deniedWait)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("echo after the flow was denied: %v, want a timeout", err)
	}
	drops, err := w.objs.PolicyDrops.Lookup(bpf.DropKey{Identity: uint32(byName["D"].Identity), Dir: bpf.PolicyIngress, Reason: bpf.DropReasonPolicy})
	if err != nil || drops == 0 {
		t.Errorf("drops into D: %d, %v; want some", drops, err)
	}
}
