package status_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/status"
	"github.com/braidmesh/braid/reconcile"
)

type fixed status.Snapshot

func (f fixed) Snapshot() status.Snapshot { return status.Snapshot(f) }

func TestHandlerServesJSONPageAndHealth(t *testing.T) {
	now := time.Now()
	snap := status.Snapshot{Cluster: "east", Role: "operator", Time: now, Healthy: false, Problems: []string{"cluster west: disconnected"},
		Remotes: []clustermesh.RemoteClusterStatus{
			{Name: "west", ID: 2, Connected: true, Synced: true, Entries: map[clustermesh.Kind]int{clustermesh.KindNodes: 3}, LastUpdate: now.Add(-1500 * time.Millisecond)},
			{Name: "gone", ID: 3, Gone: true},
		},
		Loops: []reconcile.Status{{Name: "tunnel_peers", Rounds: 4, ConsecutiveFailures: 2, LastError: "injected"}}}
	srv := httptest.NewServer(status.Handler(fixed(snap)))
	defer srv.Close()

	got, err := status.Fetch(t.Context(), srv.Client(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if got.Cluster != "east" || len(got.Remotes) != 2 || got.Remotes[0].Entries[clustermesh.KindNodes] != 3 ||
		len(got.Loops) != 1 || got.Loops[0] != snap.Loops[0] {
		t.Fatalf("round trip: %+v", got)
	}

	resp, err := srv.Client().Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	html := string(body)
	for _, want := range []string{`data-cluster="west"`, `class="synced"`, `class="gone"`, "1.5s", "Degraded: cluster west: disconnected", `data-loop="tunnel_peers"`} {
		if !strings.Contains(html, want) {
			t.Errorf("page lacks %q", want)
		}
	}

	for _, path := range []string{"/healthz", "/readyz"} {
		resp, _ = srv.Client().Get(srv.URL + path)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("%s = %d for an unhealthy snapshot, want 503", path, resp.StatusCode)
		}
	}
}

func TestSetHealthFlagsDisconnectedAndStaleRemotesOnly(t *testing.T) {
	now := time.Now()
	s := status.Snapshot{Time: now, Remotes: []clustermesh.RemoteClusterStatus{
		{Name: "up", Connected: true},
		{Name: "down", LastError: "connection refused"},
		{Name: "left", Gone: true},
		{Name: "quiet", Connected: true, Stale: true, LastProgress: now.Add(-42 * time.Second)},
	}}
	s.SetHealth()
	if s.Healthy || len(s.Problems) != 2 || s.Problems[0] != "cluster down: disconnected: connection refused" ||
		!strings.HasPrefix(s.Problems[1], "cluster quiet: stale: its watches have shown no progress for 42s") || !strings.Contains(s.Problems[1], "hint: ") {
		t.Fatalf("healthy %v problems %q", s.Healthy, s.Problems)
	}
	ok := status.Snapshot{Remotes: []clustermesh.RemoteClusterStatus{{Name: "up", Connected: true}}}
	ok.SetHealth()
	if !ok.Healthy {
		t.Fatalf("problems %q for a connected mesh", ok.Problems)
	}
}

func TestAddLoopsFlagsFailingLoopsOnly(t *testing.T) {
	var s status.Snapshot
	s.AddLoops(reconcile.Status{Name: "mesh", Rounds: 3},
		reconcile.Status{Name: "tunnel_peers", Rounds: 2, ConsecutiveFailures: 1, LastError: "no such device"})
	s.SetHealth()
	if s.Healthy || len(s.Problems) != 1 || !strings.Contains(s.Problems[0], "tunnel_peers") || !strings.Contains(s.Problems[0], "no such device") {
		t.Fatalf("healthy %v problems %q", s.Healthy, s.Problems)
	}
	if len(s.Loops) != 2 {
		t.Errorf("loops %+v, want both", s.Loops)
	}
}

// TestPagePolicy: an agent's policy fields round-trip through the status
// document and appear on the page: what is loaded and enforced, the
// identities the policies select, drops per policy and the last drops.
func TestPagePolicy(t *testing.T) {
	snap := status.Snapshot{Cluster: "east", Role: "agent", Node: "east-0", Time: time.Now(), Healthy: true,
		Policy: &status.PolicyStatus{Synced: true, Policies: 2, Rules: 5, Revision: "abc1", Enforced: "abc0",
			Identities: []status.PolicyIdentity{{Identity: 1<<16 | 2, Namespace: "a",
				Labels:  map[string]string{"app": "db", clustermesh.LabelNamespace: "a", clustermesh.NamespaceLabelPrefix + "team": "x"},
				Ingress: []string{"a/db-from-web", "a/deny"}, Dropped: 7}},
			Drops: []status.PolicyDrops{{Policy: "a/db-from-web", Direction: "ingress", Reason: "policy", Packets: 7}, {Direction: "ingress", Reason: "default_deny", Packets: 3}},
			RecentDrops: []status.PolicyDrop{{AgeSeconds: 1.25, Direction: "ingress", Reason: "policy", Source: 2<<16 | 1, SourceCluster: "west",
				Destination: 1<<16 | 2, DestinationCluster: "east", From: "10.2.5.2", To: "10.1.2.2:8080", Protocol: "TCP"}}}}
	srv := httptest.NewServer(status.Handler(fixed(snap)))
	defer srv.Close()
	got, err := status.Fetch(t.Context(), srv.Client(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if p := got.Policy; p == nil || p.Revision != "abc1" || p.Enforced != "abc0" || len(p.Identities) != 1 || len(p.Drops) != 2 || len(p.RecentDrops) != 1 ||
		p.RecentDrops[0].SourceCluster != "west" || p.Identities[0].Ingress[1] != "a/deny" {
		t.Fatalf("policy round trip: %+v", got.Policy)
	}
	resp, err := srv.Client().Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	html := string(body)
	for _, want := range []string{"Network policy", "2 policies, 5 rules", "revision abc1 (datapath enforces abc0)",
		`data-identity="65538"`, "<td>app=db</td>", "a/db-from-web, a/deny", "<td>7</td>",
		`data-policy="a/db-from-web"`, "(default deny)", "default_deny",
		"1.2s", "131073 (west)", "10.2.5.2", "10.1.2.2:8080", "TCP"} {
		if !strings.Contains(html, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(html, "team=x") {
		t.Errorf("page shows the derived namespace labels among the pod's labels")
	}
}
