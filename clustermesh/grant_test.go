package clustermesh_test

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/braidmesh/braid/clustermesh"
)

func eastGrant() clustermesh.Grant {
	c := eastConfig()
	return clustermesh.Grant{Name: c.Name, ID: c.ID, PodCIDRs: c.PodCIDRs, ServiceCIDRs: c.ServiceCIDRs}
}

func TestGrantValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*clustermesh.Grant)
		reason string
	}{
		{"zero ID", func(g *clustermesh.Grant) { g.ID = 0 }, "cluster ID 0"},
		{"bad name", func(g *clustermesh.Grant) { g.Name = "East" }, "DNS label"},
		{"pod CIDR is everything", func(g *clustermesh.Grant) { g.PodCIDRs = prefixes("0.0.0.0/0") }, "covers every address"},
		{"service CIDR is everything", func(g *clustermesh.Grant) { g.ServiceCIDRs = prefixes("::/0") }, "covers every address"},
		{"pod overlaps service", func(g *clustermesh.Grant) { g.ServiceCIDRs = prefixes("10.2.128.0/20") }, "overlaps service CIDR"},
		{"host bits", func(g *clustermesh.Grant) { g.PodCIDRs = []netip.Prefix{netip.MustParsePrefix("10.2.0.1/16")} }, "host bits"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := eastGrant()
			tc.mutate(&g)
			err := g.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("Validate = %v, want an error containing %q", err, tc.reason)
			}
			if _, err := clustermesh.DecodeGrant(g.Key(), mustJSON(t, g)); !errors.Is(err, clustermesh.ErrInvalid) {
				t.Fatalf("DecodeGrant = %v, want ErrInvalid", err)
			}
		})
	}
	g := eastGrant()
	got, err := clustermesh.DecodeGrant(g.Key(), mustJSON(t, g))
	if err != nil || got.ID != g.ID {
		t.Fatalf("DecodeGrant(valid) = %+v, %v", got, err)
	}
	if _, err := clustermesh.DecodeGrant(clustermesh.GrantKey("west"), mustJSON(t, g)); err == nil {
		t.Fatal("DecodeGrant accepted a grant stored under another cluster's key")
	}
}

func TestGrantOwnerIgnoresClaims(t *testing.T) {
	g := eastGrant()
	claimed := clustermesh.ClusterConfig{Name: "east", ID: 7, PodCIDRs: prefixes("10.0.0.0/8"),
		Capabilities: clustermesh.Capabilities{DefaultDeny: true}}
	owner, diff := g.Owner(claimed)
	if owner.ID != 2 || len(owner.PodCIDRs) != 2 || !owner.Capabilities.DefaultDeny {
		t.Fatalf("Owner = %+v: want the grant's ID and CIDRs with the claimed capabilities", owner)
	}
	if len(diff) != 3 {
		t.Fatalf("Owner diff = %q, want the ID, pod and service CIDR claims", diff)
	}
	if _, diff := g.Owner(eastConfig()); len(diff) != 0 {
		t.Fatalf("a config equal to the grant differs: %q", diff)
	}
}

func TestResolveGrantsOldestWins(t *testing.T) {
	east := eastGrant()
	thief := clustermesh.Grant{Name: "thief", ID: 2, PodCIDRs: prefixes("10.9.0.0/16")}
	overlap := clustermesh.Grant{Name: "overlap", ID: 5, PodCIDRs: prefixes("10.2.3.0/24")}
	west := clustermesh.Grant{Name: "west", ID: 3, PodCIDRs: prefixes("10.3.0.0/16")}
	ok, conflicts := clustermesh.ResolveGrants([]clustermesh.StoredGrant{
		{Grant: thief, CreateRevision: 20}, {Grant: east, CreateRevision: 10},
		{Grant: overlap, CreateRevision: 30}, {Grant: west, CreateRevision: 5},
	})
	if _, has := ok["east"]; !has || len(ok) != 2 {
		t.Fatalf("honoured %v, want east and west", ok)
	}
	for _, name := range []clustermesh.ClusterName{"thief", "overlap"} {
		if err := conflicts[name]; err == nil || !strings.Contains(err.Error(), "older grant") {
			t.Errorf("conflict of %s = %v, want one naming the older grant", name, err)
		}
	}
}

func TestDecodeServiceBackendsAgainstGrant(t *testing.T) {
	owner := eastConfig()
	node := netip.MustParseAddr("192.168.10.1")
	isNode := func(ip netip.Addr) bool { return ip == node }
	tests := []struct {
		name   string
		mutate func(*clustermesh.Service)
		reason string
	}{
		{"public backend", func(s *clustermesh.Service) { s.Backends[0].IP = netip.MustParseAddr("8.8.8.8") }, "outside cluster"},
		{"other cluster's pod", func(s *clustermesh.Service) { s.Backends[0].IP = netip.MustParseAddr("10.3.0.9") }, "outside cluster"},
		{"duplicate", func(s *clustermesh.Service) { s.Backends[1].IP = s.Backends[0].IP }, "appears twice"},
		{"too many", func(s *clustermesh.Service) {
			b := clustermesh.Backend{Ports: []clustermesh.BackendPort{{Name: "http", Port: 8080}}}
			s.Backends = nil
			base := netip.MustParseAddr("10.2.0.0")
			for range clustermesh.MaxBackendsPerService + 1 {
				base = base.Next()
				b.IP = base
				s.Backends = append(s.Backends, b)
			}
		}, "more than the limit"},
		{"cluster IP outside service CIDRs", func(s *clustermesh.Service) { s.ClusterIPs = addrs("10.103.0.1") }, "outside cluster"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := eastService()
			tc.mutate(&s)
			_, err := clustermesh.DecodeServiceOnNodes(&owner, isNode, s.Key(), mustJSON(t, s))
			if !errors.Is(err, clustermesh.ErrInvalid) || !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("DecodeServiceOnNodes = %v, want a rejection containing %q", err, tc.reason)
			}
		})
	}
	s := eastService()
	s.Backends[0].IP = node
	if _, err := clustermesh.DecodeServiceOnNodes(&owner, isNode, s.Key(), mustJSON(t, s)); err != nil {
		t.Fatalf("host-network backend on a published node IP rejected: %v", err)
	}
	if _, err := clustermesh.DecodeService(&owner, s.Key(), mustJSON(t, s)); err == nil {
		t.Fatal("DecodeService without node IPs accepted a backend outside the pod CIDRs")
	}
}
