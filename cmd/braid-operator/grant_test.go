package main

import (
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/kvstore/memory"
)

// TestGrantedConfig checks that the operator takes its ID and CIDRs from the
// broker's grant, keeps only its capabilities from its flags, and refuses
// flags that contradict the grant or a cluster without a grant.
func TestGrantedConfig(t *testing.T) {
	ctx := t.Context()
	store := memory.New()
	defer store.Close()
	pods := []netip.Prefix{netip.MustParsePrefix("10.7.0.0/16")}
	svcs := []netip.Prefix{netip.MustParsePrefix("172.27.0.0/16")}
	g := clustermesh.Grant{Name: "east", ID: 7, PodCIDRs: pods, ServiceCIDRs: svcs}
	b, err := json.Marshal(g)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Put(ctx, g.Key(), b, 0); err != nil {
		t.Fatal(err)
	}
	caps := clustermesh.Capabilities{DefaultDeny: true, IPv6: true}

	// Only the name and capabilities given: everything else from the grant.
	got, err := grantedConfig(ctx, store, clustermesh.ClusterConfig{Name: "east", ID: clustermesh.MinClusterID, Capabilities: caps}, false)
	if err != nil {
		t.Fatalf("grantedConfig: %v", err)
	}
	if got.ID != 7 || !slices.Equal(got.PodCIDRs, pods) || !slices.Equal(got.ServiceCIDRs, svcs) || got.Capabilities != caps {
		t.Errorf("grantedConfig = %+v, want ID 7, pods %v, services %v, caps %+v", got, pods, svcs, caps)
	}
	// Flags agreeing with the grant are fine.
	if _, err := grantedConfig(ctx, store, clustermesh.ClusterConfig{Name: "east", ID: 7, PodCIDRs: pods, ServiceCIDRs: svcs}, true); err != nil {
		t.Errorf("flags equal to the grant: %v", err)
	}

	for _, tc := range []struct {
		name  string
		want  clustermesh.ClusterConfig
		idSet bool
		err   string
	}{
		{"other ID", clustermesh.ClusterConfig{Name: "east", ID: 3}, true, "--cluster-id 3: the broker granted cluster east ID 7"},
		{"other pod CIDR", clustermesh.ClusterConfig{Name: "east", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}}, false, "--pod-cidr"},
		{"other service CIDR", clustermesh.ClusterConfig{Name: "east", ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("172.21.0.0/16")}}, false, "--service-cidr"},
		{"no grant", clustermesh.ClusterConfig{Name: "west"}, false, "cluster west has no grant from the broker: run `braid broker add-cluster west"},
	} {
		_, err := grantedConfig(ctx, store, tc.want, tc.idSet)
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: error %v, want it to contain %q", tc.name, err, tc.err)
		}
	}

	// A grant that does not decode is an error naming it, not a config.
	if err := store.Put(ctx, clustermesh.GrantKey("bad"), []byte(`{"name":"bad","id":0}`), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := grantedConfig(ctx, store, clustermesh.ClusterConfig{Name: "bad"}, false); err == nil || !strings.Contains(err.Error(), "read the grant of cluster bad") {
		t.Errorf("invalid grant: error %v, want it named", err)
	}
}
