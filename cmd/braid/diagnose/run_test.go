package diagnose

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/broker"
	"github.com/braidmesh/braid/clustermesh/status"
)

type fixed status.Snapshot

func (f fixed) Snapshot() status.Snapshot { s := status.Snapshot(f); s.Time = time.Now(); return s }

// TestRunAgainstABroker reads a real (embedded) broker: a legacy config
// overlapping a grant is named with both clusters, an agent's silent peer
// with both nodes, and a removed cluster's bundle is refused with the fix.
func TestRunAgainstABroker(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	b, stop, err := broker.StartLocal(ctx, filepath.Join(dir, "broker"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	east, err := b.AddCluster(ctx, clustermesh.Grant{Name: "east", ID: 1, PodCIDRs: pfx("10.100.0.0/16"), ServiceCIDRs: pfx("172.16.0.0/16")})
	if err != nil {
		t.Fatal(err)
	}
	west, err := b.AddCluster(ctx, clustermesh.Grant{Name: "west", ID: 2, PodCIDRs: pfx("10.101.0.0/16")})
	if err != nil {
		t.Fatal(err)
	}
	eastFile, westFile := filepath.Join(dir, "east.json"), filepath.Join(dir, "west.json")
	if err := east.Save(eastFile); err != nil {
		t.Fatal(err)
	}
	if err := west.Save(westFile); err != nil {
		t.Fatal(err)
	}

	// A clean mesh: no findings.
	rep, err := Run(ctx, Config{JoinFile: eastFile, NoAgents: true}, http.DefaultClient)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Errors+rep.Warnings != 0 || rep.Clusters != 2 || rep.Cluster != "east" {
		t.Fatalf("clean mesh: %+v", rep)
	}

	// The older layout: a config, written as root, without a grant.
	admCfg, err := broker.LocalAdminConfig(filepath.Join(dir, "broker"), b.Endpoints())
	if err != nil {
		t.Fatal(err)
	}
	adm, err := broker.AdminClient(ctx, admCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	north := clustermesh.ClusterConfig{Name: "north", ID: 3, PodCIDRs: pfx("10.100.128.0/17")}
	val, _ := json.Marshal(north)
	if _, err := adm.Put(ctx, north.Key(), string(val)); err != nil {
		t.Fatal(err)
	}
	// One agent whose WireGuard peer has been silent for 90 s.
	snap := status.Snapshot{Cluster: "east", Role: "agent", Node: "east-0", Healthy: true,
		Tunnel: &status.TunnelStatus{Device: "wg0", ListenPort: 51820, MTU: 1440, Overhead: 60, KeepaliveSeconds: 25,
			Peers: []status.TunnelPeer{{Name: "west/west-0", HandshakeAgeSeconds: -1, SilentSeconds: 90}}}}
	srv := httptest.NewServer(status.Handler(fixed(snap)))
	defer srv.Close()
	rep, err = Run(ctx, Config{JoinFile: eastFile, AgentURLs: []string{srv.URL}}, http.DefaultClient)
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]Finding{}
	for _, f := range rep.Findings {
		found[f.Check] = f
	}
	ov := found[CheckRanges]
	if !strings.Contains(ov.What, "cluster east") || !strings.Contains(ov.What, "cluster north") || len(ov.Where) != 2 {
		t.Errorf("overlap finding: %+v", ov)
	}
	if wg := found[CheckWireGuard]; !strings.Contains(wg.What, "east/east-0") || !strings.Contains(wg.What, "west/west-0") {
		t.Errorf("wireguard finding: %+v", wg)
	}
	if rep.Errors != 2 || rep.Agents != 1 {
		t.Errorf("report: %+v", rep)
	}

	// west removed: its bundle no longer authenticates.
	if err := b.RemoveCluster(ctx, "west"); err != nil {
		t.Fatal(err)
	}
	rep, err = Run(ctx, Config{JoinFile: westFile, NoAgents: true}, http.DefaultClient)
	if err != nil {
		t.Fatal(err)
	}
	bf := rep.Findings[0]
	t.Logf("removed cluster: %s\n  fix: %s", bf.What, bf.Fix)
	if bf.Check != CheckBroker || !strings.Contains(bf.Fix, "refused the credentials") || !strings.Contains(bf.Fix, "add-cluster west") {
		t.Fatalf("removed cluster: %+v", rep.Findings)
	}
	for _, c := range rep.Checks {
		if c.Name == CheckRanges && c.Result != "skipped" {
			t.Errorf("ranges checked without a mesh: %+v", c)
		}
	}
}
