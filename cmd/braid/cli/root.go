package cli

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/status"
)

// NewRoot returns the braid root command with the commands of this
// package; callers may add more before executing it.
func NewRoot(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "braid",
		Short:         "Braid joins Kubernetes clusters into one encrypted mesh",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(statusCommand(), joinCommand(), leaveCommand())
	return root
}

// Run executes root with args and returns the process exit status.
func Run(ctx context.Context, root *cobra.Command, args []string) int {
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(root.ErrOrStderr(), "braid:", err)
		return 1
	}
	return 0
}

// PrintStatus writes s as a table.
func PrintStatus(w io.Writer, s status.Snapshot) {
	fmt.Fprintf(w, "cluster %s (%s)", s.Cluster, s.Role)
	if p := s.Publish; p != nil {
		kinds := make([]string, 0, len(p.Entries))
		for _, k := range clustermesh.Kinds {
			kinds = append(kinds, fmt.Sprintf("%s %d", k, p.Entries[k]))
		}
		fmt.Fprintf(w, ", publishing %s", strings.Join(kinds, ", "))
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "REMOTE\tID\tSTATE\tLEASE LEFT")
	for _, k := range clustermesh.Kinds {
		fmt.Fprintf(tw, "\t%s", strings.ToUpper(string(k)))
	}
	fmt.Fprintln(tw, "\tSYNC AGE\tINVALID\tFAILURES\tLAST ERROR")
	rows := append([]clustermesh.RemoteClusterStatus(nil), s.Remotes...)
	sort.Slice(rows, func(i, j int) bool { return rows[i].Name < rows[j].Name })
	for _, r := range rows {
		state := "syncing"
		switch {
		case r.Ungranted != "":
			state = "ungranted"
		case r.Gone:
			state = "gone"
		case !r.Connected:
			state = "disconnected"
		case r.Stale:
			state = "stale " + s.Time.Sub(r.LastHeard()).Round(time.Second).String()
		case r.Synced:
			state = "synced"
		}
		// The time the cluster's entries stay unless its operator renews
		// its lease: a cluster that stopped leaves when it runs out.
		lease := "-"
		if r.LeaseRemaining != nil && !r.Gone {
			lease = (time.Duration(*r.LeaseRemaining * float64(time.Second))).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s", r.Name, r.ID, state, lease)
		for _, k := range clustermesh.Kinds {
			fmt.Fprintf(tw, "\t%d", r.Entries[k])
		}
		age := "-"
		if !r.LastUpdate.IsZero() {
			age = s.Time.Sub(r.LastUpdate).Round(time.Millisecond).String()
		}
		fmt.Fprintf(tw, "\t%s\t%d\t%d\t%s\n", age, r.Invalid, r.Failures, r.LastError)
	}
	tw.Flush()
	if s.Policy != nil {
		printPolicy(w, s.Policy)
	}
}
