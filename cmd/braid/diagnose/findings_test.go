package diagnose

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/status"
)

func pfx(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range s {
		out = append(out, netip.MustParsePrefix(p))
	}
	return out
}

// only returns the findings of check, failing t unless there are n.
func only(t *testing.T, fs []Finding, check string, n int) []Finding {
	t.Helper()
	var out []Finding
	for _, f := range fs {
		if f.Check == check {
			out = append(out, f)
		}
	}
	if len(out) != n {
		t.Fatalf("%d %s findings, want %d: %+v", len(out), check, n, fs)
	}
	return out
}

func names(t *testing.T, f Finding, want ...string) {
	t.Helper()
	text := strings.Join(f.Where, " | ") + " || " + f.What + " || " + f.Fix
	for _, w := range want {
		if !strings.Contains(text, w) {
			t.Errorf("finding does not name %q: %+v", w, f)
		}
	}
	if f.Fix == "" {
		t.Errorf("finding without a fix: %+v", f)
	}
}

func TestRangesNameBothClusters(t *testing.T) {
	east := clustermesh.StoredGrant{Grant: clustermesh.Grant{Name: "east", ID: 1, PodCIDRs: pfx("10.100.0.0/16"), ServiceCIDRs: pfx("172.16.0.0/16")}, CreateRevision: 5}
	west := clustermesh.StoredGrant{Grant: clustermesh.Grant{Name: "west", ID: 2, PodCIDRs: pfx("10.101.0.0/16"), ServiceCIDRs: pfx("172.17.0.0/16")}, CreateRevision: 6}
	m := Mesh{
		Grants: []clustermesh.StoredGrant{east, west},
		// Each cluster's own config repeats its grant: no finding.
		Configs: []clustermesh.ClusterConfig{east.Config(clustermesh.Capabilities{}), west.Config(clustermesh.Capabilities{})},
	}
	if fs := CheckRangesOf(m); len(fs) != 0 {
		t.Fatalf("a clean mesh: %+v", fs)
	}

	// An older layout's config (no grant) claiming part of east's pods.
	m.Configs = append(m.Configs, clustermesh.ClusterConfig{Name: "north", ID: 3, PodCIDRs: pfx("10.100.128.0/17")})
	// An older broker's grant reusing west's ID and service range.
	m.Grants = append(m.Grants, clustermesh.StoredGrant{Grant: clustermesh.Grant{Name: "south", ID: 2, PodCIDRs: pfx("10.103.0.0/16"), ServiceCIDRs: pfx("172.17.5.0/24")}, CreateRevision: 9})
	fs := CheckRangesOf(m)
	ranges := only(t, fs, CheckRanges, 3)
	overlap := ranges[0]
	names(t, ranges[1], "cluster west", "cluster south", "cluster ID 2")
	names(t, ranges[1], "remove-cluster south", "--cluster-id 4")
	names(t, ranges[2], "cluster west", "cluster south", "service CIDR 172.17.0.0/16", "service CIDR 172.17.5.0/24", "--service-cidr")
	names(t, overlap, "cluster east", "cluster north", "pod CIDR 10.100.0.0/16", "pod CIDR 10.100.128.0/17", "config, no grant")
	// The younger (the config) is to move, to a /17 nobody uses.
	names(t, overlap, "give cluster north a pod CIDR", "e.g. 10.0.0.0/17", "--pod-cidr")
	for _, f := range ranges {
		if f.Severity != SeverityError {
			t.Errorf("not an error: %+v", f)
		}
	}
	v := only(t, fs, CheckValidation, 1)[0]
	names(t, v, "cluster north", "no grant")
}

func TestFreePrefixSkipsUsedRanges(t *testing.T) {
	got, ok := freePrefix(netip.MustParsePrefix("10.100.0.0/16"), pfx("10.0.0.0/15", "10.3.0.0/16"))
	if !ok || got != netip.MustParsePrefix("10.2.0.0/16") {
		t.Fatalf("got %v %v", got, ok)
	}
	if _, ok := freePrefix(netip.MustParsePrefix("fd00::/64"), nil); ok {
		t.Fatal("IPv6 suggestion")
	}
}

func TestCertificates(t *testing.T) {
	now := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
	fs := CheckCertificatesOf([]Cert{
		{What: "ca", Where: "bundle", NotAfter: now.Add(365 * 24 * time.Hour)},
		{What: "server", Where: "broker", NotAfter: now.Add(-time.Hour)},
		{What: "soon", Where: "broker", NotAfter: now.Add(48 * time.Hour)},
	}, now)
	fs = only(t, fs, CheckCertificates, 2)
	if fs[0].Severity != SeverityError || !strings.Contains(fs[0].What, "server expired 1h0m0s ago") {
		t.Errorf("expired: %+v", fs[0])
	}
	if fs[1].Severity != SeverityWarning || !strings.Contains(fs[1].What, "soon expires in 48h") {
		t.Errorf("expiring: %+v", fs[1])
	}
}

// mesh is two clusters of one node each, both with keys.
var meshNodes = []clustermesh.Node{
	{Name: "east-0", Cluster: "east", IPs: []netip.Addr{netip.MustParseAddr("10.250.0.11")}, WireGuardKey: "k1"},
	{Name: "west-0", Cluster: "west", IPs: []netip.Addr{netip.MustParseAddr("10.250.0.12")}, WireGuardKey: "k2"},
}

func view(cluster, node string, tun *status.TunnelStatus) AgentView {
	now := time.Now()
	return AgentView{Cluster: clustermesh.ClusterName(cluster), Node: node, URL: "http://x",
		Status: status.Snapshot{Cluster: clustermesh.ClusterName(cluster), Node: node, Role: "agent", Time: now, Tunnel: tun},
		Sent:   now, Received: now}
}

func tun(peer string, silent float64) *status.TunnelStatus {
	return &status.TunnelStatus{Device: "wg0", ListenPort: 51820, MTU: 1440, Overhead: 60, UnderlayDevice: "eth0", UnderlayMTU: 1500,
		KeepaliveSeconds: 25, Peers: []status.TunnelPeer{{Name: peer, HandshakeAgeSeconds: 100, SilentSeconds: silent}}}
}

func TestWireGuardSilenceNamesBothNodes(t *testing.T) {
	views := []AgentView{view("east", "east-0", tun("west/west-0", 20)), view("west", "west-0", tun("east/east-0", 20))}
	if fs := CheckWireGuardOf(views, meshNodes); len(fs) != 0 {
		t.Fatalf("peers heard from 20 s ago: %+v", fs)
	}
	// west-0 heard nothing from east-0 for 75 s, past 2 keepalives and
	// the sampling slack (60 s).
	views[1].Status.Tunnel.Peers[0].SilentSeconds = 75
	f := only(t, CheckWireGuardOf(views, meshNodes), CheckWireGuard, 1)[0]
	names(t, f, "node east/east-0 (10.250.0.11)", "node west/west-0 (10.250.0.12)", "for 1m15s", "port 51820", "from 10.250.0.11 to 10.250.0.12 port 51820")
	if f.Severity != SeverityError || len(f.Where) != 2 {
		t.Errorf("%+v", f)
	}

	// A node that published a key but is no peer.
	views[0].Status.Tunnel.Peers = nil
	fs := CheckWireGuardOf(views, meshNodes)
	missing := only(t, fs, CheckWireGuard, 2)[0]
	names(t, missing, "node east/east-0", "no WireGuard peer", "node west/west-0")
}

func TestMTUAgainstBothEnds(t *testing.T) {
	east, west := tun("west/west-0", 0), tun("east/east-0", 0)
	views := []AgentView{view("east", "east-0", east), view("west", "west-0", west)}
	if fs := CheckMTUOf(views); len(fs) != 0 {
		t.Fatalf("1440+60 over 1500: %+v", fs)
	}
	west.UnderlayMTU = 1450 // e.g. west's nodes sit on an overlay
	fs := only(t, CheckMTUOf(views), CheckMTU, 2)
	// west's own device does not fit its underlay...
	names(t, fs[0], "node east/east-0", "node west/west-0", "1500 bytes", "MTU 1450", "--underlay-mtu 1450")
	names(t, fs[1], "node west/west-0", "exceed the MTU 1450 of its underlay eth0", "--underlay-mtu 1450")

	// A router between them is smaller still; east's kernel learned it.
	west.UnderlayMTU = 1500
	east.Peers[0].PathMTU, east.Peers[0].Endpoint = 1400, "10.250.0.12:51820"
	f := only(t, CheckMTUOf(views), CheckMTU, 1)[0]
	names(t, f, "node east/east-0", "node west/west-0", "10.250.0.12:51820", "at most 1400 bytes", "--underlay-mtu 1400")
}

func TestGossipClockMapsStrictAgents(t *testing.T) {
	a, b := view("east", "east-0", nil), view("west", "west-0", nil)
	a.Status.Nodes = []status.NodeHealth{
		{Cluster: "east", Node: "east-0", State: "alive", LastSeenSeconds: 0},
		{Cluster: "west", Node: "west-0", State: "dead", Unreachable: true, LastSeenSeconds: 42},
	}
	f := only(t, CheckGossipOf([]AgentView{a, b}, meshNodes, 7947), CheckGossip, 1)[0]
	names(t, f, "node east/east-0 (10.250.0.11)", "node west/west-0 (10.250.0.12)", "dead", "42s", "port 7947")

	// Clocks: b runs 3 s ahead; the requests took 10 ms.
	b.Status.Time = b.Sent.Add(5*time.Millisecond + 3*time.Second)
	b.Received = b.Sent.Add(10 * time.Millisecond)
	a.Status.Time = a.Sent.Add(5 * time.Millisecond)
	a.Received = a.Sent.Add(10 * time.Millisecond)
	f = only(t, CheckClockOf([]AgentView{a, b}), CheckClock, 1)[0]
	names(t, f, "node west/west-0 is 3s ahead of node east/east-0")
	if f.Severity != SeverityError {
		t.Errorf("3 s skew: %+v", f)
	}
	b.Status.Time = b.Sent.Add(5 * time.Millisecond)
	if fs := CheckClockOf([]AgentView{a, b}); len(fs) != 0 {
		t.Errorf("agreeing clocks: %+v", fs)
	}

	a.Status.Maps = []status.MapFill{{Name: "backends", Entries: 95, Capacity: 100, Pressure: 0.95}, {Name: "services", Entries: 80, Capacity: 100, Pressure: 0.8}, {Name: "ct", Entries: 1, Capacity: 100, Pressure: 0.01}}
	fs := only(t, CheckMapsOf([]AgentView{a, b}), CheckMaps, 2)
	if fs[0].Severity != SeverityError || fs[1].Severity != SeverityWarning {
		t.Errorf("map severities: %+v", fs)
	}
	names(t, fs[0], "node east/east-0", "backends holds 95 of 100")

	a.Status.Tunnel = &status.TunnelStatus{Device: "wg0", Strict: true, StrictDrops: 7}
	names(t, only(t, CheckStrictOf([]AgentView{a, b}), CheckStrict, 1)[0], "node east/east-0", "dropped 7 packets")

	b.Err = errTest
	names(t, only(t, CheckAgentsOf([]AgentView{a, b}), CheckAgents, 1)[0], "node west/west-0", "http://x", "connection refused")
}

var errTest = testErr("connection refused")

type testErr string

func (e testErr) Error() string { return string(e) }

func TestValidationMergesWhatSeveralAgentsSee(t *testing.T) {
	a, b := view("east", "east-0", nil), view("west", "west-0", nil)
	r := clustermesh.RemoteClusterStatus{Name: "north", Ungranted: "grant ignored, it conflicts with an older grant"}
	a.Status.Remotes = []clustermesh.RemoteClusterStatus{r, {Name: "west", Invalid: 2, Rejected: []string{"ip 10.9.0.1/32 outside pod CIDRs"}}}
	b.Status.Remotes = []clustermesh.RemoteClusterStatus{r, {Name: "gone", Gone: true, Ungranted: "x"}}
	fs := only(t, CheckValidationOf([]AgentView{a, b}), CheckValidation, 2)
	names(t, fs[0], "cluster north", "node east/east-0", "node west/west-0", "conflicts with an older grant")
	if fs[0].Severity != SeverityError {
		t.Errorf("%+v", fs[0])
	}
	names(t, fs[1], "cluster west", "10.9.0.1/32", "node east/east-0")
}

func TestReportResultsAndOrder(t *testing.T) {
	var r Report
	r.add([]Finding{
		{Check: CheckClock, Severity: SeverityWarning, What: "w", Fix: "f"},
		{Check: CheckRanges, Severity: SeverityError, What: "e", Fix: "f"},
	}, map[string]string{CheckStrict: "no tunnel"})
	if r.Errors != 1 || r.Warnings != 1 || r.Findings[0].Check != CheckRanges {
		t.Fatalf("%+v", r)
	}
	results := map[string]string{}
	for _, c := range r.Checks {
		results[c.Name] = c.Result
	}
	if results[CheckRanges] != "error" || results[CheckClock] != "warning" || results[CheckStrict] != "skipped" || results[CheckMaps] != "ok" {
		t.Fatalf("%v", results)
	}
	if !slices.EqualFunc(r.Checks, Checks, func(c CheckResult, d struct{ Name, Doc string }) bool { return c.Name == d.Name }) {
		t.Fatalf("checks out of order: %+v", r.Checks)
	}
}
