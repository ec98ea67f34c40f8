package clustermesh

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
)

// GrantsPrefix is where the broker stores grants, one key per cluster. Only
// the broker's root user may write under it; every cluster may read it.
const GrantsPrefix = Root + "grants/"

// GrantKey is where cluster name's grant is stored.
func GrantKey(name ClusterName) string { return GrantsPrefix + string(name) }

// Grant is what the broker allowed a cluster when it was added: its name,
// ID and address ranges. Consumers check every entry a cluster publishes
// against its grant, never against what the cluster says about itself in
// its own ClusterConfig. An empty CIDR list grants no address.
type Grant struct {
	Name         ClusterName    `json:"name"`
	ID           ClusterID      `json:"id"`
	PodCIDRs     []netip.Prefix `json:"podCIDRs,omitempty"`
	ServiceCIDRs []netip.Prefix `json:"serviceCIDRs,omitempty"`
}

// Key returns where the grant is stored.
func (g *Grant) Key() string { return GrantKey(g.Name) }

// Validate checks the grant on its own (not against other grants): a valid
// name and ID, canonical prefixes, no 0.0.0.0/0 or ::/0, and no pod CIDR
// overlapping a service CIDR.
func (g *Grant) Validate() error {
	c := g.Config(Capabilities{})
	if err := c.Validate(); err != nil {
		return err
	}
	for _, p := range append(slices.Clone(g.PodCIDRs), g.ServiceCIDRs...) {
		if p.Bits() == 0 {
			return fmt.Errorf("CIDR %s covers every address; grant a cluster only its own range", p)
		}
	}
	if ov := Overlaps(g.PodCIDRs, g.ServiceCIDRs); len(ov) > 0 {
		return fmt.Errorf("pod CIDR %s overlaps service CIDR %s", ov[0][0], ov[0][1])
	}
	return nil
}

// Config returns the cluster config the grant allows: the granted name, ID
// and CIDRs with caps, the capabilities the cluster chose itself.
func (g *Grant) Config(caps Capabilities) ClusterConfig {
	return ClusterConfig{
		Name:         g.Name,
		ID:           g.ID,
		PodCIDRs:     slices.Clone(g.PodCIDRs),
		ServiceCIDRs: slices.Clone(g.ServiceCIDRs),
		Capabilities: caps,
	}
}

// Owner returns the config consumers validate claimed's entries against:
// the grant's name, ID and CIDRs with claimed's capabilities. It also
// returns every claim of claimed that differs from the grant (claims are
// ignored, but a cluster making them is shown).
func (g *Grant) Owner(claimed ClusterConfig) (ClusterConfig, []string) {
	var diff []string
	if claimed.ID != g.ID {
		diff = append(diff, fmt.Sprintf("config claims cluster ID %d, the broker granted %d", claimed.ID, g.ID))
	}
	if !slices.Equal(claimed.PodCIDRs, g.PodCIDRs) {
		diff = append(diff, fmt.Sprintf("config claims pod CIDRs %v, the broker granted %v", claimed.PodCIDRs, g.PodCIDRs))
	}
	if !slices.Equal(claimed.ServiceCIDRs, g.ServiceCIDRs) {
		diff = append(diff, fmt.Sprintf("config claims service CIDRs %v, the broker granted %v", claimed.ServiceCIDRs, g.ServiceCIDRs))
	}
	return g.Config(claimed.Capabilities), diff
}

// DecodeGrant parses and validates a grant stored at key.
func DecodeGrant(key string, value []byte) (Grant, error) {
	var g Grant
	pk, err := ParseKey(key)
	if err != nil || !pk.Grant {
		return g, invalid(key, "", "not a grant key")
	}
	if err := decodeStrict(value, &g); err != nil {
		return Grant{}, invalid(key, "", "%v", err)
	}
	if g.Name != pk.Cluster {
		return Grant{}, invalid(key, "", "grant names cluster %q, key names %q", g.Name, pk.Cluster)
	}
	if err := g.Validate(); err != nil {
		return Grant{}, invalid(key, "", "%v", err)
	}
	return g, nil
}

// StoredGrant is a grant with the etcd create revision of its key.
type StoredGrant struct {
	Grant
	CreateRevision int64
}

// CheckGrant checks g against the grants already made: it returns a
// *RegistrationError when another cluster holds g's ID or one of g's CIDRs
// overlaps another cluster's. A grant for the same name is replaced, not
// compared.
func CheckGrant(g Grant, existing []Grant) error {
	if err := g.Validate(); err != nil {
		return fmt.Errorf("grant cluster %q: %w", g.Name, err)
	}
	cfgs := make([]ClusterConfig, 0, len(existing))
	for _, o := range existing {
		if o.Name == g.Name {
			continue // re-granting a cluster replaces its grant
		}
		cfgs = append(cfgs, o.Config(Capabilities{}))
	}
	return CheckRegistration(g.Config(Capabilities{}), cfgs)
}

// ResolveGrants returns the grants consumers honour: every grant that
// conflicts (same ID, overlapping CIDRs) with an older one, by create
// revision, is left out and its conflict returned instead. The broker never
// makes conflicting grants; this resolves ones written by hand or by an
// older broker.
func ResolveGrants(all []StoredGrant) (ok map[ClusterName]Grant, conflicts map[ClusterName]error) {
	sorted := slices.Clone(all)
	slices.SortFunc(sorted, func(a, b StoredGrant) int {
		return cmp.Or(cmp.Compare(a.CreateRevision, b.CreateRevision), cmp.Compare(a.Name, b.Name))
	})
	ok = make(map[ClusterName]Grant, len(sorted))
	conflicts = map[ClusterName]error{}
	var kept []Grant
	for _, g := range sorted {
		if err := CheckGrant(g.Grant, kept); err != nil {
			conflicts[g.Name] = fmt.Errorf("grant ignored, it conflicts with an older grant: %w", err)
			continue
		}
		kept = append(kept, g.Grant)
		ok[g.Name] = g.Grant
	}
	return ok, conflicts
}

// Grant returns the grant that allows exactly c's name, ID and CIDRs.
func (c *ClusterConfig) Grant() Grant {
	return Grant{Name: c.Name, ID: c.ID, PodCIDRs: slices.Clone(c.PodCIDRs), ServiceCIDRs: slices.Clone(c.ServiceCIDRs)}
}
