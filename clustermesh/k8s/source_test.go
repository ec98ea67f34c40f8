package k8s

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation"
	kubefake "k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsfake "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned/fake"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/kvstore/memory"
)

// fakePublisher records the desired state like publish.Publisher does.
type fakePublisher struct {
	mu      sync.Mutex
	records map[string]Record
	deletes int
	// history is every write in order; a deletion is a nil Record under
	// its key.
	history []keyed
}

type keyed struct {
	key string
	rec Record
}

// writes returns the history of key.
func (p *fakePublisher) writes(key string) []Record {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []Record
	for _, k := range p.history {
		if k.key == key {
			out = append(out, k.rec)
		}
	}
	return out
}

func newFakePublisher() *fakePublisher { return &fakePublisher{records: map[string]Record{}} }

func (p *fakePublisher) Replace(kind clustermesh.Kind, recs []Record) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	prefix := clustermesh.Root + string(kind) + "/"
	want := map[string]bool{}
	for _, r := range recs {
		if !strings.HasPrefix(r.Key(), prefix) {
			return fmt.Errorf("record %s is not a %s record", r.Key(), kind)
		}
		want[r.Key()] = true
	}
	for k := range p.records {
		if strings.HasPrefix(k, prefix) && !want[k] {
			delete(p.records, k)
			p.deletes++
			p.history = append(p.history, keyed{k, nil})
		}
	}
	for _, r := range recs {
		p.records[r.Key()] = r
		p.history = append(p.history, keyed{r.Key(), r})
	}
	return nil
}

func (p *fakePublisher) Upsert(r Record) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.records[r.Key()] = r
	p.history = append(p.history, keyed{r.Key(), r})
	return nil
}

func (p *fakePublisher) Delete(key string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.records[key]; ok {
		p.deletes++
	}
	delete(p.records, key)
	p.history = append(p.history, keyed{key, nil})
}

func (p *fakePublisher) get(key string) Record {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.records[key]
}

func (p *fakePublisher) kind(kind clustermesh.Kind) []Record {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []Record
	for k, r := range p.records {
		if strings.HasPrefix(k, clustermesh.Root+string(kind)+"/") {
			out = append(out, r)
		}
	}
	return out
}

// fakeMesh is a settable remote view.
type fakeMesh struct {
	mu       sync.Mutex
	clusters map[clustermesh.ClusterName]RemoteCluster
	complete bool
}

func (m *fakeMesh) Remote() (map[clustermesh.ClusterName]RemoteCluster, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.clusters, m.complete
}

func (m *fakeMesh) set(name clustermesh.ClusterName, svcs ...clustermesh.Service) {
	m.mu.Lock()
	defer m.mu.Unlock()
	next := map[clustermesh.ClusterName]RemoteCluster{}
	for k, v := range m.clusters {
		next[k] = v
	}
	if svcs == nil {
		delete(next, name)
	} else {
		rc := RemoteCluster{Synced: true, Services: map[string]clustermesh.Service{}}
		for _, s := range svcs {
			rc.Services[s.NamespacedName()] = s
		}
		next[name] = rc
	}
	m.clusters = next
}

var testCluster = clustermesh.ClusterConfig{Name: "east", ID: 3, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.3.0.0/16")},
	ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")}}

type harness struct {
	kube  *kubefake.Clientset
	mcs   *mcsfake.Clientset
	pub   *fakePublisher
	mesh  *fakeMesh
	store *memory.Store
	src   *Source
	stop  func()
}

func start(t *testing.T, store *memory.Store, objs []runtime.Object, mcsObjs []runtime.Object) *harness {
	t.Helper()
	return startWith(t, Config{Cluster: testCluster, BatchDelay: time.Millisecond}, store, objs, mcsObjs)
}

func startWith(t *testing.T, cfg Config, store *memory.Store, objs []runtime.Object, mcsObjs []runtime.Object) *harness {
	t.Helper()
	return startWithMesh(t, cfg, store, &fakeMesh{complete: true}, objs, mcsObjs)
}

func startWithMesh(t *testing.T, cfg Config, store *memory.Store, mesh *fakeMesh, objs []runtime.Object, mcsObjs []runtime.Object) *harness {
	t.Helper()
	h := &harness{kube: kubefake.NewClientset(objs...), mcs: mcsfake.NewSimpleClientset(mcsObjs...), pub: newFakePublisher(),
		mesh: mesh, store: store}
	h.kube.Resources = []*metav1.APIResourceList{{GroupVersion: mcsv1beta1.GroupVersion.String(),
		APIResources: []metav1.APIResource{{Name: "serviceexports"}, {Name: "serviceimports"}}}}
	src, err := New(cfg, Clients{Kube: h.kube, MCS: h.mcs}, h.pub, store, h.mesh, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	h.src = src
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	h.stop = func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	t.Cleanup(func() {
		if ctx.Err() == nil {
			h.stop()
		}
	})
	testenv.Eventually(t, 10*time.Second, func() error {
		if !src.Status().Synced {
			return fmt.Errorf("not synced")
		}
		return nil
	})
	return h
}

func node(name, ip, zone string) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{labelZone: zone, labelRegion: "r1"}},
		Spec:       corev1.NodeSpec{PodCIDRs: []string{"10.3.1.0/24", "192.168.0.0/24"}},
		Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}},
	}
}

func pod(ns, name, ip string, lbls map[string]string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbls},
		Spec:       corev1.PodSpec{NodeName: "n1"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip},
	}
	if ip != "" {
		p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	}
	return p
}

func service(ns, name string, ann map[string]string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: ann, UID: "uid-" + "name"},
		Spec:       corev1.ServiceSpec{ClusterIP: "10.96.0.10", Ports: ports},
	}
}

func slice(ns, svc, name string, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
		Endpoints:   eps,
	}
}

func svcKey(ns, name string) string {
	return (&clustermesh.Service{Cluster: testCluster.Name, Namespace: ns, Name: name}).Key()
}

func TestSourcePublishes(t *testing.T) {
	global := map[string]string{AnnotationGlobal: "true", AnnotationAffinity: "local"}
	h := start(t, memory.New(), []runtime.Object{
		node("n1", "192.168.1.1", "z1"),
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "no-ip"}},
		pod("default", "web-1", "10.3.1.5", map[string]string{"app": "web", "pod-template-hash": "abc"}),
		pod("default", "web-2", "10.3.1.6", map[string]string{"app": "web", "pod-template-hash": "def"}),
		pod("default", "pending", "", map[string]string{"app": "web"}),
		pod("other", "db", "10.3.1.7", map[string]string{"app": "db"}),
		func() *corev1.Pod {
			p := pod("default", "host", "192.168.1.1", nil)
			p.Spec.HostNetwork = true
			return p
		}(),
		service("default", "web", global, corev1.ServicePort{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}),
		service("default", "noports", global),
		service("default", "local-only", nil, corev1.ServicePort{Name: "http", Port: 80}),
		slice("default", "web", "web-abc",
			discoveryv1.Endpoint{Addresses: []string{"10.3.1.5"}, NodeName: ptr.To("n1"), Zone: ptr.To("z1"), Hostname: ptr.To("web-0")},
			discoveryv1.Endpoint{Addresses: []string{"10.3.1.6", "not-an-ip"}, Conditions: discoveryv1.EndpointConditions{
				Ready: ptr.To(false), Serving: ptr.To(true), Terminating: ptr.To(true)}}),
	}, nil)

	nodes := h.pub.kind(clustermesh.KindNodes)
	if len(nodes) != 1 {
		t.Fatalf("nodes = %v, want only n1", nodes)
	}
	n := nodes[0].(*clustermesh.Node)
	if n.Zone != "z1" || n.Region != "r1" || len(n.PodCIDRs) != 1 || n.IPs[0] != netip.MustParseAddr("192.168.1.1") {
		t.Errorf("node = %+v", n)
	}
	ids := h.pub.kind(clustermesh.KindIdentities)
	if len(ids) != 2 {
		t.Fatalf("identities = %d, want 2 (web, db): %v", len(ids), ids)
	}
	ips := h.pub.kind(clustermesh.KindIPs)
	if len(ips) != 3 {
		t.Fatalf("ips = %d, want 3", len(ips))
	}
	web1 := h.pub.get(clustermesh.KindPrefix(clustermesh.KindIPs, "east") + "10.3.1.5/32").(*clustermesh.IPEntry)
	web2 := h.pub.get(clustermesh.KindPrefix(clustermesh.KindIPs, "east") + "10.3.1.6/32").(*clustermesh.IPEntry)
	if web1.Identity != web2.Identity || !testCluster.OwnsIdentity(web1.Identity) || web1.HostIP != netip.MustParseAddr("192.168.1.1") {
		t.Errorf("web pods: %+v %+v", web1, web2)
	}
	for _, r := range append(append(ids, ips...), nodes...) {
		mustDecode(t, r)
	}

	rec, _ := h.pub.get(svcKey("default", "web")).(*clustermesh.Service)
	if rec == nil {
		t.Fatal("web not published")
	}
	mustDecode(t, rec)
	if rec.Affinity != clustermesh.AffinityLocal || !rec.Shared || len(rec.Backends) != 2 {
		t.Fatalf("web = %+v", rec)
	}
	if want := []netip.Addr{netip.MustParseAddr("10.96.0.10")}; !slices.Equal(rec.ClusterIPs, want) {
		t.Errorf("web's cluster IPs = %v, want %v: agents answer on them", rec.ClusterIPs, want)
	}
	if b := rec.Backends[1]; b.Ready || !b.Serving || !b.Terminating || b.Zone != "" {
		t.Errorf("backend 2 = %+v", b)
	}
	if p, ok := rec.Backends[0].Port("http"); !ok || p != 8080 || rec.Backends[0].Node != "n1" || rec.Backends[0].Hostname != "web-0" {
		t.Errorf("backend 1 = %+v", rec.Backends[0])
	}
	if h.pub.get(svcKey("default", "noports")) == nil {
		t.Error("a global service without ports is not published")
	}
	if h.pub.get(svcKey("default", "local-only")) != nil {
		t.Error("a service without annotation is published")
	}

	// Level changes: annotation removed, affinity changed, service deleted.
	ctx := context.Background()
	web, _ := h.kube.CoreV1().Services("default").Get(ctx, "web", metav1.GetOptions{})
	web.Annotations[AnnotationAffinity] = "remote"
	if _, err := h.kube.CoreV1().Services("default").Update(ctx, web, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if r, _ := h.pub.get(svcKey("default", "web")).(*clustermesh.Service); r == nil || r.Affinity != clustermesh.AffinityRemote {
			return fmt.Errorf("affinity not updated: %+v", r)
		}
		return nil
	})
	// spec.trafficDistribution PreferClose asks for zone preference.
	web, _ = h.kube.CoreV1().Services("default").Get(ctx, "web", metav1.GetOptions{})
	preferClose := corev1.ServiceTrafficDistributionPreferClose
	web.Spec.TrafficDistribution = &preferClose
	if _, err := h.kube.CoreV1().Services("default").Update(ctx, web, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if r, _ := h.pub.get(svcKey("default", "web")).(*clustermesh.Service); r == nil || r.Topology != clustermesh.TopologyZone {
			return fmt.Errorf("PreferClose not published as zone topology: %+v", r)
		}
		return nil
	})
	delete(web.Annotations, AnnotationGlobal)
	if _, err := h.kube.CoreV1().Services("default").Update(ctx, web, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if h.pub.get(svcKey("default", "web")) != nil {
			return fmt.Errorf("web still published without annotation")
		}
		return nil
	})
	if err := h.kube.CoreV1().Services("default").Delete(ctx, "noports", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if h.pub.get(svcKey("default", "noports")) != nil {
			return fmt.Errorf("deleted service still published")
		}
		return nil
	})
	// A pod going away frees its identity.
	if err := h.kube.CoreV1().Pods("other").Delete(ctx, "db", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if n := len(h.pub.kind(clustermesh.KindIdentities)); n != 1 {
			return fmt.Errorf("identities = %d, want 1", n)
		}
		return nil
	})
}

func mustDecode(t *testing.T, r Record) {
	t.Helper()
	val, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	switch r := r.(type) {
	case *clustermesh.Node:
		_, err = clustermesh.DecodeNode(&testCluster, r.Key(), val)
	case *clustermesh.Identity:
		_, err = clustermesh.DecodeIdentity(&testCluster, r.Key(), val)
	case *clustermesh.IPEntry:
		_, err = clustermesh.DecodeIPEntry(&testCluster, r.Key(), val)
	case *clustermesh.Service:
		_, err = clustermesh.DecodeService(&testCluster, r.Key(), val)
	}
	if err != nil {
		t.Errorf("published record does not decode: %v", err)
	}
}

func TestInvalidAnnotationWarns(t *testing.T) {
	h := start(t, memory.New(), []runtime.Object{
		service("default", "bad", map[string]string{AnnotationGlobal: "true", "service.cilium.io/affinity": "closest"}),
	}, nil)
	testenv.Eventually(t, 10*time.Second, func() error {
		evs, err := h.kube.CoreV1().Events("default").List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, e := range evs.Items {
			if e.Type == corev1.EventTypeWarning && e.InvolvedObject.Name == "bad" &&
				strings.Contains(e.Message, "service.cilium.io/affinity") && strings.Contains(e.Message, "local, remote, none") {
				return nil
			}
		}
		return fmt.Errorf("no warning event among %d events", len(evs.Items))
	})
	if h.pub.get(svcKey("default", "bad")) != nil {
		t.Error("service with an invalid annotation is published")
	}
	if !h.src.Status().Synced {
		t.Error("source stopped")
	}
}

func TestIdentitiesStableAcrossRestart(t *testing.T) {
	store := memory.New()
	objs := []runtime.Object{
		node("n1", "192.168.1.1", "z1"),
		pod("default", "a", "10.3.1.5", map[string]string{"app": "a"}),
		pod("default", "b", "10.3.1.6", map[string]string{"app": "b"}),
	}
	h := start(t, store, objs, nil)
	before := map[string]clustermesh.NumericIdentity{}
	for _, r := range h.pub.kind(clustermesh.KindIPs) {
		e := r.(*clustermesh.IPEntry)
		before[e.Prefix.String()] = e.Identity
	}
	// Stand in for the publisher: write what was published, as Run would.
	for _, r := range h.pub.kind(clustermesh.KindIdentities) {
		val, _ := json.Marshal(r)
		if err := store.Put(context.Background(), r.Key(), val, 0); err != nil {
			t.Fatal(err)
		}
	}
	h.stop()
	// Restart with the pods listed in the other order.
	h2 := start(t, store, []runtime.Object{objs[0], objs[2], objs[1]}, nil)
	for _, r := range h2.pub.kind(clustermesh.KindIPs) {
		e := r.(*clustermesh.IPEntry)
		if before[e.Prefix.String()] != e.Identity {
			t.Errorf("%s: identity %d after restart, %d before", e.Prefix, e.Identity, before[e.Prefix.String()])
		}
	}
}

func TestServiceExportConflict(t *testing.T) {
	created := metav1.NewTime(time.Date(2026, 1, 1, 0, 1, 0, 0, time.UTC))
	exp := &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web", CreationTimestamp: created}}
	h := start(t, memory.New(), []runtime.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}},
		service("default", "web", nil, corev1.ServicePort{Name: "http", Port: 80, Protocol: corev1.ProtocolUDP}),
	}, []runtime.Object{exp})

	rec, _ := h.pub.get(svcKey("default", "web")).(*clustermesh.Service)
	if rec == nil || !rec.ExportedAt.Equal(created.Time) {
		t.Fatalf("exported service = %+v", rec)
	}
	// An older export elsewhere with TCP wins.
	h.mesh.set("west", clustermesh.Service{Cluster: "west", Namespace: "default", Name: "web", Global: true, Shared: true,
		Affinity: clustermesh.AffinityNone, ExportedAt: created.Add(-time.Hour),
		Ports: []clustermesh.ServicePort{{Name: "http", Port: 80, Protocol: clustermesh.TCP}}})
	h.src.MeshChanged()
	ctx := context.Background()
	testenv.Eventually(t, 10*time.Second, func() error {
		got, err := h.mcs.MulticlusterV1beta1().ServiceExports("default").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return err
		}
		c := meta.FindStatusCondition(got.Status.Conditions, string(mcsv1beta1.ServiceExportConditionConflict))
		if c == nil || c.Status != metav1.ConditionTrue || !strings.Contains(c.Message, "conflicting clusters: east, west") {
			return fmt.Errorf("conflict condition = %+v", c)
		}
		if !meta.IsStatusConditionTrue(got.Status.Conditions, string(mcsv1beta1.ServiceExportConditionValid)) ||
			!meta.IsStatusConditionTrue(got.Status.Conditions, string(mcsv1beta1.ServiceExportConditionReady)) {
			return fmt.Errorf("conditions = %+v", got.Status.Conditions)
		}
		imp, err := h.mcs.MulticlusterV1beta1().ServiceImports("default").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(imp.Spec.Ports) != 1 || imp.Spec.Ports[0].Protocol != corev1.ProtocolTCP || len(imp.Status.Clusters) != 2 {
			return fmt.Errorf("import = %+v", imp)
		}
		return nil
	})
	// Both exports withdrawn: the import goes.
	h.mesh.set("west")
	if err := h.mcs.MulticlusterV1beta1().ServiceExports("default").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		_, err := h.mcs.MulticlusterV1beta1().ServiceImports("default").Get(ctx, "web", metav1.GetOptions{})
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("import still there: %v", err)
		}
		return nil
	})
}

func TestHeadlessMirrors(t *testing.T) {
	svc := service("default", "db", map[string]string{AnnotationGlobal: "true"}, corev1.ServicePort{Name: "pg", Port: 5432, Protocol: corev1.ProtocolTCP})
	svc.Spec.ClusterIP = corev1.ClusterIPNone
	h := start(t, memory.New(), []runtime.Object{&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, svc}, nil)
	remoteSvc := clustermesh.Service{Cluster: "west", Namespace: "default", Name: "db", Global: true, Shared: true, Headless: true,
		Affinity: clustermesh.AffinityNone, Ports: []clustermesh.ServicePort{{Name: "pg", Port: 5432, Protocol: clustermesh.TCP}},
		Backends: []clustermesh.Backend{
			{IP: netip.MustParseAddr("10.4.1.1"), Ports: []clustermesh.BackendPort{{Name: "pg", Port: 5433}}, Ready: true, Serving: true, Zone: "w1", Hostname: "db-0"},
			{IP: netip.MustParseAddr("10.4.1.2"), Ports: []clustermesh.BackendPort{{Name: "pg", Port: 5433}}, Ready: true, Serving: true},
		}}
	h.mesh.set("west", remoteSvc)
	h.src.MeshChanged()
	ctx := context.Background()
	mirrors := func() ([]discoveryv1.EndpointSlice, error) {
		l, err := h.kube.DiscoveryV1().EndpointSlices("default").List(ctx, metav1.ListOptions{LabelSelector: LabelSourceCluster + "=west"})
		if err != nil {
			return nil, err
		}
		return l.Items, nil
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		m, err := mirrors()
		if err != nil {
			return err
		}
		if len(m) != 1 || len(m[0].Endpoints) != 2 || *m[0].Ports[0].Port != 5433 || m[0].Labels[discoveryv1.LabelServiceName] != "db" ||
			m[0].Labels[mcsv1beta1.LabelServiceName] != "" {
			return fmt.Errorf("mirrors = %+v", m)
		}
		// The hostname travels: <hostname>.<cluster>.<svc>... in DNS.
		for _, ep := range m[0].Endpoints {
			if want := map[string]string{"10.4.1.1": "db-0"}[ep.Addresses[0]]; ptr.Deref(ep.Hostname, "") != want {
				return fmt.Errorf("endpoint %s hostname %v, want %q", ep.Addresses[0], ep.Hostname, want)
			}
		}
		return nil
	})
	// Our mirrors are not published back as local backends.
	if r, _ := h.pub.get(svcKey("default", "db")).(*clustermesh.Service); r == nil || len(r.Backends) != 0 {
		t.Errorf("local record = %+v", r)
	}
	// The remote cluster leaves: its mirror goes.
	h.mesh.set("west")
	h.src.MeshChanged()
	testenv.Eventually(t, 10*time.Second, func() error {
		m, err := mirrors()
		if err != nil || len(m) != 0 {
			return fmt.Errorf("mirrors = %d, %v", len(m), err)
		}
		return nil
	})
}

// TestNodeKeyAnnotationIsPublished: the agent's WireGuard key reaches the
// node record through the Node annotation; a malformed one is left out.
func TestNodeKeyAnnotationIsPublished(t *testing.T) {
	const key = "q2XXmxpS0iF8UfwpD6Dv1Hd7DcYyzdTO5u5F5BDeq3U="
	good := node("n1", "192.168.1.1", "z1")
	good.Annotations = map[string]string{AnnotationWireGuardKey: key}
	bad := node("n2", "192.168.1.2", "z1")
	bad.Annotations = map[string]string{AnnotationWireGuardKey: "not-a-key"}
	h := start(t, memory.New(), []runtime.Object{good, bad}, nil)
	got := map[string]string{}
	for _, r := range h.pub.kind(clustermesh.KindNodes) {
		n := r.(*clustermesh.Node)
		got[n.Name] = n.WireGuardKey
		mustDecode(t, r)
	}
	if got["n1"] != key || got["n2"] != "" || len(got) != 2 {
		t.Fatalf("published keys %v, want n1's key and none for n2", got)
	}
}

// TestNodeHandoverAnnotationsArePublished: the agent's next key and its
// acknowledgements reach the node record; malformed ones are left out.
func TestNodeHandoverAnnotationsArePublished(t *testing.T) {
	const (
		key  = "q2XXmxpS0iF8UfwpD6Dv1Hd7DcYyzdTO5u5F5BDeq3U="
		next = "cGTBYuAWdGGsjd7OUd1ewDX+EvbjSbPwkv/2z8pUDVY="
		ack  = "8GqrGW6D3Ah+2xNVv9FcVDM0F4KQjqTTq3nA2WE6S2o="
	)
	n := node("n1", "192.168.1.1", "z1")
	n.Annotations = map[string]string{
		AnnotationWireGuardKey:      key,
		AnnotationWireGuardNextKey:  next,
		AnnotationWireGuardPrepared: ack + ",not-a-key",
	}
	h := start(t, memory.New(), []runtime.Object{n}, nil)
	recs := h.pub.kind(clustermesh.KindNodes)
	if len(recs) != 1 {
		t.Fatalf("%d node records", len(recs))
	}
	got := recs[0].(*clustermesh.Node)
	mustDecode(t, recs[0])
	if got.NextWireGuardKey != next || len(got.PreparedWireGuardKeys) != 1 || got.PreparedWireGuardKeys[0] != ack {
		t.Fatalf("published next %q prepared %v", got.NextWireGuardKey, got.PreparedWireGuardKeys)
	}
}

// TestManagedByAreLabelValues: the managed-by values are label values the
// API server accepts (the fake clientset does not validate; a "/" made
// every create fail on a real one).
func TestManagedByAreLabelValues(t *testing.T) {
	for _, v := range []string{MirrorManagedBy, ImportManagedBy, managedByValue} {
		if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
			t.Errorf("%q is not a label value: %v", v, errs)
		}
	}
}
