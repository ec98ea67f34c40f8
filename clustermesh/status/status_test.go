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
