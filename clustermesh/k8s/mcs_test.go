package k8s

import (
	"slices"
	"strings"
	"testing"
	"time"

	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/braidmesh/braid/clustermesh"
)

func TestResolve(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	http := clustermesh.ServicePort{Name: "http", Port: 80, Protocol: clustermesh.TCP}
	httpUDP := clustermesh.ServicePort{Name: "http", Port: 80, Protocol: clustermesh.UDP}
	metrics := clustermesh.ServicePort{Name: "metrics", Port: 9090, Protocol: clustermesh.TCP}

	t.Run("union", func(t *testing.T) {
		r := resolve([]exporter{
			{Cluster: "b", ExportedAt: t0.Add(time.Second), Ports: []clustermesh.ServicePort{http, metrics}},
			{Cluster: "a", ExportedAt: t0, Ports: []clustermesh.ServicePort{http}},
		})
		if r.Type != mcsv1beta1.ClusterSetIP || len(r.Ports) != 2 || len(r.Clusters) != 2 || r.Clusters[0] != "a" ||
			!slices.Equal(r.PortClusters["http"], []clustermesh.ClusterName{"a", "b"}) || !slices.Equal(r.PortClusters["metrics"], []clustermesh.ClusterName{"b"}) {
			t.Fatalf("got %+v", r)
		}
		// Differing port sets conflict, union served (the MCS
		// conformance suite requires both).
		if r.Reason != mcsv1beta1.ServiceExportReasonPortConflict ||
			!strings.Contains(r.Message, "conflicting clusters: a, b; cluster a does not export port \"metrics\" (9090/TCP, from cluster b)") {
			t.Fatalf("reason %s message %q", r.Reason, r.Message)
		}
	})
	t.Run("same ports, no conflict", func(t *testing.T) {
		r := resolve([]exporter{
			{Cluster: "b", ExportedAt: t0.Add(time.Second), Ports: []clustermesh.ServicePort{metrics, http}},
			{Cluster: "a", ExportedAt: t0, Ports: []clustermesh.ServicePort{http, metrics}},
		})
		if r.Reason != "" || r.Message != "" || len(r.Ports) != 2 {
			t.Fatalf("got %+v", r)
		}
	})
	t.Run("protocol conflict: oldest wins", func(t *testing.T) {
		r := resolve([]exporter{
			{Cluster: "a", ExportedAt: t0.Add(time.Minute), Ports: []clustermesh.ServicePort{httpUDP}},
			{Cluster: "b", ExportedAt: t0, Ports: []clustermesh.ServicePort{http}},
		})
		if r.Reason != mcsv1beta1.ServiceExportReasonPortConflict || len(r.Ports) != 1 || r.Ports[0] != http {
			t.Fatalf("got %+v", r)
		}
		for _, want := range []string{"conflicting clusters: a, b", "80/UDP in cluster a", "80/TCP in cluster b (oldest export, used)"} {
			if !strings.Contains(r.Message, want) {
				t.Errorf("message %q lacks %q", r.Message, want)
			}
		}
	})
	t.Run("tie broken by name", func(t *testing.T) {
		r := resolve([]exporter{
			{Cluster: "b", ExportedAt: t0, Ports: []clustermesh.ServicePort{httpUDP}},
			{Cluster: "a", ExportedAt: t0, Ports: []clustermesh.ServicePort{http}},
		})
		if r.Ports[0] != http {
			t.Fatalf("got %+v", r)
		}
	})
	t.Run("type conflict", func(t *testing.T) {
		r := resolve([]exporter{
			{Cluster: "a", ExportedAt: t0, Headless: true},
			{Cluster: "b", ExportedAt: t0.Add(time.Second)},
		})
		if r.Reason != mcsv1beta1.ServiceExportReasonTypeConflict || r.Type != mcsv1beta1.Headless || !strings.Contains(r.Message, "differs in cluster b") {
			t.Fatalf("got %+v", r)
		}
	})
	t.Run("port conflict: the loser serves no conflicting port", func(t *testing.T) {
		http81 := clustermesh.ServicePort{Name: "http", Port: 81, Protocol: clustermesh.TCP}
		r := resolve([]exporter{
			{Cluster: "b", ExportedAt: t0.Add(time.Second), Ports: []clustermesh.ServicePort{http81, metrics}},
			{Cluster: "a", ExportedAt: t0, Ports: []clustermesh.ServicePort{http}},
		})
		if len(r.Ports) != 2 || r.Ports[0] != http || !slices.Equal(r.PortClusters["http"], []clustermesh.ClusterName{"a"}) ||
			!slices.Equal(r.PortClusters["metrics"], []clustermesh.ClusterName{"b"}) || r.Reason != mcsv1beta1.ServiceExportReasonPortConflict {
			t.Fatalf("got %+v", r)
		}
		if !strings.Contains(r.Message, "conflicting clusters: a, b") {
			t.Fatalf("message %q", r.Message)
		}
	})
	t.Run("session affinity timeout conflict", func(t *testing.T) {
		r := resolve([]exporter{
			{Cluster: "a", ExportedAt: t0, Ports: []clustermesh.ServicePort{http}, Export: clustermesh.ExportSpec{SessionAffinity: "ClientIP", SessionAffinityTimeout: 10}},
			{Cluster: "b", ExportedAt: t0.Add(time.Second), Ports: []clustermesh.ServicePort{http}, Export: clustermesh.ExportSpec{SessionAffinity: "ClientIP", SessionAffinityTimeout: 20}},
		})
		if r.Reason != mcsv1beta1.ServiceExportReasonSessionAffinityConfigConflict || r.Export.SessionAffinityTimeout != 10 ||
			!strings.Contains(r.Message, "session affinity timeout 10s of cluster a (oldest export, used) differs in cluster b") {
			t.Fatalf("got %+v", r)
		}
	})
	t.Run("equal settings: no conflict", func(t *testing.T) {
		e := clustermesh.ExportSpec{SessionAffinity: "None", InternalTrafficPolicy: "Cluster", Labels: map[string]string{"x": "y"}}
		r := resolve([]exporter{
			{Cluster: "a", ExportedAt: t0, Ports: []clustermesh.ServicePort{http}, Export: e},
			{Cluster: "b", ExportedAt: t0.Add(time.Second), Ports: []clustermesh.ServicePort{http}, Export: clustermesh.ExportSpec{InternalTrafficPolicy: "Cluster", Labels: map[string]string{"x": "y"}}},
		})
		if r.Message != "" || r.Reason != "" {
			t.Fatalf("got %+v", r)
		}
	})
	t.Run("none", func(t *testing.T) {
		if r := resolve(nil); len(r.Clusters) != 0 {
			t.Fatalf("got %+v", r)
		}
	})
}
