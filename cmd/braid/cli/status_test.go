package cli

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/yaml"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/status"
)

// meshSource serves fixed documents: the first unhealthy ones, then the
// healthy one.
type meshSource struct {
	unhealthy int32
	calls     atomic.Int32
	doc       status.Mesh
}

func (m *meshSource) Mesh() status.Mesh {
	d := m.doc
	if m.calls.Add(1) <= m.unhealthy {
		d.Clusters = append([]status.MeshCluster(nil), d.Clusters...)
		d.Clusters[0].Healthy = false
		d.Clusters[0].Problems = []string{"services not synced yet: is the cluster's braid-operator running and connected?"}
	}
	return d
}

func (m *meshSource) Subscribe() (<-chan struct{}, func()) { return make(chan struct{}), func() {} }

func testMesh(now time.Time) status.Mesh {
	return status.Mesh{
		APIVersion: status.MeshAPIVersion, Source: "broker", Time: now, Ready: true,
		Clusters: []status.MeshCluster{{
			Name: "east", ID: 1, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}, Healthy: true,
			Synced:     map[clustermesh.Kind]bool{clustermesh.KindNodes: true, clustermesh.KindServices: true},
			Entries:    map[clustermesh.Kind]int{clustermesh.KindNodes: 1, clustermesh.KindServices: 1},
			LastUpdate: now.Add(-1500 * time.Millisecond), SyncAgeSeconds: 1.5,
			Nodes: []status.MeshNode{{Name: "n1", IPs: []netip.Addr{netip.MustParseAddr("192.168.1.1")}, Agent: true, Synced: true,
				StatusAgeSeconds: 2, GossipMembers: 2, GossipAlive: 2,
				Tunnels: []status.MeshTunnel{{Peer: "west/n1", HandshakeAgeSeconds: 12, RxBytes: 100, TxBytes: 200}}}},
		}},
		Services: []status.GlobalService{{Namespace: "default", Name: "web", Affinity: clustermesh.AffinityLocal,
			Backends: []status.ClusterBackends{{Cluster: "east", Ready: 2, Total: 3, Shared: true}},
			Tiers:    map[clustermesh.ClusterName]string{"east": "local"}}},
		Errors: []status.MeshError{},
	}
}

func TestStatusJSONIsVersionedAndComplete(t *testing.T) {
	now := time.Date(2026, 12, 3, 7, 0, 0, 0, time.UTC)
	srv := httptest.NewServer(status.MeshHandler(&meshSource{doc: testMesh(now)}, nil))
	defer srv.Close()

	var out, errOut bytes.Buffer
	if code := Run(t.Context(), NewRoot(&out, &errOut), []string{"status", "--url", srv.URL, "-o", "json"}); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	// Field by field, as a script would read it.
	var got map[string]any
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"apiVersion": "braid.io/status/v1", "kind": "Status", "source": srv.URL, "healthy": true, "problems": []any{},
		"mesh": map[string]any{
			"apiVersion": "braid.io/mesh/v1", "source": "broker", "time": "2026-12-03T07:00:00Z", "ready": true,
			"clusters": []any{map[string]any{
				"name": "east", "id": 1.0, "podCIDRs": []any{"10.1.0.0/16"}, "healthy": true,
				"synced":     map[string]any{"nodes": true, "services": true},
				"entries":    map[string]any{"nodes": 1.0, "services": 1.0},
				"lastUpdate": "2026-12-03T06:59:58.5Z", "syncAgeSeconds": 1.5,
				"nodes": []any{map[string]any{
					"name": "n1", "ips": []any{"192.168.1.1"}, "agent": true, "synced": true, "statusAgeSeconds": 2.0,
					"gossipMembers": 2.0, "gossipAlive": 2.0,
					"tunnels": []any{map[string]any{"peer": "west/n1", "handshakeAgeSeconds": 12.0, "rxBytes": 100.0, "txBytes": 200.0}},
				}},
			}},
			"services": []any{map[string]any{
				"namespace": "default", "name": "web", "affinity": "local",
				"backends": []any{map[string]any{"cluster": "east", "ready": 2.0, "total": 3.0, "shared": true}},
				"tiers":    map[string]any{"east": "local"},
			}},
			"errors": []any{},
		},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("status -o json (-want +got):\n%s", diff)
	}

	out.Reset()
	if code := Run(t.Context(), NewRoot(&out, &errOut), []string{"status", "--url", srv.URL, "-o", "yaml"}); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	var fromYAML map[string]any
	if err := yaml.Unmarshal(out.Bytes(), &fromYAML); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, fromYAML); diff != "" {
		t.Errorf("status -o yaml differs from json (-json +yaml):\n%s", diff)
	}

	out.Reset()
	if code := Run(t.Context(), NewRoot(&out, &errOut), []string{"status", "--url", srv.URL}); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	for _, want := range []string{"east     1   healthy", "east/n1  synced", "west/n1", "12s", "default/web  local", "east 2/3"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
}

func TestStatusWaitBlocksUntilSynced(t *testing.T) {
	src := &meshSource{unhealthy: 3, doc: testMesh(time.Now())}
	srv := httptest.NewServer(status.MeshHandler(src, nil))
	defer srv.Close()
	var out, errOut bytes.Buffer
	// Without --wait an unsynced mesh fails at once, with the hint.
	if code := Run(t.Context(), NewRoot(&out, &errOut), []string{"status", "--url", srv.URL}); code != 1 ||
		!strings.Contains(errOut.String(), "cluster east: services not synced yet: is the cluster's braid-operator running") {
		t.Fatalf("exit %d, stderr %q", code, errOut.String())
	}
	errOut.Reset()
	if code := Run(t.Context(), NewRoot(&out, &errOut), []string{"status", "--url", srv.URL, "--wait", "--timeout", "1m", "-o", "json"}); code != 0 {
		t.Fatalf("--wait: exit %d: %s", code, errOut.String())
	}
	if n := src.calls.Load(); n <= src.unhealthy {
		t.Fatalf("--wait returned after %d reads, before the mesh was synced", n)
	}
	// A mesh that never syncs: --wait gives up and says what is missing.
	never := &meshSource{unhealthy: 1 << 30, doc: testMesh(time.Now())}
	srv2 := httptest.NewServer(status.MeshHandler(never, nil))
	defer srv2.Close()
	errOut.Reset()
	if code := Run(t.Context(), NewRoot(&out, &errOut), []string{"status", "--url", srv2.URL, "--wait", "--timeout", "1s"}); code != 1 ||
		!strings.Contains(errOut.String(), "not synced after 1s: cluster east: services not synced yet") {
		t.Fatalf("exit %d, stderr %q", code, errOut.String())
	}
}

var _ http.Handler = status.MeshHandler(&meshSource{}, nil)
