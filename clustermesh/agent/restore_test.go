package agent_test

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/braidmesh/braid/bpf"
	"github.com/braidmesh/braid/bpf/bpftest"
	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/agent"
	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/kvstore/memory"
)

// heldStore holds back every watch under prefix until release is closed:
// a cluster whose state the agent cannot list yet.
type heldStore struct {
	kvstore.Store
	prefix  string
	release <-chan struct{}
}

func (s heldStore) Watch(ctx context.Context, prefix string) <-chan kvstore.Event {
	if !strings.HasPrefix(prefix, s.prefix) {
		return s.Store.Watch(ctx, prefix)
	}
	out := make(chan kvstore.Event)
	go func() {
		defer close(out)
		select {
		case <-s.release:
		case <-ctx.Done():
			return
		}
		for ev := range s.Store.Watch(ctx, prefix) {
			select {
			case out <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

// TestRestartKeepsPinnedMaps: an agent enforcing a policy that admits
// west's api pods to east's db stops; a new agent starts on the same
// pinned maps while west's state cannot be listed yet. Until it knows west
// it leaves the maps exactly as they were (a partial view would drop
// west's pods from the ipcache and their allow rule from the policy
// trie); once it does, it reports the same policy revision enforced
// without having written a single ipcache or policy entry: it kept the
// address blocks' identities it found pinned (a fresh compile would
// number them otherwise, as the first agent added a block that sorts
// first).
func TestRestartKeepsPinnedMaps(t *testing.T) {
	bpftest.RequireRoot(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	store := memory.New()
	defer store.Close()
	east := cluster("east", 1, "10.201.1.0/24", "172.21.0.0/16")
	west := cluster("west", 2, "10.201.2.0/24", "172.22.0.0/16")
	pubEast := runPublisher(t, ctx, east, store)
	pubWest := runPublisher(t, ctx, west, store)
	db := &clustermesh.Identity{ID: 1<<16 | 1, Cluster: "east", Labels: map[string]string{"app": "db", clustermesh.LabelNamespace: "default"}}
	api := &clustermesh.Identity{ID: 2<<16 | 1, Cluster: "west", Labels: map[string]string{"app": "api", clustermesh.LabelNamespace: "default"}}
	if err := pubEast.Upsert(db); err != nil {
		t.Fatal(err)
	}
	if err := pubEast.Upsert(&clustermesh.IPEntry{Prefix: netip.MustParsePrefix("10.201.1.2/32"), Cluster: "east", Identity: db.ID, HostIP: netip.MustParseAddr("192.168.77.1")}); err != nil {
		t.Fatal(err)
	}
	if err := pubWest.Upsert(api); err != nil {
		t.Fatal(err)
	}
	if err := pubWest.Upsert(&clustermesh.IPEntry{Prefix: netip.MustParsePrefix("10.201.2.2/32"), Cluster: "west", Identity: api.ID, HostIP: netip.MustParseAddr("192.168.78.1")}); err != nil {
		t.Fatal(err)
	}
	pins := bpftest.PinDir(t)
	// The first agent enforces one block, then a second one that sorts
	// before it: a fresh compile would number the blocks otherwise.
	first := restartPolicies("198.51.100.0/24")
	pols := restartPolicies("198.51.100.0/24", "10.9.0.0/16")
	rev := agent.PolicyRevision(pols)

	// run starts an agent over s until the returned stop is called.
	run := func(s kvstore.Store, pols []*networkingv1.NetworkPolicy) (*agent.Agent, *fakePolicies, func()) {
		src := &fakePolicies{pols: pols, ready: make(chan struct{})}
		a, err := agent.New(agent.Config{Cluster: "east", Node: "e1", NodeIPs: []netip.Addr{netip.MustParseAddr("192.168.77.1")},
			BPF: bpf.Config{PinDir: pins}, Policies: src, StatusAddr: "127.0.0.1:0"}, s, nil)
		if err != nil {
			t.Fatal(err)
		}
		actx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- a.Run(actx) }()
		return a, src, func() {
			stop()
			if err := <-done; err != nil {
				t.Errorf("agent: %v", err)
			}
		}
	}
	enforced := func(a *agent.Agent, rev string) func() error {
		return func() error {
			p := a.Snapshot().Policy
			if p == nil || p.Enforced != rev {
				return fmt.Errorf("policy %+v, want revision %s enforced", p, rev)
			}
			return nil
		}
	}
	one, src, stopOne := run(store, first)
	testenv.Eventually(t, 20*time.Second, enforced(one, agent.PolicyRevision(first)))
	<-src.ready
	src.set(pols)
	testenv.Eventually(t, 20*time.Second, enforced(one, rev))
	objs, err := bpf.Load(bpf.Config{PinDir: pins})
	if err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	ipcache, policy := dumpMaps(t, objs)
	allow := bpf.PolicyAllowKeys(bpf.PolicyIngress, uint32(db.ID), uint32(api.ID), 6, 5000, 5000)[0]
	if _, ok := policy[allow]; !ok {
		t.Fatalf("the first agent's policy trie lacks west's api → east's db allow entry: %v", policy)
	}
	if _, ok := ipcache[bpf.IPCacheKeyFor(netip.MustParsePrefix("10.201.2.2/32"))]; !ok {
		t.Fatalf("the first agent's ipcache lacks west's api pod: %v", ipcache)
	}
	stopOne()

	release := make(chan struct{})
	second, _, stopSecond := run(heldStore{Store: store, prefix: clustermesh.SyncedPrefix("west"), release: release}, pols)
	defer stopSecond()
	// The sync point: a mesh round saw east synced and the policies
	// listed, and west only is missing.
	waiting := regexp.MustCompile(`keeping them as they are until the agent knows cluster west$`)
	testenv.Eventually(t, 20*time.Second, func() error {
		for _, p := range second.Snapshot().Problems {
			if waiting.MatchString(p) {
				return nil
			}
		}
		return fmt.Errorf("the restarted agent does not say it waits for west only: %v", second.Snapshot().Problems)
	})
	ip2, pol2 := dumpMaps(t, objs)
	if !maps.Equal(ip2, ipcache) || !maps.Equal(pol2, policy) {
		t.Fatalf("while west is unknown the restarted agent changed the pinned maps:\nipcache %v\nwas     %v\npolicy %v\nwas    %v", ip2, ipcache, pol2, policy)
	}
	close(release)
	testenv.Eventually(t, 20*time.Second, enforced(second, rev))
	testenv.Eventually(t, 20*time.Second, func() error {
		if p := second.Snapshot().Problems; len(p) > 0 {
			return fmt.Errorf("problems after west synced: %v", p)
		}
		return nil
	})
	ip3, pol3 := dumpMaps(t, objs)
	if !maps.Equal(ip3, ipcache) || !maps.Equal(pol3, policy) {
		t.Errorf("after the restart the maps differ:\nipcache %v\nwas     %v\npolicy %v\nwas    %v", ip3, ipcache, pol3, policy)
	}
	metrics := scrape(t, second.StatusURL()+"/metrics")
	for _, m := range []string{"ipcache", "policy"} {
		if re := regexp.MustCompile(`braid_datapath_map_writes_total\{map="` + m + `",op="\w+"\} [1-9]`); re.MatchString(metrics) {
			t.Errorf("the restarted agent wrote to the %s map: %s", m, re.FindString(metrics))
		}
	}
}

// restartPolicies isolate east's db and admit west's api pods on TCP
// 5000, and each address block but its upper half.
func restartPolicies(blocks ...string) []*networkingv1.NetworkPolicy {
	tcp := corev1.ProtocolTCP
	port := intstr.FromInt32(5000)
	peers := []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{clustermesh.LabelCluster: "west", "app": "api"}}}}
	for _, b := range blocks {
		p := netip.MustParsePrefix(b)
		a := p.Addr().As4()
		a[p.Bits()/8] |= 0x80 >> (p.Bits() % 8)
		upper := netip.PrefixFrom(netip.AddrFrom4(a), p.Bits()+1)
		peers = append(peers, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: b, Except: []string{upper.String()}}})
	}
	return []*networkingv1.NetworkPolicy{{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "db"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: peers, Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}}}}}}}
}

func dumpMaps(t *testing.T, objs *bpf.Objects) (map[bpf.IPCacheKey]bpf.IPCacheValue, map[bpf.PolicyKey]bpf.PolicyValue) {
	t.Helper()
	ip, err := objs.IPCache.Dump()
	if err != nil {
		t.Fatal(err)
	}
	pol, err := objs.Policy.Dump()
	if err != nil {
		t.Fatal(err)
	}
	return ip, pol
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
