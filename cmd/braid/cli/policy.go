package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/braidmesh/braid/clustermesh/status"
)

// printPolicy writes an agent's NetworkPolicy enforcement: the policies
// loaded and whether the datapath enforces them, the identities they
// select, the drops per policy and reason, and the last drops.
func printPolicy(w io.Writer, p *status.PolicyStatus) {
	state := "synced"
	if !p.Synced {
		state = "not synced (the maps keep what they enforced)"
	}
	fmt.Fprintf(w, "\nnetwork policy: %s, %d policies, %d rules", state, p.Policies, p.Rules)
	if p.Revision != "" {
		switch p.Enforced {
		case p.Revision:
			fmt.Fprintf(w, ", revision %s enforced", p.Revision)
		case "":
			fmt.Fprintf(w, ", revision %s not enforced yet", p.Revision)
		default:
			fmt.Fprintf(w, ", revision %s (datapath enforces %s)", p.Revision, p.Enforced)
		}
	}
	fmt.Fprintln(w)
	dash := func(s []string) string {
		if len(s) == 0 {
			return "-"
		}
		return strings.Join(s, ",")
	}
	if len(p.Identities) > 0 {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "IDENTITY\tNAMESPACE\tLABELS\tINGRESS POLICIES\tEGRESS POLICIES\tDROPPED")
		for _, id := range p.Identities {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\n", id.Identity, id.Namespace, status.PodLabels(id.Labels), dash(id.Ingress), dash(id.Egress), id.Dropped)
		}
		tw.Flush()
	}
	if len(p.Drops) > 0 {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "POLICY\tDIRECTION\tREASON\tDROPPED PACKETS")
		for _, d := range p.Drops {
			name := d.Policy
			if name == "" {
				name = "(default deny)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", name, d.Direction, d.Reason, d.Packets)
		}
		tw.Flush()
	}
	if len(p.RecentDrops) > 0 {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "LAST DROPS\tDIRECTION\tREASON\tSOURCE IDENTITY\tFROM\tTO\tPROTOCOL")
		for _, d := range p.RecentDrops {
			fmt.Fprintf(tw, "%.1fs ago\t%s\t%s\t%s\t%s\t%s\t%s\n", d.AgeSeconds, d.Direction, d.Reason, status.Peer(d.Source, d.SourceCluster), d.From, d.To, d.Protocol)
		}
		tw.Flush()
	}
}
