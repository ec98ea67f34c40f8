package clustermesh_test

import (
	"strconv"
	"strings"
	"testing"

	"github.com/braidmesh/braid/clustermesh"
)

func TestParseKey(t *testing.T) {
	long := strings.Repeat("c", 32)
	valid := []struct {
		key  string
		want clustermesh.ParsedKey
	}{
		{"braid/v1/clusters/east", clustermesh.ParsedKey{Cluster: "east", Config: true}},
		{"braid/v1/clusters/" + long, clustermesh.ParsedKey{Cluster: clustermesh.ClusterName(long), Config: true}},
		{"braid/v1/nodes/east/node-1", clustermesh.ParsedKey{Kind: clustermesh.KindNodes, Cluster: "east", Name: "node-1"}},
		{"braid/v1/identities/east/131077", clustermesh.ParsedKey{Kind: clustermesh.KindIdentities, Cluster: "east", Name: "131077"}},
		{"braid/v1/ips/east/10.2.1.7/32", clustermesh.ParsedKey{Kind: clustermesh.KindIPs, Cluster: "east", Name: "10.2.1.7/32"}},
		{"braid/v1/ips/east/fd00:2::/64", clustermesh.ParsedKey{Kind: clustermesh.KindIPs, Cluster: "east", Name: "fd00:2::/64"}},
		{"braid/v1/services/east/default/web", clustermesh.ParsedKey{Kind: clustermesh.KindServices, Cluster: "east", Name: "default/web"}},
		{"braid/v1/synced/east/nodes", clustermesh.ParsedKey{Cluster: "east", Name: "nodes", Synced: true}},
		{"braid/v1/synced/east/services", clustermesh.ParsedKey{Cluster: "east", Name: "services", Synced: true}},
		// ParseKey does not validate names beyond being non-empty.
		{"braid/v1/nodes/east/a/b/", clustermesh.ParsedKey{Kind: clustermesh.KindNodes, Cluster: "east", Name: "a/b/"}},
		{"braid/v1/nodes/1/x", clustermesh.ParsedKey{Kind: clustermesh.KindNodes, Cluster: "1", Name: "x"}},
	}
	for _, tc := range valid {
		t.Run(tc.key, func(t *testing.T) {
			got, err := clustermesh.ParseKey(tc.key)
			if err != nil {
				t.Fatalf("ParseKey(%q): %v", tc.key, err)
			}
			if got != tc.want {
				t.Errorf("ParseKey(%q) = %+v, want %+v", tc.key, got, tc.want)
			}
		})
	}

	invalid := []struct{ key, reason string }{
		{"", "not under braid/v1/"},
		{"braid/v1", "not under braid/v1/"},
		{"braid/v2/nodes/east/n", "not under braid/v1/"},
		{"/braid/v1/nodes/east/n", "not under braid/v1/"},
		{"Braid/v1/nodes/east/n", "not under braid/v1/"},
		{"braid/v1/", "want braid/v1/<kind>/<cluster>/<name>"},
		{"braid/v1/nodes", "want braid/v1/<kind>/<cluster>/<name>"},
		{"braid/v1/nodes/east", "want braid/v1/<kind>/<cluster>/<name>"},
		{"braid/v1/nodes/east/", "want braid/v1/<kind>/<cluster>/<name>"},
		{"braid/v1/synced/east", "want braid/v1/<kind>/<cluster>/<name>"},
		{"braid/v1/nodes//n", `cluster name ""`},
		{"braid/v1/nodes/East/n", `cluster name "East"`},
		{"braid/v1/nodes/-east/n", `cluster name "-east"`},
		{"braid/v1/nodes/" + long + "x/n", "of 1 to 32 characters"},
		{"braid/v1/widgets/east/n", `unknown kind "widgets"`},
		{"braid/v1/Nodes/east/n", `unknown kind "Nodes"`},
		{"braid/v1/clusters/east/n", `cluster name "east/n"`},
		{"braid/v1/clusters/", `cluster name ""`},
		{"braid/v1/clusters", `cluster name ""`},
		{"braid/v1/clusters/east\n", `cluster name "east\n"`},
		{"braid/v1/synced/east/widgets", `unknown kind "widgets"`},
		{"braid/v1/synced/east/nodes/", `unknown kind "nodes/"`},
		{"braid/v1/synced/east/clusters", `unknown kind "clusters"`},
		{"braid/v1/synced/east/synced", `unknown kind "synced"`},
	}
	for _, tc := range invalid {
		t.Run(tc.key, func(t *testing.T) {
			got, err := clustermesh.ParseKey(tc.key)
			if err == nil {
				t.Fatalf("ParseKey(%q) = %+v, want error", tc.key, got)
			}
			if got != (clustermesh.ParsedKey{}) {
				t.Errorf("ParseKey(%q) returned %+v with its error", tc.key, got)
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.reason) {
				t.Errorf("ParseKey(%q) error %q does not contain %q", tc.key, msg, tc.reason)
			}
			if !strings.Contains(msg, strconv.Quote(tc.key)) {
				t.Errorf("ParseKey(%q) error %q does not name the key", tc.key, msg)
			}
		})
	}
}

// TestKeyBuilders checks that every key the package builds parses back to
// the parts it was built from.
func TestKeyBuilders(t *testing.T) {
	n, id, e, s, c := eastNode(), eastIdentityRecord(), eastIPEntry(), eastService(), eastConfig()
	tests := []struct {
		key  string
		want clustermesh.ParsedKey
	}{
		{c.Key(), clustermesh.ParsedKey{Cluster: "east", Config: true}},
		{clustermesh.ClusterKey("west"), clustermesh.ParsedKey{Cluster: "west", Config: true}},
		{n.Key(), clustermesh.ParsedKey{Kind: clustermesh.KindNodes, Cluster: "east", Name: "node-1"}},
		{id.Key(), clustermesh.ParsedKey{Kind: clustermesh.KindIdentities, Cluster: "east", Name: "131077"}},
		{e.Key(), clustermesh.ParsedKey{Kind: clustermesh.KindIPs, Cluster: "east", Name: "10.2.1.7/32"}},
		{s.Key(), clustermesh.ParsedKey{Kind: clustermesh.KindServices, Cluster: "east", Name: "default/web"}},
	}
	for _, k := range clustermesh.Kinds {
		tests = append(tests, struct {
			key  string
			want clustermesh.ParsedKey
		}{clustermesh.SyncedKey("east", k), clustermesh.ParsedKey{Cluster: "east", Name: string(k), Synced: true}})
	}
	for _, tc := range tests {
		got, err := clustermesh.ParseKey(tc.key)
		if err != nil {
			t.Errorf("ParseKey(%q): %v", tc.key, err)
			continue
		}
		if got != tc.want {
			t.Errorf("ParseKey(%q) = %+v, want %+v", tc.key, got, tc.want)
		}
	}
	if got, want := n.Key(), "braid/v1/nodes/east/node-1"; got != want {
		t.Errorf("Node.Key() = %q, want %q", got, want)
	}
	if got, want := id.Key(), "braid/v1/identities/east/131077"; got != want {
		t.Errorf("Identity.Key() = %q, want %q", got, want)
	}
	if got, want := e.Key(), "braid/v1/ips/east/10.2.1.7/32"; got != want {
		t.Errorf("IPEntry.Key() = %q, want %q", got, want)
	}
	if got, want := s.Key(), "braid/v1/services/east/default/web"; got != want {
		t.Errorf("Service.Key() = %q, want %q", got, want)
	}
	if got, want := c.Key(), "braid/v1/clusters/east"; got != want {
		t.Errorf("ClusterConfig.Key() = %q, want %q", got, want)
	}
	if got, want := clustermesh.SyncedKey("east", clustermesh.KindIPs), "braid/v1/synced/east/ips"; got != want {
		t.Errorf("SyncedKey = %q, want %q", got, want)
	}
}

func TestOwnedPrefixes(t *testing.T) {
	a := clustermesh.OwnedPrefixes("a")
	if len(a) != len(clustermesh.Kinds)+1 {
		t.Fatalf("OwnedPrefixes(a) has %d prefixes, want one per kind plus sync markers: %q", len(a), a)
	}
	for _, p := range a {
		if !strings.HasSuffix(p, "/") {
			t.Errorf("prefix %q does not end in '/'", p)
		}
		if !strings.HasPrefix(p, clustermesh.Root) {
			t.Errorf("prefix %q is not under %s", p, clustermesh.Root)
		}
	}
	owned := func(prefixes []string, key string) bool {
		for _, p := range prefixes {
			if strings.HasPrefix(key, p) {
				return true
			}
		}
		return false
	}
	keysOf := func(c clustermesh.ClusterName) []string {
		keys := []string{clustermesh.SyncedKey(c, clustermesh.KindNodes)}
		for _, k := range clustermesh.Kinds {
			keys = append(keys, clustermesh.KindPrefix(k, c)+"x", clustermesh.SyncedKey(c, k))
		}
		return keys
	}
	for _, key := range keysOf("a") {
		if !owned(a, key) {
			t.Errorf("cluster a does not own its own key %q", key)
		}
	}
	// "a" is a string prefix of "ab" but must own none of its keys.
	for _, other := range []clustermesh.ClusterName{"ab", "a-b", "a0"} {
		for _, key := range keysOf(other) {
			if owned(a, key) {
				t.Errorf("cluster a owns %q, a key of cluster %q", key, other)
			}
		}
		for _, p := range clustermesh.OwnedPrefixes(other) {
			if owned(a, p) {
				t.Errorf("an OwnedPrefixes(a) prefix covers %q of %q", p, other)
			}
		}
	}
	// The cluster config key is not under any owned prefix (it is owned
	// separately), and neither is another cluster's.
	if owned(a, clustermesh.ClusterKey("a")) || owned(a, clustermesh.ClusterKey("ab")) {
		t.Error("OwnedPrefixes(a) covers a cluster config key")
	}
	// Every owned prefix parses back to the owner.
	for _, p := range a {
		pk, err := clustermesh.ParseKey(p + "nodes")
		if err != nil {
			t.Errorf("ParseKey(%q): %v", p+"nodes", err)
			continue
		}
		if pk.Cluster != "a" {
			t.Errorf("ParseKey(%q).Cluster = %q, want a", p+"nodes", pk.Cluster)
		}
	}
}
