// Command braid-lab runs Kubernetes clusters joined into a Braid mesh on this
// machine (internal/lab): `up`, `down`, `kubeconfig`, `status`, `demo`, and
// `node`, the kubelet stand-in each lab node runs.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/braidmesh/braid/clustermesh/status"
	"github.com/braidmesh/braid/internal/lab"
	"github.com/braidmesh/braid/internal/lab/node"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second Ctrl-C kills at once; the next run cleans up
	}()
	if err := command().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "braid-lab:", err)
		os.Exit(1)
	}
}

func command() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:           "braid-lab",
		Short:         "Kubernetes clusters joined into a Braid mesh on this machine",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	cmd.PersistentFlags().StringVar(&dir, "dir", lab.DefaultDir, "where runs keep their state (kubeconfigs, logs)")
	cmd.AddCommand(upCommand(&dir), downCommand(&dir), kubeconfigCommand(&dir), statusCommand(&dir), demoCommand(&dir), benchCommand(&dir), conformanceCommand(&dir), node.NewCommand(), sandboxCommand())
	return cmd
}

func progress(w io.Writer) func(string, ...any) {
	start := time.Now()
	return func(format string, args ...any) {
		fmt.Fprintf(w, "[%5.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}
}

func upCommand(dir *string) *cobra.Command {
	cfg := lab.Config{}
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Start a lab and keep it running until Ctrl-C or `braid-lab down`",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Dir = *dir
			cfg.Progress = progress(cmd.OutOrStdout())
			l, err := lab.Up(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			printLab(cmd.OutOrStdout(), l)
			return hold(cmd.Context(), cmd.OutOrStdout(), l)
		},
	}
	cmd.Flags().IntVar(&cfg.Clusters, "clusters", 2, "number of clusters")
	cmd.Flags().IntVar(&cfg.Nodes, "nodes", 2, "nodes per cluster")
	cmd.Flags().DurationVar(&cfg.LeaseTTL, "lease-ttl", 0, "the operators' --lease-ttl (0: their default)")
	return cmd
}

// hold keeps the lab running until ctx is done or a process fails, then
// tears it down.
func hold(ctx context.Context, out io.Writer, l *lab.Lab) error {
	var err error
	select {
	case <-ctx.Done():
		fmt.Fprintln(out, "\nstopping the lab…")
	case err = <-l.Failed():
		fmt.Fprintf(out, "\na lab process failed; stopping the lab:\n%v\n", err)
	}
	if cerr := l.Close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("tear down: %w", cerr))
	}
	if err == nil {
		fmt.Fprintln(out, "lab stopped and removed")
	}
	return err
}

func printLab(w io.Writer, l *lab.Lab) {
	fmt.Fprintf(w, "\nlab %s is up (state in %s); broker %s\n", l.Run, l.Dir, l.Broker)
	for _, c := range l.Clusters {
		fmt.Fprintf(w, "  cluster %-6s id %d  pods %s  services %s\n", c.Name, c.ID, c.PodCIDR, c.ServiceCIDR)
		fmt.Fprintf(w, "    kubectl --kubeconfig %s get nodes -o wide\n", c.Kubeconfig)
		fmt.Fprintf(w, "    status page %s\n", c.StatusURL)
	}
	fmt.Fprintln(w, "Ctrl-C (or `braid-lab down`) stops it and removes everything.")
}

func downCommand(dir *string) *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "Stop the running lab and remove what any lab run left behind",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return lab.Down(*dir, time.Minute, progress(cmd.OutOrStdout()))
		},
	}
}

// liveRun returns the one running lab under dir.
func liveRun(dir string) (lab.RunInfo, error) {
	runs, err := lab.Runs(dir)
	if err != nil {
		return lab.RunInfo{}, err
	}
	var live []lab.RunInfo
	for _, r := range runs {
		if r.Alive {
			live = append(live, r)
		}
	}
	switch len(live) {
	case 0:
		return lab.RunInfo{}, fmt.Errorf("no lab is running under %s: start one with `braid-lab up`", dir)
	case 1:
		return live[0], nil
	default:
		return lab.RunInfo{}, fmt.Errorf("%d labs are running under %s; pass --dir to choose", len(live), dir)
	}
}

func kubeconfigCommand(dir *string) *cobra.Command {
	return &cobra.Command{
		Use:   "kubeconfig CLUSTER",
		Short: "Print the path of a lab cluster's admin kubeconfig",
		Long:  "Print the path of a lab cluster's admin kubeconfig, e.g. export KUBECONFIG=$(braid-lab kubeconfig east)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := liveRun(*dir)
			if err != nil {
				return err
			}
			var names []string
			for _, c := range r.Clusters {
				if string(c.Name) == args[0] {
					fmt.Fprintln(cmd.OutOrStdout(), c.Kubeconfig)
					return nil
				}
				names = append(names, string(c.Name))
			}
			return fmt.Errorf("no cluster %q in lab %s (clusters: %v)", args[0], r.Run, names)
		},
	}
}

func statusCommand(dir *string) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the running lab: clusters, nodes, and what each operator and agent has synced",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := liveRun(*dir)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			client := &http.Client{Timeout: 2 * time.Second}
			fmt.Fprintf(w, "lab %s (process %d), underlay %s on %s, state in %s\n", r.Run, r.Pid, r.Underlay, r.Bridge, r.Dir)
			line := func(role, name, url string) {
				snap, err := status.Fetch(cmd.Context(), client, url)
				if err != nil {
					fmt.Fprintf(w, "    %-8s %-9s %s  unreachable: %v\n", role, name, url, err)
					return
				}
				var synced []string
				for _, rc := range snap.Remotes {
					state := "syncing"
					switch {
					case rc.Gone:
						state = "gone"
					case rc.Synced && rc.Connected:
						state = "synced"
					case !rc.Connected:
						state = "disconnected"
					}
					synced = append(synced, fmt.Sprintf("%s=%s", rc.Name, state))
				}
				health := "healthy"
				if !snap.Healthy {
					health = fmt.Sprintf("degraded %v", snap.Problems)
				}
				fmt.Fprintf(w, "    %-8s %-9s %s  %s  %v\n", role, name, url, health, synced)
			}
			for _, c := range r.Clusters {
				fmt.Fprintf(w, "  cluster %s (id %d): kubeconfig %s, apiserver %s\n", c.Name, c.ID, c.Kubeconfig, c.APIServer)
				line("operator", string(c.Name), c.Status)
				for _, n := range c.Nodes {
					line("agent", n.Name, n.Status)
				}
			}
			return nil
		},
	}
}
