package clustermesh

import (
	"fmt"
	"net/netip"
	"strings"
)

// RegistrationError says why a cluster may not join the mesh: another
// cluster already holds its name or ID, or their CIDRs overlap.
type RegistrationError struct {
	Cluster, Other ClusterName
	// Reason is "name taken", "cluster ID taken" or "CIDR overlap".
	Reason string
	// Overlaps lists the overlapping (ours, theirs) prefix pairs.
	Overlaps [][2]netip.Prefix
}

func (e *RegistrationError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "register cluster %q: %s with cluster %q", e.Cluster, e.Reason, e.Other)
	for i, o := range e.Overlaps {
		if i == 0 {
			b.WriteString(":")
		} else {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, " %s (%s) overlaps %s (%s)", o[0], e.Cluster, o[1], e.Other)
	}
	return b.String()
}

// CheckRegistration checks cfg against the clusters already in the mesh. A
// config identical to an existing one with the same name (the same cluster
// coming back) passes. It returns a *RegistrationError on conflict.
func CheckRegistration(cfg ClusterConfig, existing []ClusterConfig) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("register cluster %q: %w", cfg.Name, err)
	}
	mine := append(append([]netip.Prefix(nil), cfg.PodCIDRs...), cfg.ServiceCIDRs...)
	for _, o := range existing {
		if o.Name == cfg.Name {
			if o.ID != cfg.ID {
				return &RegistrationError{Cluster: cfg.Name, Other: o.Name,
					Reason: fmt.Sprintf("name taken (registered with cluster ID %d, not %d)", o.ID, cfg.ID)}
			}
			continue
		}
		if o.ID == cfg.ID {
			return &RegistrationError{Cluster: cfg.Name, Other: o.Name,
				Reason: fmt.Sprintf("cluster ID %d taken", cfg.ID)}
		}
		theirs := append(append([]netip.Prefix(nil), o.PodCIDRs...), o.ServiceCIDRs...)
		if ov := Overlaps(mine, theirs); len(ov) > 0 {
			return &RegistrationError{Cluster: cfg.Name, Other: o.Name, Reason: "CIDR overlap", Overlaps: ov}
		}
	}
	return nil
}
