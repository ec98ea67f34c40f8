package clustermesh_test

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/braidmesh/braid/clustermesh"
)

func westConfig() clustermesh.ClusterConfig {
	return clustermesh.ClusterConfig{
		Name:         "west",
		ID:           3,
		PodCIDRs:     prefixes("10.3.0.0/16", "fd00:3::/48"),
		ServiceCIDRs: prefixes("10.103.0.0/16", "fd00:103::/108"),
	}
}

func TestCheckRegistrationPasses(t *testing.T) {
	east, west := eastConfig(), westConfig()
	moved := eastConfig()
	moved.PodCIDRs = prefixes("10.20.0.0/16")
	tests := []struct {
		name     string
		cfg      clustermesh.ClusterConfig
		existing []clustermesh.ClusterConfig
	}{
		{"first cluster", east, nil},
		{"no conflict", east, []clustermesh.ClusterConfig{west}},
		{"same cluster coming back", east, []clustermesh.ClusterConfig{west, east}},
		// The returning cluster is not compared against its own old CIDRs.
		{"same cluster coming back with new CIDRs", moved, []clustermesh.ClusterConfig{east, west}},
		{"other family only", clustermesh.ClusterConfig{Name: "v6", ID: 9, PodCIDRs: prefixes("fd00:9::/48")},
			[]clustermesh.ClusterConfig{{Name: "v4", ID: 8, PodCIDRs: prefixes("0.0.0.0/0")}}},
		{"adjacent prefixes", clustermesh.ClusterConfig{Name: "lo", ID: 4, PodCIDRs: prefixes("10.0.0.0/9")},
			[]clustermesh.ClusterConfig{{Name: "hi", ID: 5, PodCIDRs: prefixes("10.128.0.0/9")}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := clustermesh.CheckRegistration(tc.cfg, tc.existing); err != nil {
				t.Errorf("CheckRegistration: %v", err)
			}
		})
	}
}

func TestCheckRegistrationConflicts(t *testing.T) {
	east, west := eastConfig(), westConfig()
	pair := func(a, b string) [2]netip.Prefix {
		return [2]netip.Prefix{netip.MustParsePrefix(a), netip.MustParsePrefix(b)}
	}
	tests := []struct {
		name     string
		cfg      clustermesh.ClusterConfig
		existing []clustermesh.ClusterConfig
		other    clustermesh.ClusterName
		overlaps [][2]netip.Prefix
		msg      []string // fragments the message must contain
	}{
		{
			name:     "name taken with a different ID",
			cfg:      clustermesh.ClusterConfig{Name: "east", ID: 7},
			existing: []clustermesh.ClusterConfig{west, east},
			other:    "east",
			msg:      []string{`register cluster "east"`, "name taken", "registered with ID 2"},
		},
		{
			name:     "ID taken by another name",
			cfg:      clustermesh.ClusterConfig{Name: "north", ID: 3},
			existing: []clustermesh.ClusterConfig{east, west},
			other:    "west",
			msg:      []string{`register cluster "north"`, "cluster ID 3 taken", `"west"`},
		},
		{
			name: "IPv4 pod CIDR overlap",
			cfg: clustermesh.ClusterConfig{Name: "north", ID: 4,
				PodCIDRs: prefixes("10.4.0.0/16", "10.2.128.0/17")},
			existing: []clustermesh.ClusterConfig{west, east},
			other:    "east",
			overlaps: [][2]netip.Prefix{pair("10.2.128.0/17", "10.2.0.0/16")},
			msg: []string{`register cluster "north"`, `CIDR overlap with cluster "east"`,
				`10.2.128.0/17 (north) overlaps 10.2.0.0/16 (east)`},
		},
		{
			name: "IPv6 pod CIDR overlap",
			cfg: clustermesh.ClusterConfig{Name: "north", ID: 4,
				PodCIDRs: prefixes("fd00::/16")},
			existing: []clustermesh.ClusterConfig{east},
			other:    "east",
			overlaps: [][2]netip.Prefix{pair("fd00::/16", "fd00:2::/48"), pair("fd00::/16", "fd00:102::/108")},
			msg: []string{`CIDR overlap with cluster "east"`,
				`fd00::/16 (north) overlaps fd00:2::/48 (east)`,
				`fd00::/16 (north) overlaps fd00:102::/108 (east)`},
		},
		{
			name: "pod CIDR overlaps another cluster's service CIDR",
			cfg: clustermesh.ClusterConfig{Name: "north", ID: 4,
				PodCIDRs: prefixes("10.103.7.0/24")},
			existing: []clustermesh.ClusterConfig{east, west},
			other:    "west",
			overlaps: [][2]netip.Prefix{pair("10.103.7.0/24", "10.103.0.0/16")},
			msg:      []string{`10.103.7.0/24 (north) overlaps 10.103.0.0/16 (west)`},
		},
		{
			name: "service CIDR overlaps another cluster's pod CIDR",
			cfg: clustermesh.ClusterConfig{Name: "north", ID: 4,
				ServiceCIDRs: prefixes("10.0.0.0/8")},
			existing: []clustermesh.ClusterConfig{east},
			other:    "east",
			overlaps: [][2]netip.Prefix{pair("10.0.0.0/8", "10.2.0.0/16"), pair("10.0.0.0/8", "10.102.0.0/16")},
			msg:      []string{`10.0.0.0/8 (north) overlaps 10.2.0.0/16 (east)`},
		},
		{
			name: "returning cluster's new CIDRs overlap another",
			cfg: clustermesh.ClusterConfig{Name: "east", ID: 2,
				PodCIDRs: prefixes("10.3.0.0/24")},
			existing: []clustermesh.ClusterConfig{east, west},
			other:    "west",
			overlaps: [][2]netip.Prefix{pair("10.3.0.0/24", "10.3.0.0/16")},
			msg:      []string{`register cluster "east": CIDR overlap with cluster "west"`},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := clustermesh.CheckRegistration(tc.cfg, tc.existing)
			var re *clustermesh.RegistrationError
			if !errors.As(err, &re) {
				t.Fatalf("CheckRegistration = %v (%T), want *RegistrationError", err, err)
			}
			if re.Cluster != tc.cfg.Name || re.Other != tc.other {
				t.Errorf("RegistrationError is %q vs %q, want %q vs %q", re.Cluster, re.Other, tc.cfg.Name, tc.other)
			}
			if diff := cmp.Diff(tc.overlaps, re.Overlaps, cmpOpts); diff != "" {
				t.Errorf("Overlaps (-want +got):\n%s", diff)
			}
			if errors.Is(err, clustermesh.ErrInvalid) {
				t.Error("a RegistrationError matches ErrInvalid")
			}
			for _, m := range tc.msg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not contain %q", err, m)
				}
			}
		})
	}
}

func TestCheckRegistrationInvalidConfig(t *testing.T) {
	for _, cfg := range []clustermesh.ClusterConfig{
		{Name: "", ID: 1},
		{Name: "east", ID: 0},
		{Name: "east", ID: 512},
		{Name: "east", ID: 2, PodCIDRs: prefixes("10.2.0.1/16")},
	} {
		err := clustermesh.CheckRegistration(cfg, []clustermesh.ClusterConfig{westConfig()})
		if err == nil {
			t.Errorf("CheckRegistration(%+v) = nil, want error", cfg)
			continue
		}
		var re *clustermesh.RegistrationError
		if errors.As(err, &re) {
			t.Errorf("CheckRegistration(%+v) = %v, a RegistrationError for an invalid config", cfg, err)
		}
		if !strings.HasPrefix(err.Error(), "register cluster ") {
			t.Errorf("CheckRegistration(%+v) = %q, want it to name the cluster", cfg, err)
		}
	}
}

func TestRegistrationErrorMessage(t *testing.T) {
	err := &clustermesh.RegistrationError{
		Cluster: "north", Other: "east", Reason: "CIDR overlap",
		Overlaps: [][2]netip.Prefix{
			{netip.MustParsePrefix("10.2.128.0/17"), netip.MustParsePrefix("10.2.0.0/16")},
			{netip.MustParsePrefix("fd00::/16"), netip.MustParsePrefix("fd00:2::/48")},
		},
	}
	want := `register cluster "north": CIDR overlap with cluster "east": ` +
		`10.2.128.0/17 (north) overlaps 10.2.0.0/16 (east), fd00::/16 (north) overlaps fd00:2::/48 (east)`
	if got := err.Error(); got != want {
		t.Errorf("Error() =\n%s\nwant\n%s", got, want)
	}
}
