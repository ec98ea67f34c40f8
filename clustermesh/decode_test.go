package clustermesh_test

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/braidmesh/braid/clustermesh"
)

// rejectCase is one value a decoder must refuse at key, with a fragment of
// the reason the error must give.
type rejectCase struct {
	name   string
	key    string
	value  []byte
	reason string
}

func checkKind(t *testing.T, err error, want clustermesh.Kind) {
	t.Helper()
	var ve *clustermesh.ValidationError
	if errors.As(err, &ve) && ve.Kind != want {
		t.Errorf("ValidationError.Kind = %q, want %q", ve.Kind, want)
	}
}

func TestDecodeClusterConfig(t *testing.T) {
	valid := map[string]clustermesh.ClusterConfig{
		"full": eastConfig(),
		"minimal": {
			Name: "w", ID: clustermesh.MinClusterID,
		},
		"max ID, 32 char name": {
			Name: clustermesh.ClusterName(strings.Repeat("a", 32)), ID: clustermesh.MaxClusterID,
			PodCIDRs: prefixes("fd00::/8"),
		},
	}
	for name, c := range valid {
		t.Run("valid/"+name, func(t *testing.T) {
			got, err := clustermesh.DecodeClusterConfig(c.Key(), mustJSON(t, c))
			if err != nil {
				t.Fatalf("DecodeClusterConfig(%q): %v", c.Key(), err)
			}
			if diff := cmp.Diff(c, got, cmpOpts); diff != "" {
				t.Errorf("round trip (-want +got):\n%s", diff)
			}
		})
	}

	east := eastConfig()
	key := east.Key()
	mut := func(f func(*clustermesh.ClusterConfig)) []byte {
		c := eastConfig()
		f(&c)
		return mustJSON(t, c)
	}
	rejects := []rejectCase{
		{"name differs from key", key, mut(func(c *clustermesh.ClusterConfig) { c.Name = "west" }),
			`config names cluster "west", key names "east"`},
		{"case differs from key", key, mut(func(c *clustermesh.ClusterConfig) { c.Name = "East" }),
			`config names cluster "East", key names "east"`},
		{"node key", "braid/v1/nodes/east/node-1", mustJSON(t, east), "not a cluster config key"},
		{"sync marker key", "braid/v1/synced/east/nodes", mustJSON(t, east), "not a cluster config key"},
		{"invalid name in key", "braid/v1/clusters/East", mustJSON(t, east), "not a cluster config key"},
		{"key not under root", "braid/v2/clusters/east", mustJSON(t, east), "not a cluster config key"},
		{"ID 0", key, mut(func(c *clustermesh.ClusterConfig) { c.ID = 0 }), "cluster ID 0: must be in 1..511"},
		{"ID 512", key, mut(func(c *clustermesh.ClusterConfig) { c.ID = 512 }), "cluster ID 512: must be in 1..511"},
		{"ID beyond uint16", key, []byte(`{"name":"east","id":65536}`), "decode JSON"},
		{"pod CIDR host bits", key, mut(func(c *clustermesh.ClusterConfig) { c.PodCIDRs = prefixes("10.2.0.1/16") }),
			"pod CIDR: prefix 10.2.0.1/16 has host bits set (use 10.2.0.0/16)"},
		{"service CIDR host bits", key, mut(func(c *clustermesh.ClusterConfig) { c.ServiceCIDRs = prefixes("fd00:102::1/108") }),
			"service CIDR: prefix fd00:102::1/108 has host bits set"},
		{"empty pod CIDR", key, []byte(`{"name":"east","id":2,"podCIDRs":[""],"capabilities":{}}`), "pod CIDR: invalid prefix"},
		{"malformed pod CIDR", key, []byte(`{"name":"east","id":2,"podCIDRs":["10.2.0.0"]}`), "decode JSON"},
		{"unknown field", key, withField(t, east, "extra", "1"), `unknown field "extra"`},
		{"unknown capability", key, []byte(`{"name":"east","id":2,"capabilities":{"magic":true}}`), `unknown field "magic"`},
		{"trailing object", key, append(mustJSON(t, east), `{}`...), "trailing data after the object"},
		{"trailing garbage", key, append(mustJSON(t, east), ` x`...), "trailing data after the object"},
		{"oversized", key, oversized(t, east), "value is 1048577 bytes, more than 1048576"},
		{"empty value", key, nil, "decode JSON"},
		{"array", key, []byte(`[]`), "decode JSON"},
		{"truncated", key, mustJSON(t, east)[:20], "decode JSON"},
	}
	for _, tc := range rejects {
		t.Run("reject/"+tc.name, func(t *testing.T) {
			got, err := clustermesh.DecodeClusterConfig(tc.key, tc.value)
			wantRejected(t, err, tc.key, tc.reason)
			checkKind(t, err, "")
			if diff := cmp.Diff(clustermesh.ClusterConfig{}, got, cmpOpts); diff != "" {
				t.Errorf("rejected decode returned a non-zero value:\n%s", diff)
			}
		})
	}
}

func TestDecodeNode(t *testing.T) {
	owner := eastConfig()
	minimal := clustermesh.Node{Name: "n", Cluster: "east", IPs: addrs("fd00:ffff::2")}
	zoned := clustermesh.Node{Name: "node.example.com", Cluster: "east", IPs: addrs("fe80::1%eth0")}
	valid := map[string]clustermesh.Node{"full": eastNode(), "minimal": minimal, "ipv6 zone, dotted name": zoned}
	for name, n := range valid {
		t.Run("valid/"+name, func(t *testing.T) {
			got, err := clustermesh.DecodeNode(&owner, n.Key(), mustJSON(t, n))
			if err != nil {
				t.Fatalf("DecodeNode(%q): %v", n.Key(), err)
			}
			if diff := cmp.Diff(n, got, cmpOpts); diff != "" {
				t.Errorf("round trip (-want +got):\n%s", diff)
			}
		})
	}
	t.Run("invalid/owner without pod CIDRs is granted no pod CIDR", func(t *testing.T) {
		none := clustermesh.ClusterConfig{Name: "east", ID: 2}
		n := eastNode()
		n.PodCIDRs = prefixes("172.16.0.0/12")
		if _, err := clustermesh.DecodeNode(&none, n.Key(), mustJSON(t, n)); !errors.Is(err, clustermesh.ErrInvalid) {
			t.Fatalf("DecodeNode = %v, want a rejection", err)
		}
	})

	n := eastNode()
	key := n.Key()
	mut := func(f func(*clustermesh.Node)) []byte {
		n := eastNode()
		f(&n)
		return mustJSON(t, n)
	}
	long := strings.Repeat("n", 254)
	rejects := []rejectCase{
		{"value claims another cluster", key, mut(func(n *clustermesh.Node) { n.Cluster = "west" }),
			`entry claims cluster "west" but is under "east"'s prefix`},
		{"written under another cluster's prefix", "braid/v1/nodes/west/node-1",
			mut(func(n *clustermesh.Node) { n.Cluster = "west" }), `key is under cluster "west", expected "east"`},
		{"prefix of a longer cluster name", "braid/v1/nodes/eastern/node-1",
			mut(func(n *clustermesh.Node) { n.Cluster = "eastern" }), `key is under cluster "eastern", expected "east"`},
		{"identity key", "braid/v1/identities/east/node-1", mustJSON(t, n), "not a nodes key"},
		{"sync marker key", "braid/v1/synced/east/nodes", mustJSON(t, n), "not a nodes key"},
		{"cluster key", "braid/v1/clusters/east", mustJSON(t, n), "not a nodes key"},
		{"key not under root", "nodes/east/node-1", mustJSON(t, n), "not under braid/v1/"},
		{"key without name", "braid/v1/nodes/east/", mustJSON(t, n), "want braid/v1/<kind>/<cluster>/<name>"},
		{"name mismatch", "braid/v1/nodes/east/node-2", mustJSON(t, n), `node names itself "node-1", key names "node-2"`},
		{"name with slash", "braid/v1/nodes/east/a/b", mut(func(n *clustermesh.Node) { n.Name = "a/b" }),
			`node name "a/b": must not contain '/'`},
		{"name with space", "braid/v1/nodes/east/a b", mut(func(n *clustermesh.Node) { n.Name = "a b" }),
			"must not contain '/', spaces or control characters"},
		{"name too long", "braid/v1/nodes/east/" + long, mut(func(n *clustermesh.Node) { n.Name = long }),
			"must be 1 to 253 characters"},
		{"no IPs", key, mut(func(n *clustermesh.Node) { n.IPs = nil }), "node has no IPs"},
		{"empty IP", key, mut(func(n *clustermesh.Node) { n.IPs = []netip.Addr{{}} }), "invalid node IP"},
		{"malformed IP", key, []byte(`{"name":"node-1","cluster":"east","ips":["300.1.1.1"]}`), "decode JSON"},
		{"pod CIDR host bits", key, mut(func(n *clustermesh.Node) { n.PodCIDRs = prefixes("10.2.1.1/24") }),
			"pod CIDR: prefix 10.2.1.1/24 has host bits set"},
		{"pod CIDR outside cluster's", key, mut(func(n *clustermesh.Node) { n.PodCIDRs = prefixes("10.3.0.0/24") }),
			`pod CIDR 10.3.0.0/24 is outside cluster "east"'s pod CIDRs [10.2.0.0/16 fd00:2::/48]`},
		{"pod CIDR wider than cluster's", key, mut(func(n *clustermesh.Node) { n.PodCIDRs = prefixes("10.0.0.0/8") }),
			`pod CIDR 10.0.0.0/8 is outside cluster "east"'s pod CIDRs`},
		{"pod CIDR other family", key, mut(func(n *clustermesh.Node) { n.PodCIDRs = prefixes("fd00:3::/64") }),
			`pod CIDR fd00:3::/64 is outside cluster "east"'s pod CIDRs`},
		{"wireguard key not base64", key, mut(func(n *clustermesh.Node) { n.WireGuardKey = "not a key!" }),
			"wireguardKey is not a base64 32-byte key"},
		{"wireguard key 16 bytes", key, mut(func(n *clustermesh.Node) { n.WireGuardKey = wgKey[:24] }),
			"wireguardKey is not a base64 32-byte key"},
		{"wireguard key 33 bytes", key, mut(func(n *clustermesh.Node) {
			n.WireGuardKey = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWYx"
		}), "wireguardKey is not a base64 32-byte key"},
		{"wireguard key URL alphabet", key, mut(func(n *clustermesh.Node) {
			n.WireGuardKey = "-_" + wgKey[2:]
		}), "wireguardKey is not a base64 32-byte key"},
		{"next wireguard key malformed", key, mut(func(n *clustermesh.Node) { n.NextWireGuardKey = wgKey[:24] }),
			"nextWireguardKey is not a base64 32-byte key"},
		{"next wireguard key equals current", key, mut(func(n *clustermesh.Node) { n.WireGuardKey, n.NextWireGuardKey = wgKey, wgKey }),
			"nextWireguardKey equals wireguardKey"},
		{"prepared wireguard key malformed", key, mut(func(n *clustermesh.Node) { n.PreparedWireGuardKeys = []string{wgKey, "x"} }),
			"preparedWireguardKeys holds a value that is not a base64 32-byte key"},
		{"unknown field", key, withField(t, n, "hostname", `"x"`), `unknown field "hostname"`},
		{"trailing data", key, append(mustJSON(t, n), `[]`...), "trailing data after the object"},
		{"two objects", key, append(mustJSON(t, n), mustJSON(t, n)...), "trailing data after the object"},
		{"oversized", key, oversized(t, n), "more than 1048576"},
		{"wrong type", key, []byte(`{"name":1}`), "decode JSON"},
		{"empty value", key, []byte{}, "decode JSON"},
		// Rejected today for its empty cluster; see TestDecodeSyncMarkerRejectsNull.
		{"null", key, []byte(`null`), ""},
	}
	for _, tc := range rejects {
		t.Run("reject/"+tc.name, func(t *testing.T) {
			got, err := clustermesh.DecodeNode(&owner, tc.key, tc.value)
			wantRejected(t, err, tc.key, tc.reason)
			checkKind(t, err, clustermesh.KindNodes)
			if diff := cmp.Diff(clustermesh.Node{}, got, cmpOpts); diff != "" {
				t.Errorf("rejected decode returned a non-zero value:\n%s", diff)
			}
		})
	}
}

func TestDecodeIdentity(t *testing.T) {
	owner := eastConfig()
	first, last := owner.IdentityRange()
	valid := map[string]clustermesh.Identity{
		"typical": eastIdentityRecord(),
		"first":   {ID: first, Cluster: "east", Labels: map[string]string{"reserved:host": ""}},
		"last":    {ID: last, Cluster: "east", Labels: map[string]string{"a": "b"}},
	}
	for name, id := range valid {
		t.Run("valid/"+name, func(t *testing.T) {
			got, err := clustermesh.DecodeIdentity(&owner, id.Key(), mustJSON(t, id))
			if err != nil {
				t.Fatalf("DecodeIdentity(%q): %v", id.Key(), err)
			}
			if diff := cmp.Diff(id, got, cmpOpts); diff != "" {
				t.Errorf("round trip (-want +got):\n%s", diff)
			}
		})
	}

	rec := eastIdentityRecord()
	key := rec.Key()
	// withID returns key and value of the typical identity renumbered to id.
	withID := func(id clustermesh.NumericIdentity) (string, []byte) {
		r := eastIdentityRecord()
		r.ID = id
		return r.Key(), mustJSON(t, r)
	}
	mut := func(f func(*clustermesh.Identity)) []byte {
		r := eastIdentityRecord()
		f(&r)
		return mustJSON(t, r)
	}
	foreignKey, foreignVal := withID(3<<16 + 5)
	baseKey, baseVal := withID(2 << 16)
	nextKey, nextVal := withID(3 << 16)
	zeroKey, zeroVal := withID(0)
	localKey, localVal := withID(5)
	rejects := []rejectCase{
		{"cluster ID 2 publishes cluster 3's identity", foreignKey, foreignVal,
			`identity 196613 is outside cluster "east"'s range 131073..196607 (it belongs to cluster ID 3)`},
		{"base of own range", baseKey, baseVal, `identity 131072 is outside cluster "east"'s range 131073..196607`},
		{"one past own range", nextKey, nextVal, `identity 196608 is outside cluster "east"'s range`},
		{"zero", zeroKey, zeroVal, "identity 0 is outside"},
		{"cluster-local identity", localKey, localVal, "(it belongs to cluster ID 0)"},
		{"value claims another cluster", key, mut(func(r *clustermesh.Identity) { r.Cluster = "west" }),
			`entry claims cluster "west" but is under "east"'s prefix`},
		{"written under another cluster's prefix", "braid/v1/identities/west/131077",
			mut(func(r *clustermesh.Identity) { r.Cluster = "west" }), `key is under cluster "west", expected "east"`},
		{"node key", "braid/v1/nodes/east/131077", mustJSON(t, rec), "not a identities key"},
		{"number mismatch", "braid/v1/identities/east/131078", mustJSON(t, rec), `identity 131077 stored under key name "131078"`},
		{"leading zero in key", "braid/v1/identities/east/0131077", mustJSON(t, rec), `stored under key name "0131077"`},
		{"hex key", "braid/v1/identities/east/0x20005", mustJSON(t, rec), `stored under key name "0x20005"`},
		{"no labels", key, mut(func(r *clustermesh.Identity) { r.Labels = nil }), "identity 131077 has no labels"},
		{"empty labels", key, mut(func(r *clustermesh.Identity) { r.Labels = map[string]string{} }), "has no labels"},
		{"empty label key", key, mut(func(r *clustermesh.Identity) { r.Labels[""] = "x" }), "identity 131077 has an empty label key"},
		{"ID beyond uint32", "braid/v1/identities/east/4294967296",
			[]byte(`{"id":4294967296,"cluster":"east","labels":{"a":"b"}}`), "decode JSON"},
		{"negative ID", key, []byte(`{"id":-1,"cluster":"east","labels":{"a":"b"}}`), "decode JSON"},
		{"float ID", key, []byte(`{"id":131077.0,"cluster":"east","labels":{"a":"b"}}`), "decode JSON"},
		{"unknown field", key, withField(t, rec, "ID2", "1"), `unknown field "ID2"`},
		{"trailing data", key, append(mustJSON(t, rec), `"x"`...), "trailing data after the object"},
		{"oversized", key, oversized(t, rec), "more than 1048576"},
	}
	for _, tc := range rejects {
		t.Run("reject/"+tc.name, func(t *testing.T) {
			got, err := clustermesh.DecodeIdentity(&owner, tc.key, tc.value)
			wantRejected(t, err, tc.key, tc.reason)
			checkKind(t, err, clustermesh.KindIdentities)
			if diff := cmp.Diff(clustermesh.Identity{}, got, cmpOpts); diff != "" {
				t.Errorf("rejected decode returned a non-zero value:\n%s", diff)
			}
		})
	}
}

func TestDecodeIPEntry(t *testing.T) {
	owner := eastConfig()
	v6 := clustermesh.IPEntry{
		Prefix:   netip.MustParsePrefix("fd00:2:0:1::/64"),
		Cluster:  "east",
		Identity: eastIdentity,
		HostIP:   netip.MustParseAddr("fd00:ffff::1"),
	}
	whole := eastIPEntry()
	whole.Prefix = netip.MustParsePrefix("10.2.0.0/16")
	valid := map[string]clustermesh.IPEntry{"ipv4 /32": eastIPEntry(), "ipv6 /64": v6, "whole pod CIDR": whole}
	for name, e := range valid {
		t.Run("valid/"+name, func(t *testing.T) {
			got, err := clustermesh.DecodeIPEntry(&owner, e.Key(), mustJSON(t, e))
			if err != nil {
				t.Fatalf("DecodeIPEntry(%q): %v", e.Key(), err)
			}
			if diff := cmp.Diff(e, got, cmpOpts); diff != "" {
				t.Errorf("round trip (-want +got):\n%s", diff)
			}
		})
	}

	e := eastIPEntry()
	key := e.Key()
	// entry returns key and value of the typical entry changed by f.
	entry := func(f func(*clustermesh.IPEntry)) (string, []byte) {
		e := eastIPEntry()
		f(&e)
		return e.Key(), mustJSON(t, e)
	}
	mut := func(f func(*clustermesh.IPEntry)) []byte { _, v := entry(f); return v }
	outsideKey, outsideVal := entry(func(e *clustermesh.IPEntry) { e.Prefix = netip.MustParsePrefix("10.3.0.5/32") })
	widerKey, widerVal := entry(func(e *clustermesh.IPEntry) { e.Prefix = netip.MustParsePrefix("10.0.0.0/8") })
	hostBitsKey, hostBitsVal := entry(func(e *clustermesh.IPEntry) { e.Prefix = netip.MustParsePrefix("10.2.1.7/24") })
	rejects := []rejectCase{
		{"prefix outside pod CIDRs", outsideKey, outsideVal,
			`prefix 10.3.0.5/32 is outside cluster "east"'s pod CIDRs [10.2.0.0/16 fd00:2::/48]`},
		{"prefix wider than pod CIDR", widerKey, widerVal, `prefix 10.0.0.0/8 is outside cluster "east"'s pod CIDRs`},
		{"prefix with host bits", hostBitsKey, hostBitsVal, "prefix 10.2.1.7/24 has host bits set (use 10.2.1.0/24)"},
		{"identity of another cluster", key, mut(func(e *clustermesh.IPEntry) { e.Identity = 3<<16 + 5 }),
			`identity 196613 is outside cluster "east"'s range (it belongs to cluster ID 3)`},
		{"identity zero", key, mut(func(e *clustermesh.IPEntry) { e.Identity = 0 }), "identity 0 is outside"},
		{"missing hostIP", key, mut(func(e *clustermesh.IPEntry) { e.HostIP = netip.Addr{} }), "hostIP missing"},
		{"unnamed port", key, mut(func(e *clustermesh.IPEntry) {
			e.NamedPorts = []clustermesh.NamedPort{{Port: 80, Protocol: clustermesh.TCP}}
		}), "needs a name"},
		{"named port protocol", key, mut(func(e *clustermesh.IPEntry) {
			e.NamedPorts = []clustermesh.NamedPort{{Name: "http", Port: 80, Protocol: "ICMP"}}
		}), "must be TCP, UDP or SCTP"},
		{"value claims another cluster", key, mut(func(e *clustermesh.IPEntry) { e.Cluster = "west" }),
			`entry claims cluster "west" but is under "east"'s prefix`},
		{"written under another cluster's prefix", "braid/v1/ips/west/10.2.1.7/32",
			mut(func(e *clustermesh.IPEntry) { e.Cluster = "west" }), `key is under cluster "west", expected "east"`},
		{"prefix differs from key", "braid/v1/ips/east/10.2.1.8/32", mustJSON(t, e),
			`entry prefix 10.2.1.7/32 does not match key name "10.2.1.8/32"`},
		{"key name is a bare address", "braid/v1/ips/east/10.2.1.7", mustJSON(t, e),
			`does not match key name "10.2.1.7"`},
		{"key name is not a prefix", "braid/v1/ips/east/pod", mustJSON(t, e), `does not match key name "pod"`},
		{"empty prefix", key, mut(func(e *clustermesh.IPEntry) { e.Prefix = netip.Prefix{} }),
			`entry prefix invalid Prefix does not match key name "10.2.1.7/32"`},
		{"services key", "braid/v1/services/east/10.2.1.7/32", mustJSON(t, e), "not a ips key"},
		{"unknown field", key, withField(t, e, "node", `"node-1"`), `unknown field "node"`},
		{"trailing data", key, append(mustJSON(t, e), `1`...), "trailing data after the object"},
		{"oversized", key, oversized(t, e), "more than 1048576"},
		{"malformed JSON", key, []byte(`{"prefix":`), "decode JSON"},
	}
	for _, tc := range rejects {
		t.Run("reject/"+tc.name, func(t *testing.T) {
			got, err := clustermesh.DecodeIPEntry(&owner, tc.key, tc.value)
			wantRejected(t, err, tc.key, tc.reason)
			checkKind(t, err, clustermesh.KindIPs)
			if diff := cmp.Diff(clustermesh.IPEntry{}, got, cmpOpts); diff != "" {
				t.Errorf("rejected decode returned a non-zero value:\n%s", diff)
			}
		})
	}
}

func TestDecodeService(t *testing.T) {
	owner := eastConfig()
	consumer := clustermesh.Service{
		Cluster: "east", Namespace: "default", Name: "web", Global: true,
		Affinity: clustermesh.AffinityNone,
		Ports:    []clustermesh.ServicePort{{Port: 443, Protocol: clustermesh.TCP}},
	}
	unnamed := clustermesh.Service{
		Cluster: "east", Namespace: "kube-system", Name: "kube-dns", Global: true, Shared: true,
		Affinity: clustermesh.AffinityRemote, Headless: true,
		Ports: []clustermesh.ServicePort{{Port: 53, Protocol: clustermesh.UDP}, {Name: "sctp", Port: 9, Protocol: clustermesh.SCTP}},
		Backends: []clustermesh.Backend{
			{IP: netip.MustParseAddr("10.2.1.9"), Ports: []clustermesh.BackendPort{{Name: "", Port: 53}, {Name: "sctp", Port: 9}}, Ready: true, Serving: true, Hostname: "dns-0"},
			{IP: netip.MustParseAddr("10.2.1.10")},
		},
	}
	exported := eastService()
	exported.Export = &clustermesh.ExportSpec{SessionAffinity: "ClientIP", SessionAffinityTimeout: 10, InternalTrafficPolicy: "Cluster",
		TrafficDistribution: "PreferClose", IPFamilies: []string{"IPv4", "IPv6"}, Labels: map[string]string{"team": "a"}, Annotations: map[string]string{"note": "x y"}}
	importing := consumer
	importing.Import = &clustermesh.ImportSpec{IPs: []netip.Addr{eastImportIP}, Ports: []clustermesh.ServicePort{{Name: "http", Port: 80, Protocol: clustermesh.TCP}},
		Clusters: map[string][]clustermesh.ClusterName{"http": {"east", "west"}}}
	valid := map[string]clustermesh.Service{
		"shared with backends":   eastService(),
		"unshared, no backends":  consumer,
		"unnamed port, headless": unnamed,
		"exported (MCS)":         exported,
		"importing (MCS)":        importing,
	}
	for name, s := range valid {
		t.Run("valid/"+name, func(t *testing.T) {
			got, err := clustermesh.DecodeService(&owner, s.Key(), mustJSON(t, s))
			if err != nil {
				t.Fatalf("DecodeService(%q): %v", s.Key(), err)
			}
			if diff := cmp.Diff(s, got, cmpOpts); diff != "" {
				t.Errorf("round trip (-want +got):\n%s", diff)
			}
		})
	}

	s := eastService()
	key := s.Key()
	mut := func(f func(*clustermesh.Service)) []byte {
		s := eastService()
		f(&s)
		return mustJSON(t, s)
	}
	long := strings.Repeat("x", 64)
	rejects := []rejectCase{
		{"unshared with backends", key, mut(func(s *clustermesh.Service) { s.Shared = false }),
			"service is not shared but exports 2 backends"},
		{"backend names unknown port", key, mut(func(s *clustermesh.Service) {
			s.Backends[0].Ports = append(s.Backends[0].Ports, clustermesh.BackendPort{Name: "grpc", Port: 9090})
		}),
			`backend 10.2.1.7 names unknown port "grpc"`},
		{"backend names unnamed port that does not exist", key,
			mut(func(s *clustermesh.Service) { s.Backends[1].Ports = []clustermesh.BackendPort{{Name: "", Port: 80}} }),
			`backend fd00:2:0:1::7 names unknown port ""`},
		{"backend port 0", key, mut(func(s *clustermesh.Service) { s.Backends[0].Ports[0].Port = 0 }),
			`backend 10.2.1.7 port "http" is 0`},
		{"cluster IP outside service CIDRs", key, mut(func(s *clustermesh.Service) {
			s.ClusterIPs = []netip.Addr{netip.MustParseAddr("10.103.0.1")}
		}), `cluster IP 10.103.0.1 is outside cluster "east"'s service CIDRs`},
		{"backend port given twice", key, mut(func(s *clustermesh.Service) {
			s.Backends[0].Ports = append(s.Backends[0].Ports, clustermesh.BackendPort{Name: "http", Port: 8081})
		}), `backend 10.2.1.7 gives port "http" twice`},
		{"backend without IP", key, mut(func(s *clustermesh.Service) { s.Backends[1].IP = netip.Addr{} }),
			"backend with invalid IP"},
		{"backend hostname not a DNS label", key, mut(func(s *clustermesh.Service) { s.Backends[0].Hostname = "web-0.evil" }),
			`backend 10.2.1.7: hostname "web-0.evil" is not a DNS label`},
		{"duplicate port names", key, mut(func(s *clustermesh.Service) {
			s.Ports = append(s.Ports, clustermesh.ServicePort{Name: "http", Port: 8080, Protocol: clustermesh.TCP})
		}), `port name "http" appears twice`},
		{"two unnamed ports", key, mut(func(s *clustermesh.Service) {
			s.Ports = []clustermesh.ServicePort{{Port: 1, Protocol: clustermesh.TCP}, {Port: 2, Protocol: clustermesh.UDP}}
			s.Backends = nil
		}), `port name "" appears twice`},
		{"lowercase protocol", key, mut(func(s *clustermesh.Service) { s.Ports[0].Protocol = "tcp" }),
			`port "http": protocol "tcp" must be TCP, UDP or SCTP`},
		{"empty protocol", key, mut(func(s *clustermesh.Service) { s.Ports[1].Protocol = "" }),
			`port "dns": protocol "" must be TCP, UDP or SCTP`},
		{"port 0", key, mut(func(s *clustermesh.Service) { s.Ports[0].Port = 0 }), `port "http" is 0`},
		{"port beyond uint16", key, []byte(`{"cluster":"east","namespace":"default","name":"web","affinity":"none","ports":[{"port":65536,"protocol":"TCP"}]}`),
			"decode JSON"},
		{"unknown affinity", key, mut(func(s *clustermesh.Service) { s.Affinity = "nearest" }),
			`affinity "nearest": must be one of local, remote, none`},
		{"empty affinity", key, mut(func(s *clustermesh.Service) { s.Affinity = "" }),
			`affinity "": must be one of local, remote, none`},
		{"capitalised affinity", key, mut(func(s *clustermesh.Service) { s.Affinity = "Local" }), `affinity "Local"`},
		{"name mismatch", "braid/v1/services/east/default/api", mustJSON(t, s),
			`service default/web stored under key name "default/api"`},
		{"namespace mismatch", "braid/v1/services/east/prod/web", mustJSON(t, s),
			`service default/web stored under key name "prod/web"`},
		{"key without namespace", "braid/v1/services/east/web", mustJSON(t, s), `stored under key name "web"`},
		{"empty namespace", "braid/v1/services/east//web", mut(func(s *clustermesh.Service) { s.Namespace = "" }),
			`namespace "": must be 1 to 63 characters`},
		{"namespace too long", "braid/v1/services/east/" + long + "/web",
			mut(func(s *clustermesh.Service) { s.Namespace = long }), "must be 1 to 63 characters"},
		{"name too long", "braid/v1/services/east/default/" + long,
			mut(func(s *clustermesh.Service) { s.Name = long }), `service name "` + long + `": must be 1 to 63 characters`},
		{"name with slash", "braid/v1/services/east/default/a/b",
			mut(func(s *clustermesh.Service) { s.Name = "a/b" }), `service name "a/b": must not contain '/'`},
		{"namespace with slash", "braid/v1/services/east/a/b/web",
			mut(func(s *clustermesh.Service) { s.Namespace = "a/b" }), `namespace "a/b": must not contain '/'`},
		{"value claims another cluster", key, mut(func(s *clustermesh.Service) { s.Cluster = "west" }),
			`entry claims cluster "west" but is under "east"'s prefix`},
		{"written under another cluster's prefix", "braid/v1/services/west/default/web",
			mut(func(s *clustermesh.Service) { s.Cluster = "west" }), `key is under cluster "west", expected "east"`},
		{"nodes key", "braid/v1/nodes/east/default/web", mustJSON(t, s), "not a services key"},
		{"unknown field", key, withField(t, s, "sessionAffinity", `"ClientIP"`), `unknown field "sessionAffinity"`},
		{"export: unknown session affinity", key, mut(func(s *clustermesh.Service) { s.Export = &clustermesh.ExportSpec{SessionAffinity: "Sticky"} }),
			`export: session affinity "Sticky": must be None or ClientIP`},
		{"export: negative affinity timeout", key, mut(func(s *clustermesh.Service) { s.Export = &clustermesh.ExportSpec{SessionAffinityTimeout: -1} }),
			"export: session affinity timeout -1"},
		{"export: unknown traffic policy", key, mut(func(s *clustermesh.Service) { s.Export = &clustermesh.ExportSpec{InternalTrafficPolicy: "Node"} }),
			`export: internal traffic policy "Node"`},
		{"export: family twice", key, mut(func(s *clustermesh.Service) { s.Export = &clustermesh.ExportSpec{IPFamilies: []string{"IPv4", "IPv4"}} }),
			"export: IP families [IPv4 IPv4]"},
		{"export: label with a control character", key, mut(func(s *clustermesh.Service) {
			s.Export = &clustermesh.ExportSpec{Labels: map[string]string{"a\x00": "b"}}
		}), "export: label key"},
		{"import: no IP", key, mut(func(s *clustermesh.Service) {
			s.Import = &clustermesh.ImportSpec{Ports: []clustermesh.ServicePort{}}
		}), "import: 0 ClusterSetIPs"},
		{"import: IP outside service CIDRs", key, mut(func(s *clustermesh.Service) {
			s.Import = &clustermesh.ImportSpec{IPs: []netip.Addr{netip.MustParseAddr("10.103.0.1")}}
		}), `import: ClusterSetIP 10.103.0.1 is outside cluster "east"'s service CIDRs`},
		{"import: two IPv4", key, mut(func(s *clustermesh.Service) {
			s.Import = &clustermesh.ImportSpec{IPs: []netip.Addr{eastImportIP, eastImportIP.Next()}}
		}), "one per family"},
		{"import: clusters for an unknown port", key, mut(func(s *clustermesh.Service) {
			s.Import = &clustermesh.ImportSpec{IPs: []netip.Addr{eastImportIP}, Clusters: map[string][]clustermesh.ClusterName{"grpc": {"west"}}}
		}), `import: clusters given for unknown port "grpc"`},
		{"import: invalid cluster name", key, mut(func(s *clustermesh.Service) {
			s.Import = &clustermesh.ImportSpec{IPs: []netip.Addr{eastImportIP}, Ports: []clustermesh.ServicePort{{Name: "http", Port: 80, Protocol: clustermesh.TCP}},
				Clusters: map[string][]clustermesh.ClusterName{"http": {"Bad Name"}}}
		}), `import: port "http"`},
		{"unknown backend field", key, []byte(`{"cluster":"east","namespace":"default","name":"web","shared":true,"affinity":"none","ports":[],"backends":[{"ip":"10.2.1.7","weight":3}]}`),
			`unknown field "weight"`},
		{"trailing data", key, append(mustJSON(t, s), "\n}"...), "trailing data after the object"},
		{"oversized", key, oversized(t, s), "more than 1048576"},
	}
	for _, tc := range rejects {
		t.Run("reject/"+tc.name, func(t *testing.T) {
			got, err := clustermesh.DecodeService(&owner, tc.key, tc.value)
			wantRejected(t, err, tc.key, tc.reason)
			checkKind(t, err, clustermesh.KindServices)
			if diff := cmp.Diff(clustermesh.Service{}, got, cmpOpts); diff != "" {
				t.Errorf("rejected decode returned a non-zero value:\n%s", diff)
			}
		})
	}
}

func TestDecodeSyncMarker(t *testing.T) {
	owner := eastConfig()
	for i, kind := range clustermesh.Kinds {
		t.Run("valid/"+string(kind), func(t *testing.T) {
			want := clustermesh.SyncMarker{Entries: i * 1000}
			key := clustermesh.SyncedKey(owner.Name, kind)
			gotKind, got, err := clustermesh.DecodeSyncMarker(&owner, key, mustJSON(t, want))
			if err != nil {
				t.Fatalf("DecodeSyncMarker(%q): %v", key, err)
			}
			if gotKind != kind || got != want {
				t.Errorf("DecodeSyncMarker(%q) = %q, %+v; want %q, %+v", key, gotKind, got, kind, want)
			}
		})
	}

	key := clustermesh.SyncedKey("east", clustermesh.KindServices)
	val := []byte(`{"entries":3}`)
	rejects := []rejectCase{
		{"another cluster's marker", "braid/v1/synced/west/services", val, `sync marker is under cluster "west", expected "east"`},
		{"longer cluster name", "braid/v1/synced/eastern/services", val, `sync marker is under cluster "eastern", expected "east"`},
		{"unknown kind", "braid/v1/synced/east/widgets", val, "not a sync marker key"},
		{"clusters is not a kind", "braid/v1/synced/east/clusters", val, "not a sync marker key"},
		{"extra segment", "braid/v1/synced/east/services/x", val, "not a sync marker key"},
		{"no kind", "braid/v1/synced/east/", val, "not a sync marker key"},
		{"node key", "braid/v1/nodes/east/services", val, "not a sync marker key"},
		{"cluster key", "braid/v1/clusters/east", val, "not a sync marker key"},
		{"negative count", key, []byte(`{"entries":-1}`), "negative entry count"},
		{"fractional count", key, []byte(`{"entries":1.5}`), "decode JSON"},
		{"string count", key, []byte(`{"entries":"3"}`), "decode JSON"},
		{"unknown field", key, []byte(`{"entries":3,"revision":7}`), `unknown field "revision"`},
		{"trailing data", key, []byte(`{"entries":3}{"entries":4}`), "trailing data after the object"},
		{"oversized", key, oversized(t, clustermesh.SyncMarker{Entries: 1}), "more than 1048576"},
		{"empty value", key, nil, "decode JSON"},
	}
	for _, tc := range rejects {
		t.Run("reject/"+tc.name, func(t *testing.T) {
			kind, _, err := clustermesh.DecodeSyncMarker(&owner, tc.key, tc.value)
			wantRejected(t, err, tc.key, tc.reason)
			checkKind(t, err, "")
			if kind != "" {
				t.Errorf("rejected decode returned kind %q", kind)
			}
		})
	}
}

// TestValidationError checks the error's shape independently of any decoder.
func TestValidationError(t *testing.T) {
	err := error(&clustermesh.ValidationError{Key: "braid/v1/nodes/east/n", Kind: clustermesh.KindNodes, Reason: "node has no IPs"})
	// The key may be quoted; it and the reason must both appear.
	if msg := err.Error(); !strings.HasPrefix(msg, "reject ") || !strings.Contains(msg, "braid/v1/nodes/east/n") ||
		!strings.HasSuffix(msg, ": node has no IPs") {
		t.Errorf("Error() = %q, want reject <key>: node has no IPs", msg)
	}
	if !errors.Is(err, clustermesh.ErrInvalid) {
		t.Error("errors.Is(err, ErrInvalid) = false")
	}
	if errors.Is(err, errors.New(clustermesh.ErrInvalid.Error())) {
		t.Error("ValidationError matches an unrelated error with the same text")
	}
	wrapped := errors.Join(errors.New("watch east"), err)
	if !errors.Is(wrapped, clustermesh.ErrInvalid) {
		t.Error("wrapped ValidationError does not match ErrInvalid")
	}
}
