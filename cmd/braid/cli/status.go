package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/braidmesh/braid/clustermesh/status"
)

// StatusAPIVersion versions the document `braid status -o json|yaml`
// prints; fields are only added within a version.
const StatusAPIVersion = "braid.io/status/v1"

// Document is what `braid status -o json|yaml` prints.
type Document struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"` // "Status"
	// Source is where the status was read: a URL or a cluster's operator
	// through the Kubernetes API.
	Source string `json:"source"`
	// Healthy is false when any part reports a problem; Problems list
	// them, each saying where and what to do.
	Healthy  bool     `json:"healthy"`
	Problems []string `json:"problems"`
	// Mesh is the mesh as the source reads it from the broker (brokers and
	// operators serve it).
	Mesh *status.Mesh `json:"mesh,omitempty"`
	// Local is the source's own process status (operators and agents).
	Local *status.Snapshot `json:"local,omitempty"`
}

// getter reads a path from a status server.
type getter func(ctx context.Context, path string) ([]byte, error)

// errNotServed marks a path the server does not serve (HTTP 404).
var errNotServed = errors.New("not served")

func httpGetter(base string) getter {
	base = strings.TrimSuffix(base, "/")
	return func(ctx context.Context, path string) ([]byte, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
		if err != nil {
			return nil, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		if err != nil {
			return nil, err
		}
		switch resp.StatusCode {
		case http.StatusOK:
			return b, nil
		case http.StatusNotFound:
			return nil, errNotServed
		}
		return nil, fmt.Errorf("GET %s%s: HTTP %s: %s", base, path, resp.Status, strings.TrimSpace(string(b)))
	}
}

// kubeGetter reads the operator's status through the apiserver's service
// proxy, as `kubectl get --raw` would.
func kubeGetter(k *kube) getter {
	return func(ctx context.Context, path string) ([]byte, error) {
		b, err := k.client.CoreV1().Services(braidNamespace).ProxyGet("http", "braid-operator", "status", path, nil).DoRaw(ctx)
		if err != nil {
			if strings.Contains(err.Error(), "404") || strings.Contains(strings.ToLower(err.Error()), "not found") {
				return nil, errNotServed
			}
			return nil, fmt.Errorf("operator %s/braid-operator via the Kubernetes API: %w", braidNamespace, err)
		}
		return b, nil
	}
}

// fetchDocument reads the mesh document (from /api/mesh, or an operator's
// /mesh/api/mesh) and the local snapshot (/api/status), whichever the
// source serves, and decides health.
func fetchDocument(ctx context.Context, get getter, source string) (Document, error) {
	doc := Document{APIVersion: StatusAPIVersion, Kind: "Status", Source: source, Problems: []string{}}
	for _, p := range []string{status.MeshAPIPath, "/mesh" + status.MeshAPIPath} {
		b, err := get(ctx, p)
		if errors.Is(err, errNotServed) {
			continue
		}
		if err != nil {
			return doc, err
		}
		var m status.Mesh
		if err := json.Unmarshal(b, &m); err != nil {
			return doc, fmt.Errorf("decode %s from %s: %w", p, source, err)
		}
		if m.APIVersion != status.MeshAPIVersion {
			return doc, fmt.Errorf("%s from %s: apiVersion %q, this braid reads %s: use a braid of the same release", p, source, m.APIVersion, status.MeshAPIVersion)
		}
		doc.Mesh = &m
		break
	}
	b, err := get(ctx, status.APIPath)
	switch {
	case err == nil:
		var s status.Snapshot
		if err := json.Unmarshal(b, &s); err != nil {
			return doc, fmt.Errorf("decode %s from %s: %w", status.APIPath, source, err)
		}
		doc.Local = &s
	case !errors.Is(err, errNotServed):
		return doc, err
	}
	if doc.Mesh == nil && doc.Local == nil {
		return doc, fmt.Errorf("%s serves no braid status (is it a braid broker, operator or agent status address?)", source)
	}
	if m := doc.Mesh; m != nil {
		if !m.Ready {
			doc.Problems = append(doc.Problems, "mesh: still reading the broker (wait a moment)")
		}
		for _, c := range m.Clusters {
			for _, p := range c.Problems {
				doc.Problems = append(doc.Problems, fmt.Sprintf("cluster %s: %s", c.Name, p))
			}
		}
		for _, s := range m.Services {
			for _, c := range s.Conflicts {
				doc.Problems = append(doc.Problems, fmt.Sprintf("service %s/%s: %s (make the clusters' services agree)", s.Namespace, s.Name, c))
			}
		}
	}
	if s := doc.Local; s != nil {
		for _, p := range s.Problems {
			doc.Problems = append(doc.Problems, fmt.Sprintf("%s %s: %s", s.Role, s.Cluster, p))
		}
	}
	doc.Healthy = len(doc.Problems) == 0
	return doc, nil
}

func statusCommand() *cobra.Command {
	var (
		url     string
		kf      kubeFlags
		output  string
		wait    bool
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the mesh: clusters, nodes and tunnels, global services, problems",
		Long: `Show the mesh as a broker or an operator sees it: clusters (ID, health,
synced kinds, sync age, nodes), each node's WireGuard peers with the age of
the latest handshake and bytes, gossip health, global services with their
backends per cluster, the tier in use and conflicts, and every problem with
a hint. Read it from a status address (--url: a broker, operator or agent)
or from a cluster's operator through the Kubernetes API (--context).

The exit status is 1 when anything is degraded. -o json and -o yaml print a
versioned document (apiVersion ` + StatusAPIVersion + `).`,
		Example: `  braid status --url http://127.0.0.1:9878      # the broker, whole mesh
  braid status --context east -o json           # east's operator
  braid status --wait --timeout 2m              # block until all is synced`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" && output != "yaml" {
				return fmt.Errorf("-o %q: want table, json or yaml", output)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			get, source := httpGetter(url), url
			if kf.context != "" || kf.kubeconfig != "" {
				k, err := kf.connect()
				if err != nil {
					return err
				}
				get, source = kubeGetter(k), "operator of context "+kf.context
			}
			doc, err := fetchDocument(ctx, get, source)
			for wait && err == nil && !doc.Healthy {
				t := time.NewTimer(500 * time.Millisecond)
				select {
				case <-ctx.Done():
					t.Stop()
				case <-t.C:
				}
				next, nerr := fetchDocument(ctx, get, source)
				if ctx.Err() != nil {
					if err := printDocument(cmd.OutOrStdout(), output, doc); err != nil {
						return err
					}
					return fmt.Errorf("not synced after %v: %s", timeout, strings.Join(doc.Problems, "; "))
				}
				doc, err = next, nerr
			}
			if err != nil {
				return fmt.Errorf("%w (is braid broker, braid-operator or braid-agent running with --status-addr there? see --url, --context)", err)
			}
			if err := printDocument(cmd.OutOrStdout(), output, doc); err != nil {
				return err
			}
			if !doc.Healthy {
				return fmt.Errorf("mesh degraded: %s", strings.Join(doc.Problems, "; "))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&url, "url", "http://127.0.0.1:9876", "status address of a broker, operator or agent")
	kf.register(cmd)
	f.StringVarP(&output, "output", "o", "table", "table, json or yaml")
	f.BoolVar(&wait, "wait", false, "wait until everything is synced and healthy (up to --timeout)")
	f.DurationVar(&timeout, "timeout", 5*time.Second, "give up after this long")
	cmd.PreRunE = func(*cobra.Command, []string) error {
		if timeout <= 0 {
			return fmt.Errorf("--timeout %v: must be positive", timeout)
		}
		if !strings.HasPrefix(url, "http://") && !strings.HasPrefix(url, "https://") {
			return fmt.Errorf("--url %q: want http://host:port", url)
		}
		return nil
	}
	_ = cmd.RegisterFlagCompletionFunc("output", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return []string{"table", "json", "yaml"}, cobra.ShellCompDirectiveNoFileComp
	})
	return cmd
}

func printDocument(w io.Writer, output string, doc Document) error {
	switch output {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(doc)
	case "yaml":
		b, err := yaml.Marshal(doc)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	if doc.Local != nil {
		PrintStatus(w, *doc.Local)
	}
	if doc.Mesh != nil {
		if doc.Local != nil {
			fmt.Fprintln(w)
		}
		printMesh(w, *doc.Mesh)
	}
	if len(doc.Problems) > 0 {
		fmt.Fprintln(w, "\nPROBLEMS")
		for _, p := range doc.Problems {
			fmt.Fprintln(w, "  "+p)
		}
	}
	return nil
}

func age(s float64) string {
	if s < 0 {
		return "never"
	}
	return (time.Duration(s * float64(time.Second))).Round(100 * time.Millisecond).String()
}

func printMesh(w io.Writer, m status.Mesh) {
	who := m.Source
	if m.View != "" {
		who += " of " + string(m.View)
	}
	fmt.Fprintf(w, "mesh as seen by the %s\n", who)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CLUSTER\tID\tHEALTH\tSYNCED\tSYNC AGE\tNODES")
	for _, c := range m.Clusters {
		var synced []string
		for k, ok := range c.Synced {
			if ok {
				synced = append(synced, string(k))
			}
		}
		slices.Sort(synced)
		health := "healthy"
		if !c.Healthy {
			health = "degraded"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%d\n", c.Name, c.ID, health, strings.Join(synced, ","), age(c.SyncAgeSeconds), len(c.Nodes))
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tAGENT\tGOSSIP\tPEER\tHANDSHAKE\tRX\tTX")
	for _, c := range m.Clusters {
		for _, n := range c.Nodes {
			agent, gossip := "no status", "-"
			if n.Agent {
				agent = "syncing"
				if n.Synced {
					agent = "synced"
				}
				if n.GossipMembers > 0 {
					gossip = fmt.Sprintf("%d/%d alive", n.GossipAlive, n.GossipMembers)
				}
			}
			if len(n.Tunnels) == 0 {
				fmt.Fprintf(tw, "%s/%s\t%s\t%s\t-\t-\t-\t-\n", c.Name, n.Name, agent, gossip)
			}
			for i, t := range n.Tunnels {
				name := string(c.Name) + "/" + n.Name
				if i > 0 {
					name, agent, gossip = "", "", ""
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\n", name, agent, gossip, t.Peer, age(t.HandshakeAgeSeconds), t.RxBytes, t.TxBytes)
			}
		}
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tAFFINITY\tBACKENDS (READY/TOTAL)\tTIER IN USE\tCONFLICTS")
	for _, s := range m.Services {
		var bs, tiers []string
		for _, b := range s.Backends {
			bs = append(bs, fmt.Sprintf("%s %d/%d", b.Cluster, b.Ready, b.Total))
			tiers = append(tiers, fmt.Sprintf("%s %s", b.Cluster, s.Tiers[b.Cluster]))
		}
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s\t%d\n", s.Namespace, s.Name, s.Affinity, strings.Join(bs, ", "), strings.Join(tiers, ", "), len(s.Conflicts))
	}
	tw.Flush()
}
