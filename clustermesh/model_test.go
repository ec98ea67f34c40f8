package clustermesh_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/braidmesh/braid/clustermesh"
)

func TestClusterNameValidate(t *testing.T) {
	tests := []struct {
		name clustermesh.ClusterName
		ok   bool
	}{
		{"a", true},
		{"0", true},
		{"east", true},
		{"eu-west-1", true},
		{"a--b", true},
		{clustermesh.ClusterName(strings.Repeat("a", clustermesh.MaxClusterNameLen)), true},
		{clustermesh.ClusterName(strings.Repeat("a", clustermesh.MaxClusterNameLen+1)), false},
		{"", false},
		{"-a", false},
		{"a-", false},
		{"East", false},
		{"a_b", false},
		{"a.b", false},
		{"a/b", false},
		{"a b", false},
		{"a\n", false},
		{"\na", false},
		{"é", false},
	}
	for _, tc := range tests {
		err := tc.name.Validate()
		if (err == nil) != tc.ok {
			t.Errorf("ClusterName(%q).Validate() = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "must be a DNS label") {
			t.Errorf("ClusterName(%q).Validate() = %q, want the rule in the message", tc.name, err)
		}
	}
}

func TestClusterIDValidate(t *testing.T) {
	tests := []struct {
		id clustermesh.ClusterID
		ok bool
	}{
		{0, false},
		{clustermesh.MinClusterID, true},
		{2, true},
		{clustermesh.MaxClusterID, true},
		{clustermesh.MaxClusterID + 1, false},
		{65535, false},
	}
	if clustermesh.MinClusterID != 1 || clustermesh.MaxClusterID != 511 {
		t.Fatalf("ClusterID bounds are %d..%d, want 1..511", clustermesh.MinClusterID, clustermesh.MaxClusterID)
	}
	for _, tc := range tests {
		err := tc.id.Validate()
		if (err == nil) != tc.ok {
			t.Errorf("ClusterID(%d).Validate() = %v, want ok=%v", tc.id, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "must be in 1..511") {
			t.Errorf("ClusterID(%d).Validate() = %q, want the range in the message", tc.id, err)
		}
	}
}

func TestClusterConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		mut    func(*clustermesh.ClusterConfig)
		reason string // "" means valid
	}{
		{"valid", func(*clustermesh.ClusterConfig) {}, ""},
		{"no CIDRs", func(c *clustermesh.ClusterConfig) { c.PodCIDRs, c.ServiceCIDRs = nil, nil }, ""},
		{"bad name", func(c *clustermesh.ClusterConfig) { c.Name = "East" }, `cluster name "East"`},
		{"bad ID", func(c *clustermesh.ClusterConfig) { c.ID = 600 }, "cluster ID 600"},
		{"zero pod CIDR", func(c *clustermesh.ClusterConfig) { c.PodCIDRs = []netip.Prefix{{}} }, "pod CIDR: invalid prefix"},
		{"service CIDR host bits", func(c *clustermesh.ClusterConfig) { c.ServiceCIDRs = prefixes("10.102.0.1/16") },
			"service CIDR: prefix 10.102.0.1/16 has host bits set (use 10.102.0.0/16)"},
	}
	for _, tc := range tests {
		c := eastConfig()
		tc.mut(&c)
		err := c.Validate()
		switch {
		case tc.reason == "" && err != nil:
			t.Errorf("%s: Validate() = %v, want nil", tc.name, err)
		case tc.reason != "" && (err == nil || !strings.Contains(err.Error(), tc.reason)):
			t.Errorf("%s: Validate() = %v, want error containing %q", tc.name, err, tc.reason)
		}
	}
}

func TestIdentityRange(t *testing.T) {
	tests := []struct {
		id          clustermesh.ClusterID
		first, last clustermesh.NumericIdentity
	}{
		{1, 65537, 131071},
		{2, 131073, 196607},
		{clustermesh.MaxClusterID, 511<<16 + 1, 511<<16 + 0xFFFF},
	}
	for _, tc := range tests {
		c := clustermesh.ClusterConfig{Name: "c", ID: tc.id}
		first, last := c.IdentityRange()
		if first != tc.first || last != tc.last {
			t.Errorf("cluster %d: IdentityRange() = %d..%d, want %d..%d", tc.id, first, last, tc.first, tc.last)
		}
		for _, id := range []clustermesh.NumericIdentity{first, first + 1, last - 1, last} {
			if !c.OwnsIdentity(id) {
				t.Errorf("cluster %d does not own %d", tc.id, id)
			}
			if id.Cluster() != tc.id {
				t.Errorf("NumericIdentity(%d).Cluster() = %d, want %d", id, id.Cluster(), tc.id)
			}
		}
		for _, id := range []clustermesh.NumericIdentity{0, first - 1, last + 1, first - 2, 1, 0xFFFF, ^clustermesh.NumericIdentity(0)} {
			if c.OwnsIdentity(id) {
				t.Errorf("cluster %d owns %d, outside %d..%d", tc.id, id, first, last)
			}
		}
	}
	// Ranges of neighbouring clusters are disjoint.
	c2 := clustermesh.ClusterConfig{ID: 2}
	c3 := clustermesh.ClusterConfig{ID: 3}
	if id := clustermesh.NumericIdentity(3<<16 + 5); c2.OwnsIdentity(id) || !c3.OwnsIdentity(id) {
		t.Errorf("identity %d: cluster 2 owns=%v, cluster 3 owns=%v; want false, true", id, c2.OwnsIdentity(id), c3.OwnsIdentity(id))
	}
	if got := clustermesh.NumericIdentity(3<<16 + 5).Cluster(); got != 3 {
		t.Errorf("Cluster() = %d, want 3", got)
	}
}

func TestContainsPodIP(t *testing.T) {
	c := eastConfig()
	tests := []struct {
		prefix string
		want   bool
	}{
		{"10.2.0.0/16", true},
		{"10.2.1.0/24", true},
		{"10.2.255.255/32", true},
		{"fd00:2::/48", true},
		{"fd00:2:0:1::7/128", true},
		{"10.0.0.0/8", false},
		{"10.3.0.0/24", false},
		{"fd00::/16", false},
		{"fd00:3::/64", false},
		{"::ffff:10.2.0.1/128", false},
	}
	for _, tc := range tests {
		if got := c.ContainsPodIP(netip.MustParsePrefix(tc.prefix)); got != tc.want {
			t.Errorf("ContainsPodIP(%s) = %v, want %v", tc.prefix, got, tc.want)
		}
	}
	none := clustermesh.ClusterConfig{Name: "none", ID: 9}
	for _, p := range []string{"0.0.0.0/0", "10.2.0.1/32", "::/0"} {
		if none.ContainsPodIP(netip.MustParsePrefix(p)) {
			t.Errorf("a cluster without pod CIDRs contains %s; an empty list must grant nothing", p)
		}
	}
	if none.ContainsServiceIP(netip.MustParseAddr("10.102.0.1")) {
		t.Error("a cluster without service CIDRs contains 10.102.0.1; an empty list must grant nothing")
	}
}

func TestParseAffinity(t *testing.T) {
	valid := map[string]clustermesh.Affinity{
		"":       clustermesh.AffinityNone,
		"none":   clustermesh.AffinityNone,
		"local":  clustermesh.AffinityLocal,
		"remote": clustermesh.AffinityRemote,
	}
	for in, want := range valid {
		got, err := clustermesh.ParseAffinity(in)
		if err != nil || got != want {
			t.Errorf("ParseAffinity(%q) = %q, %v; want %q, nil", in, got, err, want)
		}
	}
	for _, in := range []string{"Local", "NONE", " local", "local ", "nearest", "any", "\x00"} {
		got, err := clustermesh.ParseAffinity(in)
		if err == nil {
			t.Errorf("ParseAffinity(%q) = %q, want error", in, got)
			continue
		}
		if got != "" {
			t.Errorf("ParseAffinity(%q) returned %q with its error", in, got)
		}
		if !strings.Contains(err.Error(), "must be one of local, remote, none") {
			t.Errorf("ParseAffinity(%q) error %q does not list the choices", in, err)
		}
	}
}

func TestOverlaps(t *testing.T) {
	a := prefixes("10.0.0.0/16", "fd00::/64", "192.168.0.0/24")
	b := prefixes("10.0.128.0/17", "fd00::/48", "172.16.0.0/12", "::ffff:192.168.0.0/120")
	want := [][2]netip.Prefix{
		{netip.MustParsePrefix("10.0.0.0/16"), netip.MustParsePrefix("10.0.128.0/17")},
		{netip.MustParsePrefix("fd00::/64"), netip.MustParsePrefix("fd00::/48")},
	}
	if diff := cmp.Diff(want, clustermesh.Overlaps(a, b), cmpOpts); diff != "" {
		t.Errorf("Overlaps (-want +got):\n%s", diff)
	}
	if got := clustermesh.Overlaps(a, nil); len(got) != 0 {
		t.Errorf("Overlaps(a, nil) = %v, want none", got)
	}
}
