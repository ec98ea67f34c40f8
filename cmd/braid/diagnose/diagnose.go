package diagnose

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/clustermesh/status"
	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/kvstore/etcd"
	"github.com/braidmesh/braid/reconcile"
)

// Defaults of the command's flags.
const (
	DefaultAgentPort  = 9877
	DefaultGossipPort = 7947 // clustermesh/gossip.DefaultPort
	DefaultTimeout    = 20 * time.Second
)

// Config is what Run reads.
type Config struct {
	// JoinFile is a cluster's join bundle: diagnose reads the mesh with
	// its credentials.
	JoinFile string
	// AgentURLs, if set, are the agents' status URLs; otherwise each
	// node's agent is read at http://<its first IP>:AgentPort.
	AgentURLs []string
	AgentPort int
	// NoAgents skips every check that needs the agents.
	NoAgents   bool
	GossipPort int
}

// Report is the document `braid diagnose -o json` prints.
type Report struct {
	APIVersion string        `json:"apiVersion"`
	Kind       string        `json:"kind"`
	Time       time.Time     `json:"time"`
	Cluster    string        `json:"cluster,omitempty"`
	Clusters   int           `json:"clusters"`
	Nodes      int           `json:"nodes"`
	Agents     int           `json:"agents"`
	Checks     []CheckResult `json:"checks"`
	Findings   []Finding     `json:"findings"`
	Errors     int           `json:"errors"`
	Warnings   int           `json:"warnings"`
}

// CheckResult is one check's outcome: ok, warning, error or skipped.
type CheckResult struct {
	Name   string `json:"name"`
	Doc    string `json:"doc"`
	Result string `json:"result"`
	// Skipped says why the check did not run.
	Skipped string `json:"skipped,omitempty"`
}

// Report identification.
const (
	APIVersion = "braid.dev/v1"
	Kind       = "DiagnoseReport"
)

// Run gathers the mesh and the agents' status and returns the report.
// Problems found are findings, never errors; it returns an error only for
// a usage problem (an unreadable bundle).
func Run(ctx context.Context, cfg Config, client *http.Client) (Report, error) {
	now := time.Now()
	rep := Report{APIVersion: APIVersion, Kind: Kind, Time: now, Findings: []Finding{}}
	skipped := map[string]string{}
	creds, err := join.LoadCredentials(cfg.JoinFile, nil)
	if err != nil {
		return rep, fmt.Errorf("diagnose: %w", err)
	}
	rep.Cluster = string(creds.Cluster)
	var findings []Finding
	certs, f := bundleCerts(creds)
	findings = append(findings, f...)
	serverCerts, f := brokerCerts(ctx, creds)
	certs = append(certs, serverCerts...)
	findings = append(findings, f...)
	findings = append(findings, CheckCertificatesOf(certs, now)...)

	mesh, f, err := readMesh(ctx, creds)
	findings = append(findings, f...)
	if err != nil {
		findings = append(findings, brokerFinding(creds, err))
		for _, c := range []string{CheckRanges, CheckValidation, CheckAgents, CheckMTU, CheckWireGuard, CheckGossip, CheckClock, CheckMaps, CheckStrict} {
			skipped[c] = "the broker could not be read"
		}
	} else {
		findings = append(findings, CheckRangesOf(mesh)...)
	}
	rep.Clusters = clusterCount(mesh)
	rep.Nodes = len(mesh.Nodes)

	var views []AgentView
	switch {
	case err != nil:
	case cfg.NoAgents:
		for _, c := range []string{CheckAgents, CheckMTU, CheckWireGuard, CheckGossip, CheckClock, CheckMaps, CheckStrict} {
			skipped[c] = "--no-agents"
		}
		skipped[CheckValidation] = "--no-agents (validation is what the agents report)"
	default:
		views = readAgents(ctx, client, agentTargets(cfg, mesh.Nodes))
		rep.Agents = len(ok(views))
		if len(views) == 0 {
			for _, c := range []string{CheckAgents, CheckMTU, CheckWireGuard, CheckGossip, CheckClock, CheckMaps, CheckStrict, CheckValidation} {
				skipped[c] = "the mesh has no nodes and no --agent-url was given"
			}
		}
		findings = append(findings, CheckAgentsOf(views)...)
		findings = append(findings, CheckValidationOf(views)...)
		findings = append(findings, CheckMTUOf(views)...)
		findings = append(findings, CheckWireGuardOf(views, mesh.Nodes)...)
		findings = append(findings, CheckGossipOf(views, mesh.Nodes, cfg.GossipPort)...)
		findings = append(findings, CheckClockOf(views)...)
		findings = append(findings, CheckMapsOf(views)...)
		findings = append(findings, CheckStrictOf(views)...)
		if rep.Agents > 0 && !slices.ContainsFunc(ok(views), func(v AgentView) bool { return v.Status.Tunnel != nil }) {
			for _, c := range []string{CheckMTU, CheckWireGuard, CheckStrict} {
				skipped[c] = "no agent reports a WireGuard device (--wireguard=false, or an agent older than this braid)"
			}
		}
	}
	rep.add(findings, skipped)
	return rep, nil
}

// add sorts findings into the report by check order and sets each
// check's result.
func (r *Report) add(findings []Finding, skipped map[string]string) {
	order := map[string]int{}
	for i, c := range Checks {
		order[c.Name] = i
	}
	slices.SortStableFunc(findings, func(a, b Finding) int { return order[a.Check] - order[b.Check] })
	r.Findings = append(r.Findings, findings...)
	for _, c := range Checks {
		res := CheckResult{Name: c.Name, Doc: c.Doc, Result: "ok"}
		if why, ok := skipped[c.Name]; ok {
			res.Result, res.Skipped = "skipped", why
		}
		for _, f := range findings {
			if f.Check != c.Name {
				continue
			}
			if f.Severity == SeverityError {
				res.Result = "error"
			} else if res.Result != "error" {
				res.Result = "warning"
			}
		}
		r.Checks = append(r.Checks, res)
	}
	for _, f := range findings {
		if f.Severity == SeverityError {
			r.Errors++
		} else {
			r.Warnings++
		}
	}
}

func clusterCount(m Mesh) int {
	names := map[clustermesh.ClusterName]bool{}
	for _, g := range m.Grants {
		names[g.Name] = true
	}
	for _, c := range m.Configs {
		names[c.Name] = true
	}
	return len(names)
}

// bundleCerts returns the CA certificates of the bundle.
func bundleCerts(c join.Credentials) ([]Cert, []Finding) {
	var certs []Cert
	rest := c.CACertPEM
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		x, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return certs, []Finding{{Check: CheckCertificates, Severity: SeverityError,
				What:  fmt.Sprintf("the join bundle's CA certificate does not parse: %v", err),
				Where: []string{"join bundle of cluster " + string(c.Cluster)},
				Fix:   "re-issue the bundle with braid broker add-cluster"}}
		}
		certs = append(certs, Cert{What: "broker CA " + strconv.Quote(x.Subject.CommonName) + " in the join bundle",
			Where: "join bundle of cluster " + string(c.Cluster), NotAfter: x.NotAfter})
	}
	return certs, nil
}

// brokerCerts dials each broker endpoint over TLS, verifying it against
// the bundle's CA, and returns the certificates it presents.
func brokerCerts(ctx context.Context, c join.Credentials) ([]Cert, []Finding) {
	var (
		certs    []Cert
		findings []Finding
	)
	for _, ep := range c.Endpoints {
		u, err := url.Parse(ep)
		if err != nil || u.Host == "" {
			findings = append(findings, Finding{Check: CheckBroker, Severity: SeverityError,
				What:  fmt.Sprintf("broker endpoint %q in the join bundle is not a URL", ep),
				Where: []string{"join bundle of cluster " + string(c.Cluster)},
				Fix:   "re-issue the bundle with braid broker add-cluster --etcd-endpoints https://HOST:PORT"})
			continue
		}
		tlsCfg, err := c.TLSConfig()
		if err != nil {
			findings = append(findings, Finding{Check: CheckBroker, Severity: SeverityError, What: err.Error(),
				Where: []string{"join bundle of cluster " + string(c.Cluster)}, Fix: "re-issue the bundle with braid broker add-cluster"})
			return nil, findings
		}
		tlsCfg.ServerName = u.Hostname()
		d := tls.Dialer{Config: tlsCfg} // bounded by ctx (--timeout)
		conn, err := d.DialContext(ctx, "tcp", u.Host)
		if err != nil {
			fix := "check the broker runs and the network path to " + u.Host + " is open (TCP)"
			var verr *tls.CertificateVerificationError
			if errors.As(err, &verr) {
				fix = "the broker's certificate is not signed by the bundle's CA (or not for this address): re-issue the bundle with braid broker add-cluster against this broker"
			}
			findings = append(findings, Finding{Check: CheckBroker, Severity: SeverityError,
				What: fmt.Sprintf("TLS to broker endpoint %s: %v", ep, err), Where: []string{"broker " + ep}, Fix: fix})
			continue
		}
		for i, x := range conn.(*tls.Conn).ConnectionState().PeerCertificates {
			what := "broker certificate served at " + ep
			if i > 0 {
				what = "certificate " + strconv.Quote(x.Subject.CommonName) + " in the chain served at " + ep
			}
			certs = append(certs, Cert{What: what, Where: "broker " + ep, NotAfter: x.NotAfter})
		}
		conn.Close()
	}
	return certs, findings
}

// brokerFinding explains why the mesh could not be read.
func brokerFinding(c join.Credentials, err error) Finding {
	msg := err.Error()
	fix := "check the broker runs and answers at " + strings.Join(c.Endpoints, ", ")
	if strings.Contains(msg, "authentication failed") || strings.Contains(msg, "invalid auth token") || strings.Contains(msg, "user name not found") {
		fix = fmt.Sprintf("etcd refused the credentials of cluster %s: it was removed from the mesh or its credentials replaced; re-issue its bundle with braid broker add-cluster %s", c.Cluster, c.Cluster)
	} else if strings.Contains(msg, "permission denied") {
		fix = fmt.Sprintf("cluster %s's user may not read the mesh: its role was changed by hand; re-issue its bundle with braid broker add-cluster %s", c.Cluster, c.Cluster)
	}
	return Finding{Check: CheckBroker, Severity: SeverityError,
		What:  fmt.Sprintf("read the mesh from the broker (%s): %v", c, err),
		Where: []string{"broker " + strings.Join(c.Endpoints, ",")}, Fix: fix}
}

// connect opens the store, retrying with backoff while the broker does not
// answer in time (a loaded broker may take longer than one dial allows)
// until ctx is done; a refusal of the credentials is returned at once.
func connect(ctx context.Context, creds join.Credentials) (*etcd.Store, error) {
	retry := reconcile.NewBackoff(100*time.Millisecond, 2*time.Second)
	for {
		store, err := join.Connect(ctx, creds, nil)
		if err == nil || refused(err) {
			return store, err
		}
		if !reconcile.Wait(ctx, retry.Next()) {
			return nil, err
		}
	}
}

// refused reports whether err says the broker refused the credentials.
func refused(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "authentication failed") || strings.Contains(msg, "invalid auth token") ||
		strings.Contains(msg, "user name not found") || strings.Contains(msg, "permission denied") ||
		strings.Contains(msg, "certificate")
}

// readMesh reads grants, cluster configs and nodes. Entries that fail
// validation are findings.
func readMesh(ctx context.Context, creds join.Credentials) (Mesh, []Finding, error) {
	var m Mesh
	store, err := connect(ctx, creds)
	if err != nil {
		return m, nil, err
	}
	defer store.Close()
	list := func(prefix string) ([]kvstore.KeyValue, error) {
		kvs, _, err := store.List(ctx, prefix)
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", prefix, err)
		}
		return kvs, nil
	}
	var findings []Finding
	bad := func(what string, err error) {
		findings = append(findings, Finding{Check: CheckValidation, Severity: SeverityWarning,
			What: fmt.Sprintf("%s is invalid: %v", what, err), Where: []string{"broker"},
			Fix: "it was written by hand or by an incompatible braid; remove the key as root, or re-add the cluster with braid broker add-cluster"})
	}
	kvs, err := list(clustermesh.GrantsPrefix)
	if err != nil {
		return m, nil, err
	}
	owners := map[clustermesh.ClusterName]clustermesh.ClusterConfig{}
	for _, kv := range kvs {
		g, err := clustermesh.DecodeGrant(kv.Key, kv.Value)
		if err != nil {
			bad("grant "+kv.Key, err)
			continue
		}
		m.Grants = append(m.Grants, clustermesh.StoredGrant{Grant: g, CreateRevision: kv.CreateRevision})
		owners[g.Name] = g.Config(clustermesh.Capabilities{})
	}
	if kvs, err = list(clustermesh.ClustersPrefix); err != nil {
		return m, nil, err
	}
	for _, kv := range kvs {
		c, err := clustermesh.DecodeClusterConfig(kv.Key, kv.Value)
		if err != nil {
			bad("cluster config "+kv.Key, err)
			continue
		}
		m.Configs = append(m.Configs, c)
		if _, ok := owners[c.Name]; !ok {
			owners[c.Name] = c
		}
	}
	if kvs, err = list(clustermesh.Root + string(clustermesh.KindNodes) + "/"); err != nil {
		return m, nil, err
	}
	for _, kv := range kvs {
		pk, err := clustermesh.ParseKey(kv.Key)
		if err != nil {
			continue
		}
		owner, ok := owners[pk.Cluster]
		if !ok {
			continue // a cluster without grant or config: reported as such by the agents
		}
		n, err := clustermesh.DecodeNode(&owner, kv.Key, kv.Value)
		if err != nil {
			continue // agents count and show rejected entries
		}
		m.Nodes = append(m.Nodes, n)
	}
	slices.SortFunc(m.Nodes, func(a, b clustermesh.Node) int {
		return strings.Compare(string(a.Cluster)+"/"+a.Name, string(b.Cluster)+"/"+b.Name)
	})
	return m, findings, nil
}

type target struct {
	cluster clustermesh.ClusterName
	node    string
	url     string
}

// agentTargets lists where to read each agent.
func agentTargets(cfg Config, nodes []clustermesh.Node) []target {
	var out []target
	if len(cfg.AgentURLs) > 0 {
		for _, u := range cfg.AgentURLs {
			out = append(out, target{url: strings.TrimSuffix(u, "/")})
		}
		return out
	}
	for _, n := range nodes {
		if len(n.IPs) == 0 {
			continue
		}
		out = append(out, target{cluster: n.Cluster, node: n.Name,
			url: "http://" + net.JoinHostPort(n.IPs[0].Unmap().String(), strconv.Itoa(cfg.AgentPort))})
	}
	return out
}

// maxParallelReads bounds the agents read at once.
const maxParallelReads = 32

// readAgents fetches every agent's status, maxParallelReads at a time.
func readAgents(ctx context.Context, client *http.Client, targets []target) []AgentView {
	views := make([]AgentView, len(targets))
	var wg sync.WaitGroup
	sem := make(chan struct{}, maxParallelReads)
	for i, t := range targets {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			v := AgentView{Cluster: t.cluster, Node: t.node, URL: t.url, Sent: time.Now()}
			v.Status, v.Err = status.Fetch(ctx, client, t.url)
			v.Received = time.Now()
			if v.Err == nil {
				switch {
				case v.Status.Role != "agent":
					v.Err = fmt.Errorf("%s serves the status of a %s, not an agent", t.url, v.Status.Role)
				case t.node != "" && (v.Status.Cluster != t.cluster || v.Status.Node != t.node):
					v.Err = fmt.Errorf("%s serves the agent of node %s/%s", t.url, v.Status.Cluster, v.Status.Node)
				}
			}
			if v.Err == nil || t.node == "" {
				v.Cluster, v.Node = v.Status.Cluster, v.Status.Node
			}
			if v.Node == "" {
				v.Node = t.url
			}
			views[i] = v
		})
	}
	wg.Wait()
	return views
}

// Command returns `braid diagnose`.
func Command() *cobra.Command {
	var (
		cfg     Config
		output  string
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "diagnose",
		Short: "Find what stops the mesh from working, where, and how to fix it",
		Long: `diagnose reads the mesh from the broker with a cluster's join bundle and
every node's agent status, and checks:

` + checkList() + `
Each finding says what is wrong, where (naming every cluster and node
involved) and how to fix it. The exit status is 1 when any finding is an
error, 0 otherwise (warnings included).

Agents are read at http://<node IP>:<--agent-port> for every node the
mesh publishes: run braid-agent with --status-addr=<node IP>:9877 (the
default, 127.0.0.1, is not reachable from elsewhere), or list the agents'
status URLs with --agent-url (reachable through kubectl port-forward).
WireGuard reachability is judged by the agents' traffic counters: with the
agents' 25 s keepalive, a blocked port shows within a minute.`,
		Example: `  # every check, as a table
  braid diagnose --join east.join.json

  # as JSON, for scripts (the exit status still says whether errors were found)
  braid diagnose --join east.join.json -o json

  # agents reached through port-forwards
  braid diagnose --join east.join.json --agent-url http://127.0.0.1:19877 --agent-url http://127.0.0.1:29877`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.JoinFile == "" {
				return errors.New("--join: the cluster's join bundle is needed to read the mesh (braid broker add-cluster writes it)")
			}
			if output != "table" && output != "json" {
				return fmt.Errorf("-o %q: want table or json", output)
			}
			if cfg.AgentPort < 1 || cfg.AgentPort > 65535 {
				return fmt.Errorf("--agent-port %d: must be in 1..65535", cfg.AgentPort)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			client := &http.Client{}
			defer client.CloseIdleConnections()
			rep, err := Run(ctx, cfg, client)
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if err := enc.Encode(rep); err != nil {
					return err
				}
			} else {
				Print(cmd.OutOrStdout(), rep)
			}
			if rep.Errors > 0 {
				return fmt.Errorf("%d errors and %d warnings found", rep.Errors, rep.Warnings)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.JoinFile, "join", "", "a cluster's join bundle: diagnose reads the mesh with its credentials")
	f.StringArrayVar(&cfg.AgentURLs, "agent-url", nil, "an agent's status URL (repeatable); default: every node's IP at --agent-port")
	f.IntVar(&cfg.AgentPort, "agent-port", DefaultAgentPort, "the agents' status port on their node IPs")
	f.BoolVar(&cfg.NoAgents, "no-agents", false, "check only what the broker shows")
	f.IntVar(&cfg.GossipPort, "gossip-port", DefaultGossipPort, "the mesh's gossip port, named in fixes")
	f.StringVarP(&output, "output", "o", "table", "table or json")
	f.DurationVar(&timeout, "timeout", DefaultTimeout, "give up after this long")
	return cmd
}

func checkList() string {
	var b strings.Builder
	for _, c := range Checks {
		fmt.Fprintf(&b, "  %-15s %s\n", c.Name, c.Doc)
	}
	return b.String()
}

// Print writes rep for a terminal: one line per check, then each finding.
func Print(w io.Writer, rep Report) {
	fmt.Fprintf(w, "mesh of %d clusters, %d nodes, %d agents read (as cluster %s)\n\n", rep.Clusters, rep.Nodes, rep.Agents, rep.Cluster)
	for _, c := range rep.Checks {
		mark := map[string]string{"ok": "✔", "warning": "!", "error": "✖", "skipped": "-"}[c.Result]
		line := fmt.Sprintf("%s %-15s %s", mark, c.Name, c.Result)
		if c.Skipped != "" {
			line += ": " + c.Skipped
		}
		fmt.Fprintln(w, line)
	}
	for _, f := range rep.Findings {
		fmt.Fprintf(w, "\n%s [%s] %s\n", strings.ToUpper(string(f.Severity)), f.Check, f.What)
		if len(f.Where) > 0 {
			fmt.Fprintf(w, "  where: %s\n", strings.Join(f.Where, ", "))
		}
		fmt.Fprintf(w, "  fix:   %s\n", f.Fix)
	}
	fmt.Fprintf(w, "\n%d errors, %d warnings\n", rep.Errors, rep.Warnings)
}
