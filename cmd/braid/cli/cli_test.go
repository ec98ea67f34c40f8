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

// TestStatusCommandPrintsPolicy: an agent's policy enforcement shows in
// `braid status`: policies loaded and enforced, selected identities, drops
// per policy and reason, the last drops with their source cluster.
func TestStatusCommandPrintsPolicy(t *testing.T) {
	snap := status.Snapshot{Cluster: "east", Role: "agent", Time: time.Now(), Healthy: true,
		Policy: &status.PolicyStatus{Synced: true, Policies: 2, Rules: 5, Revision: "abc1", Enforced: "abc1",
			Identities: []status.PolicyIdentity{{Identity: 1<<16 | 2, Namespace: "a", Labels: map[string]string{"app": "db", clustermesh.LabelNamespace: "a"},
				Ingress: []string{"a/db-from-web"}, Dropped: 7}},
			Drops: []status.PolicyDrops{{Policy: "a/db-from-web", Direction: "ingress", Reason: "policy", Packets: 7}, {Direction: "ingress", Reason: "default_deny", Packets: 3}},
			RecentDrops: []status.PolicyDrop{{AgeSeconds: 2, Direction: "ingress", Reason: "policy", Source: 2<<16 | 1, SourceCluster: "west",
				From: "10.2.5.2", To: "10.1.2.2:8080", Protocol: "TCP"}, {AgeSeconds: 1, Direction: "egress", Reason: "policy", Source: 1<<16 | 2,
				SourceCluster: "east", From: "10.1.2.2", To: "192.0.2.10:80", Protocol: "TCP"}}}}
	srv := httptest.NewServer(status.Handler(fixed(snap)))
	defer srv.Close()
	var out, errOut bytes.Buffer
	if code := Run(t.Context(), NewRoot(&out, &errOut), []string{"status", "--url", srv.URL}); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	for _, want := range []string{
		"network policy: synced, 2 policies, 5 rules, revision abc1 enforced",
		"65538     a          app=db  a/db-from-web     -                7",
		"a/db-from-web   ingress    policy        7",
		"(default deny)  ingress    default_deny  3",
		"2.0s ago    ingress    policy  131073 (west)    10.2.5.2  10.1.2.2:8080  TCP",
		"egress     policy  65538 (east)     10.1.2.2  192.0.2.10:80  TCP",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
