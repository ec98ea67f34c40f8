package cli

import (
	"bytes"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/status"
)

type fixed status.Snapshot

func (f fixed) Snapshot() status.Snapshot { return status.Snapshot(f) }

func TestStatusCommandPrintsRemotesAndFailsWhenDegraded(t *testing.T) {
	now := time.Now()
	westLease := 8.4
	snap := status.Snapshot{Cluster: "east", Role: "operator", Time: now, Healthy: true,
		Publish: &clustermesh.PublishStatus{Registered: true, Entries: map[clustermesh.Kind]int{clustermesh.KindNodes: 3}},
		Remotes: []clustermesh.RemoteClusterStatus{
			{Name: "west", ID: 2, Connected: true, Synced: true, Entries: map[clustermesh.Kind]int{clustermesh.KindServices: 7}, LastUpdate: now.Add(-time.Second), LeaseRemaining: &westLease},
			{Name: "north", ID: 3, Gone: true},
			{Name: "south", ID: 4, Connected: true, Synced: true, Stale: true, LastProgress: now.Add(-42 * time.Second), LastUpdate: now.Add(-time.Hour)},
		}}
	srv := httptest.NewServer(status.Handler(fixed(snap)))
	defer srv.Close()

	var out, errOut bytes.Buffer
	if code := Run(t.Context(), NewRoot(&out, &errOut), []string{"status", "--url", srv.URL}); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	for _, want := range []string{"cluster east (operator), publishing nodes 3", "west    2   synced", "synced     8s ", "north   3   gone", "south   4   stale 42s", "1s"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}

	snap.Healthy, snap.Problems = false, []string{"cluster west: disconnected: connection refused"}
	srv2 := httptest.NewServer(status.Handler(fixed(snap)))
	defer srv2.Close()
	out.Reset()
	errOut.Reset()
	if code := Run(t.Context(), NewRoot(&out, &errOut), []string{"status", "--url", srv2.URL}); code != 1 {
		t.Fatalf("degraded mesh: exit %d, want 1", code)
	}
	if !strings.Contains(errOut.String(), "mesh degraded: operator east: cluster west: disconnected") {
		t.Errorf("stderr %q does not say why", errOut.String())
	}
}

func TestStatusCommandNamesTheFixWhenNothingListens(t *testing.T) {
	var out, errOut bytes.Buffer
	code := Run(t.Context(), NewRoot(&out, &errOut), []string{"status", "--url", "http://127.0.0.1:1", "--timeout", "2s"})
	if code != 1 || !strings.Contains(errOut.String(), "braid-agent running with --status-addr there?") {
		t.Fatalf("exit %d, stderr %q", code, errOut.String())
	}
}
