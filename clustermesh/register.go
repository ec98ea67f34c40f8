package clustermesh

import (
	"fmt"
	"net/netip"
	"strings"
)

// Reasons a RegistrationError gives.
const (
	ReasonNameTaken   = "name taken"
	ReasonIDTaken     = "cluster ID taken"
	ReasonCIDROverlap = "CIDR overlap"
)

// RegistrationError says why a cluster may not join the mesh: another
// cluster already holds its name or ID, or their CIDRs overlap.
type RegistrationError struct {
	Cluster, Other ClusterName
	// ID is the refused cluster's ID, OtherID the registered one's.
	ID, OtherID ClusterID
	// Reason is ReasonNameTaken, ReasonIDTaken or ReasonCIDROverlap.
	Reason string
	// Overlaps lists the overlapping (ours, theirs) prefix pairs.
	Overlaps [][2]netip.Prefix
}

func (e *RegistrationError) Error() string {
	var b strings.Builder
	switch e.Reason {
	case ReasonNameTaken:
		fmt.Fprintf(&b, "register cluster %q (ID %d): name taken by cluster %q registered with ID %d", e.Cluster, e.ID, e.Other, e.OtherID)
	case ReasonIDTaken:
		fmt.Fprintf(&b, "register cluster %q: cluster ID %d taken by cluster %q", e.Cluster, e.ID, e.Other)
	default:
		fmt.Fprintf(&b, "register cluster %q: %s with cluster %q", e.Cluster, e.Reason, e.Other)
	}
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
// config with the name and ID of an existing one is the same cluster coming
// back: it is not compared with itself (its CIDRs may have changed) but is
// checked against every other cluster. It returns a *RegistrationError on conflict.
func CheckRegistration(cfg ClusterConfig, existing []ClusterConfig) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("register cluster %q: %w", cfg.Name, err)
	}
	mine := append(append([]netip.Prefix(nil), cfg.PodCIDRs...), cfg.ServiceCIDRs...)
	for _, o := range existing {
		if o.Name == cfg.Name {
			if o.ID != cfg.ID {
				return &RegistrationError{Cluster: cfg.Name, Other: o.Name, ID: cfg.ID, OtherID: o.ID, Reason: ReasonNameTaken}
			}
			continue
		}
		if o.ID == cfg.ID {
			return &RegistrationError{Cluster: cfg.Name, Other: o.Name, ID: cfg.ID, OtherID: o.ID, Reason: ReasonIDTaken}
		}
		theirs := append(append([]netip.Prefix(nil), o.PodCIDRs...), o.ServiceCIDRs...)
		if ov := Overlaps(mine, theirs); len(ov) > 0 {
			return &RegistrationError{Cluster: cfg.Name, Other: o.Name, ID: cfg.ID, OtherID: o.ID, Reason: ReasonCIDROverlap, Overlaps: ov}
		}
	}
	return nil
}
