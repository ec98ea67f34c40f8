package k8s

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kubefake "k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/kvstore/memory"
)

var clusterSet = netip.MustParsePrefix("10.96.128.0/17")

func startClusterSet(t *testing.T, objs, mcsObjs []runtime.Object) *harness {
	t.Helper()
	return startWith(t, Config{Cluster: testCluster, BatchDelay: time.Millisecond, ClusterSetCIDRs: []netip.Prefix{clusterSet}},
		memory.New(), objs, mcsObjs)
}

func westWeb(exportedAt time.Time, export *clustermesh.ExportSpec, ports ...clustermesh.ServicePort) clustermesh.Service {
	return clustermesh.Service{Cluster: "west", Namespace: "default", Name: "web", Global: true, Shared: true,
		Affinity: clustermesh.AffinityNone, ExportedAt: exportedAt, Export: export, Ports: ports,
		Backends: []clustermesh.Backend{{IP: netip.MustParseAddr("10.4.1.1"), Ports: []clustermesh.BackendPort{{Name: ports[0].Name, Port: 8080}}, Ready: true, Serving: true}}}
}

func (h *harness) importOf(ctx context.Context, name string) (*mcsv1beta1.ServiceImport, error) {
	return h.mcs.MulticlusterV1beta1().ServiceImports("default").Get(ctx, name, metav1.GetOptions{})
}

// TestClusterSetIPImport: an export here and an older one in west give a
// ClusterSetIP import with an IP from the clusterset range held by a
// derived Service, the oldest export's settings and exported metadata,
// EndpointSlices per exporting cluster, and a record whose Import the
// agents serve; withdrawing both removes it all.
func TestClusterSetIPImport(t *testing.T) {
	created := metav1.NewTime(time.Date(2026, 1, 1, 0, 1, 0, 0, time.UTC))
	svc := service("default", "web", nil, corev1.ServicePort{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP})
	svc.Labels = map[string]string{"svc-label": "x"}
	svc.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	svc.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To(int32(10))}}
	svc.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyCluster)
	svc.Spec.TrafficDistribution = ptr.To(corev1.ServiceTrafficDistributionPreferClose)
	svc.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol}
	exp := &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web", CreationTimestamp: created},
		Spec: mcsv1beta1.ServiceExportSpec{ExportedLabels: map[string]string{"team": "a"}, ExportedAnnotations: map[string]string{"note": "east"}}}
	h := startClusterSet(t, []runtime.Object{&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, svc}, []runtime.Object{exp})
	ctx := context.Background()

	rec, _ := h.pub.get(svcKey("default", "web")).(*clustermesh.Service)
	if rec == nil || rec.Export == nil || rec.Export.SessionAffinity != "ClientIP" || rec.Export.SessionAffinityTimeout != 10 ||
		rec.Export.InternalTrafficPolicy != "Cluster" || rec.Export.TrafficDistribution != "PreferClose" || rec.Export.Labels["team"] != "a" {
		t.Fatalf("published export = %+v", rec)
	}
	mustDecode(t, rec)

	// west exports too, later, with another port: the union (the differing
	// port sets are a PortConflict, see TestResolve).
	metrics := clustermesh.ServicePort{Name: "metrics", Port: 9090, Protocol: clustermesh.TCP}
	h.mesh.set("west", westWeb(created.Add(time.Hour), &clustermesh.ExportSpec{SessionAffinity: "ClientIP", SessionAffinityTimeout: 10,
		InternalTrafficPolicy: "Cluster", TrafficDistribution: "PreferClose", Labels: map[string]string{"team": "a"}, Annotations: map[string]string{"note": "east"}},
		clustermesh.ServicePort{Name: "http", Port: 80, Protocol: clustermesh.TCP}, metrics))
	h.src.MeshChanged()

	var ip netip.Addr
	testenv.Eventually(t, 10*time.Second, func() error {
		imp, err := h.importOf(ctx, "web")
		if err != nil {
			return err
		}
		if imp.Spec.Type != mcsv1beta1.ClusterSetIP || len(imp.Spec.IPs) != 1 || !slices.Equal(imp.Spec.IPFamilies, []corev1.IPFamily{corev1.IPv4Protocol}) {
			return fmt.Errorf("import type %s ips %v families %v", imp.Spec.Type, imp.Spec.IPs, imp.Spec.IPFamilies)
		}
		if ip, err = netip.ParseAddr(imp.Spec.IPs[0]); err != nil || !clusterSet.Contains(ip) {
			return fmt.Errorf("ClusterSetIP %q is not in %s", imp.Spec.IPs[0], clusterSet)
		}
		if imp.Spec.SessionAffinity != corev1.ServiceAffinityClientIP || imp.Spec.SessionAffinityConfig == nil ||
			*imp.Spec.SessionAffinityConfig.ClientIP.TimeoutSeconds != 10 ||
			*imp.Spec.InternalTrafficPolicy != corev1.ServiceInternalTrafficPolicyCluster || *imp.Spec.TrafficDistribution != "PreferClose" {
			return fmt.Errorf("import spec %+v", imp.Spec)
		}
		if len(imp.Spec.Ports) != 2 {
			return fmt.Errorf("ports %+v, want the union of http and metrics", imp.Spec.Ports)
		}
		if imp.Labels["team"] != "a" || imp.Labels["svc-label"] != "" || imp.Annotations["note"] != "east" ||
			imp.Annotations[AnnotationDerivedService] != derivedName("web") {
			return fmt.Errorf("import metadata %v %v", imp.Labels, imp.Annotations)
		}
		return nil
	})
	d, err := h.kube.CoreV1().Services("default").Get(ctx, derivedName("web"), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Spec.ClusterIP != ip.String() || d.Spec.Selector != nil || len(d.Spec.Ports) != 2 || d.Labels[mcsv1beta1.LabelServiceName] != "web" {
		t.Fatalf("derived service = %+v", d)
	}
	if _, err := h.kube.NetworkingV1().ServiceCIDRs().Get(ctx, ClusterSetServiceCIDR, metav1.GetOptions{}); err != nil {
		t.Fatalf("clusterset ServiceCIDR: %v", err)
	}
	// west's backends in an MCS EndpointSlice for the derived Service.
	testenv.Eventually(t, 10*time.Second, func() error {
		l, err := h.kube.DiscoveryV1().EndpointSlices("default").List(ctx, metav1.ListOptions{LabelSelector: mcsv1beta1.LabelServiceName + "=web"})
		if err != nil {
			return err
		}
		if len(l.Items) != 1 {
			return fmt.Errorf("%d import slices, want west's", len(l.Items))
		}
		es := l.Items[0]
		if es.Labels[mcsv1beta1.LabelSourceCluster] != "west" || es.Labels[discoveryv1.LabelManagedBy] != ImportManagedBy ||
			es.Labels[discoveryv1.LabelServiceName] != derivedName("web") || len(es.Endpoints) != 1 || es.Endpoints[0].Addresses[0] != "10.4.1.1" {
			return fmt.Errorf("import slice %+v", es)
		}
		return nil
	})
	// The record carries the import for the agents: the ClusterSetIP, the
	// union of ports, and per port the clusters that serve it.
	testenv.Eventually(t, 10*time.Second, func() error {
		rec, _ := h.pub.get(svcKey("default", "web")).(*clustermesh.Service)
		if rec == nil || rec.Import == nil {
			return fmt.Errorf("record %+v has no import", rec)
		}
		if !slices.Equal(rec.Import.IPs, []netip.Addr{ip}) || len(rec.Import.Ports) != 2 ||
			!slices.Equal(rec.Import.Clusters["http"], []clustermesh.ClusterName{"east", "west"}) ||
			!slices.Equal(rec.Import.Clusters["metrics"], []clustermesh.ClusterName{"west"}) {
			return fmt.Errorf("import %+v", rec.Import)
		}
		mustDecode(t, rec)
		return nil
	})

	// Both exports withdrawn: import, derived Service and slices go.
	h.mesh.set("west")
	if err := h.mcs.MulticlusterV1beta1().ServiceExports("default").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if _, err := h.importOf(ctx, "web"); !apierrors.IsNotFound(err) {
			return fmt.Errorf("import still there: %v", err)
		}
		if _, err := h.kube.CoreV1().Services("default").Get(ctx, derivedName("web"), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("derived service still there: %v", err)
		}
		l, err := h.kube.DiscoveryV1().EndpointSlices("default").List(ctx, metav1.ListOptions{LabelSelector: mcsv1beta1.LabelServiceName + "=web"})
		if err != nil || len(l.Items) != 0 {
			return fmt.Errorf("import slices left: %v %v", l, err)
		}
		if rec, _ := h.pub.get(svcKey("default", "web")).(*clustermesh.Service); rec != nil {
			return fmt.Errorf("record still published: %+v", rec)
		}
		return nil
	})
}

// TestImportWithoutLocalService: a cluster that only consumes gets the
// import and publishes a record that shares nothing but carries it.
func TestImportWithoutLocalService(t *testing.T) {
	h := startClusterSet(t, []runtime.Object{&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}}}, nil)
	h.mesh.set("west", westWeb(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), nil, clustermesh.ServicePort{Name: "http", Port: 80, Protocol: clustermesh.TCP}))
	h.src.MeshChanged()
	testenv.Eventually(t, 10*time.Second, func() error {
		rec, _ := h.pub.get(svcKey("default", "web")).(*clustermesh.Service)
		if rec == nil || rec.Import == nil || rec.Shared || len(rec.Backends) != 0 || len(rec.ClusterIPs) != 0 || !rec.ExportedAt.IsZero() {
			return fmt.Errorf("record %+v", rec)
		}
		if !clusterSet.Contains(rec.Import.IPs[0]) {
			return fmt.Errorf("import IPs %v", rec.Import.IPs)
		}
		mustDecode(t, rec)
		return nil
	})
	// The last export goes: the import, and the record, go too.
	h.mesh.set("west")
	h.src.MeshChanged()
	testenv.Eventually(t, 10*time.Second, func() error {
		if _, err := h.importOf(context.Background(), "web"); !apierrors.IsNotFound(err) {
			return fmt.Errorf("import still there: %v", err)
		}
		if rec := h.pub.get(svcKey("default", "web")); rec != nil {
			return fmt.Errorf("record still published: %+v", rec)
		}
		return nil
	})
}

// TestHeadlessImportHasNoIP: a headless export gives a Headless import with
// no IPs but its IP families, and a headless derived Service.
func TestHeadlessImportHasNoIP(t *testing.T) {
	h := startClusterSet(t, []runtime.Object{&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}}}, nil)
	web := westWeb(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), nil, clustermesh.ServicePort{Name: "http", Port: 80, Protocol: clustermesh.TCP})
	web.Headless = true
	h.mesh.set("west", web)
	h.src.MeshChanged()
	ctx := context.Background()
	testenv.Eventually(t, 10*time.Second, func() error {
		imp, err := h.importOf(ctx, "web")
		if err != nil {
			return err
		}
		if imp.Spec.Type != mcsv1beta1.Headless || len(imp.Spec.IPs) != 0 || !slices.Equal(imp.Spec.IPFamilies, []corev1.IPFamily{corev1.IPv4Protocol}) {
			return fmt.Errorf("import %+v", imp.Spec)
		}
		d, err := h.kube.CoreV1().Services("default").Get(ctx, derivedName("web"), metav1.GetOptions{})
		if err != nil || d.Spec.ClusterIP != corev1.ClusterIPNone {
			return fmt.Errorf("derived service %v, %v", d, err)
		}
		return nil
	})
	if rec, _ := h.pub.get(svcKey("default", "web")).(*clustermesh.Service); rec != nil {
		t.Fatalf("a headless import published %+v", rec)
	}
}

// TestExportMetadataConflict: exports that differ in exported labels,
// annotations and session affinity set Conflict on the local export, name
// both clusters, and the older export's metadata is what the import gets.
func TestExportMetadataConflict(t *testing.T) {
	created := metav1.NewTime(time.Date(2026, 1, 1, 0, 1, 0, 0, time.UTC))
	exp := &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web", CreationTimestamp: created},
		Spec: mcsv1beta1.ServiceExportSpec{ExportedLabels: map[string]string{"mine": "true"}}}
	h := startClusterSet(t, []runtime.Object{&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}},
		service("default", "web", nil, corev1.ServicePort{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP})}, []runtime.Object{exp})
	h.mesh.set("west", westWeb(created.Add(-time.Minute), &clustermesh.ExportSpec{SessionAffinity: "ClientIP", Labels: map[string]string{"theirs": "true"},
		Annotations: map[string]string{"a": "b"}}, clustermesh.ServicePort{Name: "http", Port: 80, Protocol: clustermesh.TCP}))
	h.src.MeshChanged()
	ctx := context.Background()
	testenv.Eventually(t, 10*time.Second, func() error {
		got, err := h.mcs.MulticlusterV1beta1().ServiceExports("default").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return err
		}
		c := meta.FindStatusCondition(got.Status.Conditions, string(mcsv1beta1.ServiceExportConditionConflict))
		if c == nil || c.Status != metav1.ConditionTrue || c.Reason != string(mcsv1beta1.ServiceExportReasonSessionAffinityConflict) {
			return fmt.Errorf("conflict condition = %+v", c)
		}
		for _, want := range []string{"conflicting clusters: east, west", "session affinity ClientIP of cluster west (oldest export, used) differs in cluster east",
			"exported labels {theirs=true} of cluster west", "exported annotations {a=b} of cluster west"} {
			if !strings.Contains(c.Message, want) {
				return fmt.Errorf("message %q lacks %q", c.Message, want)
			}
		}
		imp, err := h.importOf(ctx, "web")
		if err != nil {
			return err
		}
		if imp.Labels["theirs"] != "true" || imp.Labels["mine"] != "" || imp.Annotations["a"] != "b" || imp.Spec.SessionAffinity != corev1.ServiceAffinityClientIP {
			return fmt.Errorf("import %v %v %s", imp.Labels, imp.Annotations, imp.Spec.SessionAffinity)
		}
		return nil
	})
}

// TestExternalNameExportIsInvalid: Valid=False, and no import.
func TestExternalNameExportIsInvalid(t *testing.T) {
	svc := service("default", "web", nil)
	svc.Spec = corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.com"}
	exp := &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web", CreationTimestamp: metav1.Now()}}
	h := startClusterSet(t, []runtime.Object{&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, svc}, []runtime.Object{exp})
	ctx := context.Background()
	testenv.Eventually(t, 10*time.Second, func() error {
		got, err := h.mcs.MulticlusterV1beta1().ServiceExports("default").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return err
		}
		c := meta.FindStatusCondition(got.Status.Conditions, string(mcsv1beta1.ServiceExportConditionValid))
		if c == nil || c.Status != metav1.ConditionFalse || c.Reason != string(mcsv1beta1.ServiceExportReasonInvalidServiceType) {
			return fmt.Errorf("valid condition = %+v", c)
		}
		return nil
	})
	// The status is written after the import pass of the same key: no
	// import exists then, and none is created later by that key.
	if _, err := h.importOf(ctx, "web"); !apierrors.IsNotFound(err) {
		t.Fatalf("import of an ExternalName export: %v", err)
	}
}

// TestDerivedNameIsStable pins the derived Service's name scheme.
func TestDerivedNameIsStable(t *testing.T) {
	a, b := derivedName("web"), derivedName("web")
	if a != b || !strings.HasPrefix(a, "derived-") || len(a) != len("derived-")+10 || derivedName("db") == a {
		t.Fatalf("derivedName: %q %q %q", a, b, derivedName("db"))
	}
}

func TestClusterSetCIDRMustBeInsideServiceCIDRs(t *testing.T) {
	cfg := Config{Cluster: testCluster, ClusterSetCIDRs: []netip.Prefix{netip.MustParsePrefix("10.200.0.0/24")}}
	_, err := New(cfg, Clients{Kube: kubefake.NewClientset()}, newFakePublisher(), memory.New(), nil, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "not inside cluster east's service CIDRs") {
		t.Fatalf("New = %v", err)
	}
}

func TestCandidateSkipsNetworkAndBroadcast(t *testing.T) {
	s := &Source{cfg: Config{ClusterSetCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.128.0/30")}}}
	seen := map[netip.Addr]bool{}
	for n := 0; n < 2; n++ {
		ip, ok := s.candidate(corev1.IPv4Protocol, "default/web", n)
		if !ok {
			t.Fatalf("candidate %d: none", n)
		}
		seen[ip] = true
	}
	want := map[netip.Addr]bool{netip.MustParseAddr("10.96.128.1"): true, netip.MustParseAddr("10.96.128.2"): true}
	if !maps.Equal(seen, want) {
		t.Fatalf("candidates %v, want %v", seen, want)
	}
	if _, ok := s.candidate(corev1.IPv4Protocol, "default/web", 2); ok {
		t.Fatal("a third candidate in a /30")
	}
	if _, ok := s.candidate(corev1.IPv6Protocol, "default/web", 0); ok {
		t.Fatal("an IPv6 candidate without an IPv6 range")
	}
}

// TestPortConflictBetweenTwoClusters: east exports "http" as 8080, west
// exports it an hour later as 8081. Each cluster's Source sees the other's
// published record, as through the broker: both ServiceExports get
// Conflict=True with a message naming both clusters, and both clusters'
// imports keep the older (east's) port.
func TestPortConflictBetweenTwoClusters(t *testing.T) {
	older := metav1.NewTime(time.Date(2026, 1, 1, 0, 1, 0, 0, time.UTC))
	west := clustermesh.ClusterConfig{Name: "west", ID: 4, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.4.0.0/16")},
		ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")}}
	side := func(cluster clustermesh.ClusterConfig, port int32, created metav1.Time) *harness {
		svc := service("default", "web", nil, corev1.ServicePort{Name: "http", Port: port, Protocol: corev1.ProtocolTCP})
		exp := &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web", CreationTimestamp: created}}
		return startWith(t, Config{Cluster: cluster, BatchDelay: time.Millisecond, ClusterSetCIDRs: []netip.Prefix{clusterSet}}, memory.New(),
			[]runtime.Object{&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, svc}, []runtime.Object{exp})
	}
	e := side(testCluster, 8080, older)
	w := side(west, 8081, metav1.NewTime(older.Add(time.Hour)))
	published := func(h *harness, c clustermesh.ClusterName) clustermesh.Service {
		t.Helper()
		rec, _ := h.pub.get((&clustermesh.Service{Cluster: c, Namespace: "default", Name: "web"}).Key()).(*clustermesh.Service)
		if rec == nil {
			t.Fatalf("cluster %s published no record for default/web", c)
		}
		return *rec
	}
	// Each sees the other's export (the record as the operator published
	// it, import left out as a remote agent would ignore it).
	eRec, wRec := published(e, "east"), published(w, "west")
	eRec.Import, wRec.Import = nil, nil
	e.mesh.set("west", wRec)
	w.mesh.set("east", eRec)
	e.src.MeshChanged()
	w.src.MeshChanged()

	ctx := context.Background()
	for _, h := range []*harness{e, w} {
		testenv.Eventually(t, 10*time.Second, func() error {
			got, err := h.mcs.MulticlusterV1beta1().ServiceExports("default").Get(ctx, "web", metav1.GetOptions{})
			if err != nil {
				return err
			}
			c := meta.FindStatusCondition(got.Status.Conditions, string(mcsv1beta1.ServiceExportConditionConflict))
			if c == nil || c.Status != metav1.ConditionTrue || c.Reason != string(mcsv1beta1.ServiceExportReasonPortConflict) ||
				!strings.Contains(c.Message, "conflicting clusters: east, west") ||
				!strings.Contains(c.Message, `port "http" is 8081/TCP in cluster west but 8080/TCP in cluster east`) {
				return fmt.Errorf("cluster %s: conflict condition = %+v", h.src.cfg.Cluster.Name, c)
			}
			imp, err := h.importOf(ctx, "web")
			if err != nil {
				return err
			}
			if len(imp.Spec.Ports) != 1 || imp.Spec.Ports[0].Port != 8080 {
				return fmt.Errorf("cluster %s: import ports %+v, want the older export's 8080", h.src.cfg.Cluster.Name, imp.Spec.Ports)
			}
			return nil
		})
	}
}

// TestImportSurvivesRestart: a restarted operator whose view of the mesh
// is still partial (the other exporting cluster not seen yet) publishes
// the import its records carried before, on the derived Service and
// slices it keeps, from its first service set on: the agents never stop
// serving the ClusterSetIP or the other cluster's backends. Once the
// exporter is seen again nothing changes.
func TestImportSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	store := memory.New()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}}
	svc := service("default", "web", nil, corev1.ServicePort{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP})
	exp := &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web",
		CreationTimestamp: metav1.NewTime(time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC))}}
	west := westWeb(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), nil, clustermesh.ServicePort{Name: "http", Port: 80, Protocol: clustermesh.TCP})
	h := startClusterSet(t, []runtime.Object{ns, svc}, []runtime.Object{exp})
	h.mesh.set("west", west)
	h.src.MeshChanged()
	var before *clustermesh.Service
	var slices0 *discoveryv1.EndpointSliceList
	testenv.Eventually(t, 10*time.Second, func() error {
		before, _ = h.pub.get(svcKey("default", "web")).(*clustermesh.Service)
		if before == nil || before.Import == nil || len(before.Import.Clusters["http"]) != 2 {
			return fmt.Errorf("record %+v has no import served by both clusters", before)
		}
		var err error
		slices0, err = h.kube.DiscoveryV1().EndpointSlices("default").List(ctx, metav1.ListOptions{LabelSelector: mcsv1beta1.LabelServiceName + "=web"})
		if err != nil || len(slices0.Items) == 0 {
			return fmt.Errorf("no import slices yet: %v", err)
		}
		return nil
	})
	// Stand in for the publisher: the record is in the store, as Run
	// leaves it across a restart.
	val, err := json.Marshal(before)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Put(ctx, before.Key(), val, 0); err != nil {
		t.Fatal(err)
	}
	derived, err := h.kube.CoreV1().Services("default").Get(ctx, derivedName("web"), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	imp, err := h.importOf(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	h.stop()

	objs := []runtime.Object{ns, svc, derived}
	for i := range slices0.Items {
		objs = append(objs, &slices0.Items[i])
	}
	partial := &fakeMesh{}
	h2 := startWithMesh(t, Config{Cluster: testCluster, BatchDelay: time.Millisecond, ClusterSetCIDRs: []netip.Prefix{clusterSet}},
		store, partial, objs, []runtime.Object{exp, imp})
	same := func(when string) {
		t.Helper()
		rec, _ := h2.pub.get(svcKey("default", "web")).(*clustermesh.Service)
		if rec == nil || rec.Import == nil || !slices.Equal(rec.Import.IPs, before.Import.IPs) ||
			!slices.Equal(rec.Import.Clusters["http"], before.Import.Clusters["http"]) {
			t.Fatalf("record %s: %+v, want the import %+v", when, rec, before.Import)
		}
		l, err := h2.kube.DiscoveryV1().EndpointSlices("default").List(ctx, metav1.ListOptions{LabelSelector: mcsv1beta1.LabelServiceName + "=web"})
		if err != nil || len(l.Items) != len(slices0.Items) {
			t.Fatalf("import slices %s: %v %v, want %d", when, l, err, len(slices0.Items))
		}
		d, err := h2.kube.CoreV1().Services("default").Get(ctx, derivedName("web"), metav1.GetOptions{})
		if err != nil || d.UID != derived.UID || d.Spec.ClusterIP != derived.Spec.ClusterIP {
			t.Fatalf("derived service %s: %+v (%v), was %+v", when, d, err, derived)
		}
	}
	// startWithMesh returned once the first service set was handed over.
	same("in the first service set after the restart")
	// mesh_to_kube passes over the partial view keep it: west unknown,
	// then known but not synced.
	h2.src.MeshChanged()
	partial.mu.Lock()
	partial.clusters = map[clustermesh.ClusterName]RemoteCluster{"west": {Services: map[string]clustermesh.Service{}}}
	partial.mu.Unlock()
	h2.src.MeshChanged()
	// west is seen again: the view is complete and the import unchanged.
	partial.set("west", west)
	partial.mu.Lock()
	partial.complete = true
	partial.mu.Unlock()
	h2.src.MeshChanged()
	testenv.Eventually(t, 10*time.Second, func() error {
		imp, err := h2.importOf(ctx, "web")
		if err != nil {
			return err
		}
		if len(imp.Status.Clusters) != 2 {
			return fmt.Errorf("import status %+v, want east and west", imp.Status)
		}
		return nil
	})
	same("once west is seen again")
	for i, r := range h2.pub.writes(svcKey("default", "web")) {
		rec, _ := r.(*clustermesh.Service)
		if rec == nil || rec.Import == nil || !slices.Equal(rec.Import.IPs, before.Import.IPs) ||
			!slices.Equal(rec.Import.Clusters["http"], before.Import.Clusters["http"]) {
			t.Fatalf("write %d of the record after the restart: %+v, want the import %+v", i, rec, before.Import)
		}
	}
}
