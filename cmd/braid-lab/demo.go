package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/braidmesh/braid/internal/lab"
)

// demoAnswerTimeout bounds how long the demo waits for each cluster's client
// to have heard from both clusters.
const demoAnswerTimeout = 90 * time.Second

func demoCommand(dir *string) *cobra.Command {
	var examples string
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Two clusters × two nodes, deploy/examples applied to both, calls across the encrypted mesh; runs until Ctrl-C",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			say := progress(out)
			l, err := lab.Up(cmd.Context(), lab.Config{Clusters: 2, Nodes: 2, Dir: *dir, Progress: say})
			if err != nil {
				return err
			}
			if err := runDemo(cmd.Context(), out, say, l, examples); err != nil {
				l.Close()
				return err
			}
			return hold(cmd.Context(), out, l)
		},
	}
	cmd.Flags().StringVar(&examples, "examples", "deploy/examples", "the manifests to apply, unchanged, to every cluster")
	return cmd
}

// identity is what the web service's whoami port answers.
type identity struct {
	Pod     string `json:"pod"`
	Node    string `json:"node"`
	Cluster string `json:"cluster"`
}

func runDemo(ctx context.Context, out io.Writer, say func(string, ...any), l *lab.Lab, examples string) error {
	kubectl := filepath.Join(l.KubeBin, "kubectl")
	run := func(c *lab.Cluster, args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, kubectl, append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
		b, err := cmd.CombinedOutput()
		if err != nil {
			return string(b), fmt.Errorf("kubectl %s (cluster %s): %w: %s", strings.Join(args, " "), c.Name, err, strings.TrimSpace(string(b)))
		}
		return string(b), nil
	}
	for _, c := range l.Clusters {
		if _, err := run(c, "apply", "-f", examples); err != nil {
			return err
		}
		say("cluster %s: applied %s", c.Name, examples)
	}
	for _, c := range l.Clusters {
		for _, d := range []string{"web", "client"} {
			if _, err := run(c, "rollout", "status", "deployment/"+d, "--timeout=120s"); err != nil {
				return err
			}
		}
		say("cluster %s: deployments web and client available", c.Name)
	}
	// The commands a user runs: call the web service's ClusterIP from the
	// client pod of each cluster.
	type call struct {
		c    *lab.Cluster
		args []string
	}
	var calls []call
	for _, c := range l.Clusters {
		svc, err := c.Client.CoreV1().Services("default").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("cluster %s: service web: %w", c.Name, err)
		}
		calls = append(calls, call{c, []string{"exec", "deploy/client", "--", "curl", "-s", "--max-time", "2", "http://" + svc.Spec.ClusterIP + ":8080/"}})
	}
	for _, cl := range calls {
		heard := map[string]identity{}
		deadline := time.Now().Add(demoAnswerTimeout)
		for len(heard) < len(l.Clusters) {
			if time.Now().After(deadline) {
				return fmt.Errorf("cluster %s: the client heard only from %v after %v", cl.c.Name, keys(heard), demoAnswerTimeout)
			}
			o, err := run(cl.c, cl.args...)
			var id identity
			if err == nil && json.Unmarshal([]byte(o), &id) == nil && id.Cluster != "" {
				heard[id.Cluster] = id
			}
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		for _, name := range keys(heard) {
			id := heard[name]
			say("cluster %s: client got an answer from cluster %s (pod %s on node %s)", cl.c.Name, id.Cluster, id.Pod, id.Node)
		}
	}

	fmt.Fprintf(out, "\n=== the demo is ready ===\n\n")
	fmt.Fprintf(out, "Status pages (operators; agents serve one per node):\n")
	for _, c := range l.Clusters {
		fmt.Fprintf(out, "  %-5s %s\n", c.Name, c.StatusURL)
	}
	fmt.Fprintf(out, "\nKubeconfigs:\n")
	for _, c := range l.Clusters {
		fmt.Fprintf(out, "  %-5s %s\n", c.Name, c.Kubeconfig)
	}
	fmt.Fprintf(out, "\nCall the global service web from a pod in each cluster; the answer names the cluster that served it:\n")
	for _, cl := range calls {
		fmt.Fprintf(out, "  %s --kubeconfig %s %s\n", kubectl, cl.c.Kubeconfig, strings.Join(cl.args, " "))
	}
	fmt.Fprintf(out, "\nCross-cluster answers travel through WireGuard; its counters on each node:\n")
	for _, c := range l.Clusters {
		for _, n := range c.Nodes {
			fmt.Fprintf(out, "  ip netns exec %s wg show %s transfer\n", n.Netns, n.WireGuard)
		}
	}
	fmt.Fprintf(out, "\nThe ConfigMap-served page: the same commands with :80 instead of :8080.\n")
	fmt.Fprintf(out, "Ctrl-C stops the lab and removes everything.\n")
	return nil
}

func keys(m map[string]identity) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
