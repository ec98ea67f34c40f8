package podbench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/remotecommand"
)

// Ports the server pods listen on. The host-network pair listens on
// HostIperfPort and HostRRPort so it does not clash with the pod pair on
// the same node.
const (
	IperfPort     = 5201
	RRPort        = 5202
	HostIperfPort = 15201
	HostRRPort    = 15202
)

// Config is one run of the benchmark.
type Config struct {
	From, To Cluster
	// Namespace holds the benchmark's pods in both clusters.
	Namespace string
	// Image runs the pods: it must hold iperf3, sleep and braid (at
	// BraidPath).
	Image     string
	BraidPath string
	// Duration is how long each iperf3 run lasts; Rounds is how many
	// request/response round trips the latency test makes.
	Duration time.Duration
	Rounds   int
	// Progress, if set, receives one line per step.
	Progress func(format string, args ...any)
}

// Cluster is one side: its kubeconfig and context, and optionally the node
// to run on (empty: the first Ready node).
type Cluster struct {
	Kubeconfig, Context, Node string
}

// Result is the document `braid bench pods -o json` prints.
type Result struct {
	From     Side `json:"from"`
	To       Side `json:"to"`
	Tunnel   Path `json:"tunnel"`
	Underlay Path `json:"underlay"`
	// Ratios are tunnel / underlay.
	ThroughputRatio float64 `json:"throughputRatio"`
	LatencyP50Ratio float64 `json:"latencyP50Ratio"`
}

// Side is where one end ran.
type Side struct {
	Cluster string `json:"cluster"` // the kubeconfig context
	Node    string `json:"node"`
	NodeIP  string `json:"nodeIP"`
	PodIP   string `json:"podIP"`
}

// Path is one path's figures.
type Path struct {
	// What says which path: pod to pod over the tunnel, or node to node.
	What                 string   `json:"what"`
	ThroughputBitsPerSec float64  `json:"throughputBitsPerSec"`
	Latency              RRResult `json:"latency"`
}

type side struct {
	cfg       Cluster
	rest      *rest.Config
	client    kubernetes.Interface
	name      string
	node      string
	nodeIP    string
	pod, host *corev1.Pod
}

// Run creates the pods, measures both paths and deletes the pods.
func Run(ctx context.Context, cfg Config) (Result, error) {
	say := cfg.Progress
	if say == nil {
		say = func(string, ...any) {}
	}
	var res Result
	from, err := newSide(ctx, cfg.From)
	if err != nil {
		return res, fmt.Errorf("--from: %w", err)
	}
	to, err := newSide(ctx, cfg.To)
	if err != nil {
		return res, fmt.Errorf("--to: %w", err)
	}
	suffix := randomSuffix()
	server := func(name string, host bool, iperfPort, rrPort int) *corev1.Pod {
		p := pod(cfg, name+"-"+suffix, to.node, host)
		p.Spec.Containers = []corev1.Container{
			container(cfg, "iperf3", iperfPort, []string{"iperf3", "-s", "-p", strconv.Itoa(iperfPort)}),
			container(cfg, "rr", rrPort, []string{cfg.BraidPath, "bench", "rr-server", "--listen", ":" + strconv.Itoa(rrPort)}),
		}
		return p
	}
	client := func(name string, host bool) *corev1.Pod {
		p := pod(cfg, name+"-"+suffix, from.node, host)
		p.Spec.Containers = []corev1.Container{container(cfg, "client", 0, []string{"sleep", "86400"})}
		return p
	}
	// Whatever happens, the pods go.
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		for _, s := range []*side{from, to} {
			for _, p := range []*corev1.Pod{s.pod, s.host} {
				if p != nil {
					_ = s.client.CoreV1().Pods(cfg.Namespace).Delete(dctx, p.Name, metav1.DeleteOptions{})
				}
			}
		}
	}()
	say("creating pods: servers on %s/%s, clients on %s/%s", to.name, to.node, from.name, from.node)
	if to.pod, err = to.create(ctx, cfg.Namespace, server("braid-bench-server", false, IperfPort, RRPort)); err != nil {
		return res, err
	}
	if to.host, err = to.create(ctx, cfg.Namespace, server("braid-bench-server-host", true, HostIperfPort, HostRRPort)); err != nil {
		return res, err
	}
	if from.pod, err = from.create(ctx, cfg.Namespace, client("braid-bench-client", false)); err != nil {
		return res, err
	}
	if from.host, err = from.create(ctx, cfg.Namespace, client("braid-bench-client-host", true)); err != nil {
		return res, err
	}
	for _, s := range []*side{to, from} {
		for _, p := range []**corev1.Pod{&s.pod, &s.host} {
			if *p, err = s.waitReady(ctx, cfg.Namespace, (*p).Name); err != nil {
				return res, err
			}
		}
	}
	res.From = Side{Cluster: from.name, Node: from.node, NodeIP: from.nodeIP, PodIP: from.pod.Status.PodIP}
	res.To = Side{Cluster: to.name, Node: to.node, NodeIP: to.nodeIP, PodIP: to.pod.Status.PodIP}
	res.Tunnel.What = fmt.Sprintf("pod %s → pod %s (between clusters, over WireGuard)", res.From.PodIP, res.To.PodIP)
	res.Underlay.What = fmt.Sprintf("node %s → node %s (host network, the underlay)", res.From.NodeIP, res.To.NodeIP)

	type run struct {
		path              *Path
		pod               *corev1.Pod
		addr              string
		iperfPort, rrPort int
	}
	runs := []run{
		{&res.Tunnel, from.pod, to.pod.Status.PodIP, IperfPort, RRPort},
		{&res.Underlay, from.host, to.host.Status.PodIP, HostIperfPort, HostRRPort},
	}
	for _, r := range runs {
		say("throughput: %s", r.path.What)
		out, err := from.exec(ctx, cfg.Namespace, r.pod.Name, []string{"iperf3", "-c", r.addr, "-p", strconv.Itoa(r.iperfPort), "-t", strconv.Itoa(int(cfg.Duration.Seconds())), "-J"})
		if err != nil {
			return res, fmt.Errorf("iperf3 %s: %w", r.path.What, err)
		}
		if r.path.ThroughputBitsPerSec, err = parseIperf(out); err != nil {
			return res, fmt.Errorf("iperf3 %s: %w", r.path.What, err)
		}
	}
	for _, r := range runs {
		say("latency: %s", r.path.What)
		out, err := from.exec(ctx, cfg.Namespace, r.pod.Name, []string{cfg.BraidPath, "bench", "rr", "--addr", net.JoinHostPort(r.addr, strconv.Itoa(r.rrPort)), "--rounds", strconv.Itoa(cfg.Rounds)})
		if err != nil {
			return res, fmt.Errorf("request/response %s: %w", r.path.What, err)
		}
		if err := json.Unmarshal(out, &r.path.Latency); err != nil {
			return res, fmt.Errorf("request/response %s: decode %q: %w", r.path.What, out, err)
		}
	}
	if res.Underlay.ThroughputBitsPerSec > 0 {
		res.ThroughputRatio = res.Tunnel.ThroughputBitsPerSec / res.Underlay.ThroughputBitsPerSec
	}
	if res.Underlay.Latency.P50 > 0 {
		res.LatencyP50Ratio = float64(res.Tunnel.Latency.P50) / float64(res.Underlay.Latency.P50)
	}
	return res, nil
}

func randomSuffix() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func pod(cfg Config, name, node string, host bool) *corev1.Pod {
	zero := int64(0)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: cfg.Namespace, Labels: map[string]string{"app.kubernetes.io/name": "braid-bench"}},
		Spec: corev1.PodSpec{
			NodeName:                      node, // the scheduler is bypassed: both ends are chosen
			HostNetwork:                   host,
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: &zero,
		},
	}
}

func container(cfg Config, name string, port int, command []string) corev1.Container {
	c := corev1.Container{Name: name, Image: cfg.Image, Command: command}
	if port > 0 {
		c.Ports = []corev1.ContainerPort{{ContainerPort: int32(port), Protocol: corev1.ProtocolTCP}}
		c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(int32(port))}},
			PeriodSeconds: 1}
	}
	return c
}

func newSide(ctx context.Context, c Cluster) (*side, error) {
	rules := &clientcmd.ClientConfigLoadingRules{ExplicitPath: c.Kubeconfig}
	if c.Kubeconfig == "" {
		rules = clientcmd.NewDefaultClientConfigLoadingRules()
	}
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: c.Context})
	raw, err := cc.RawConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", c.Kubeconfig, err)
	}
	restCfg, err := cc.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", c.Kubeconfig, err)
	}
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return nil, err
	}
	s := &side{cfg: c, rest: restCfg, client: client, name: cmpOr(c.Context, raw.CurrentContext)}
	nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes of %s: %w", s.name, err)
	}
	for _, n := range nodes.Items {
		if c.Node != "" && n.Name != c.Node || c.Node == "" && (!ready(&n) || n.Spec.Unschedulable) {
			continue
		}
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				s.node, s.nodeIP = n.Name, a.Address
				return s, nil
			}
		}
	}
	if c.Node != "" {
		return nil, fmt.Errorf("cluster %s: node %s not found or without an InternalIP", s.name, c.Node)
	}
	return nil, fmt.Errorf("cluster %s: no Ready, schedulable node with an InternalIP", s.name)
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func ready(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func (s *side) create(ctx context.Context, ns string, p *corev1.Pod) (*corev1.Pod, error) {
	got, err := s.client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		return p, fmt.Errorf("cluster %s: create pod %s: %w", s.name, p.Name, err)
	}
	return got, nil
}

// waitReady polls the pod until it is Ready with an IP, or fails.
func (s *side) waitReady(ctx context.Context, ns, name string) (*corev1.Pod, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	var last error
	for {
		p, err := s.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		switch {
		case err != nil && !apierrors.IsNotFound(err):
			last = err
		case err != nil:
			last = fmt.Errorf("not found")
		case p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded:
			return nil, fmt.Errorf("cluster %s: pod %s ended (%s): does image %s hold iperf3, sleep and braid? %s", s.name, name, p.Status.Phase, p.Spec.Containers[0].Image, p.Status.Message)
		case p.Status.PodIP == "":
			last = fmt.Errorf("no IP yet")
		default:
			if podReady(p) {
				return p, nil
			}
			last = fmt.Errorf("not Ready yet")
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("cluster %s: pod %s: %w (last: %v)", s.name, name, ctx.Err(), last)
		case <-t.C:
		}
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// exec runs command in the pod's first container and returns its stdout.
func (s *side) exec(ctx context.Context, ns, pod string, command []string) ([]byte, error) {
	req := s.client.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Command: command, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	ws, err := remotecommand.NewWebSocketExecutor(s.rest, http.MethodGet, req.URL().String())
	if err != nil {
		return nil, err
	}
	spdy, err := remotecommand.NewSPDYExecutor(s.rest, http.MethodPost, req.URL())
	if err != nil {
		return nil, err
	}
	exec, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool { return true })
	if err != nil {
		return nil, err
	}
	var stdout, stderr bytes.Buffer
	if err := exec.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &stdout, Stderr: &stderr}); err != nil {
		return stdout.Bytes(), fmt.Errorf("cluster %s: exec %s in pod %s: %w: %s", s.name, strings.Join(command, " "), pod, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// parseIperf returns the received throughput of an `iperf3 -J` run.
func parseIperf(out []byte) (float64, error) {
	var doc struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return 0, fmt.Errorf("decode iperf3 -J output: %w", err)
	}
	if doc.Error != "" {
		return 0, errors.New(doc.Error)
	}
	if doc.End.SumReceived.BitsPerSecond <= 0 {
		return 0, errors.New("iperf3 reported no received throughput")
	}
	return doc.End.SumReceived.BitsPerSecond, nil
}

// Print writes res as a table.
func Print(w io.Writer, res Result) {
	fmt.Fprintf(w, "from %s node %s (%s) to %s node %s (%s)\n\n", res.From.Cluster, res.From.Node, res.From.NodeIP, res.To.Cluster, res.To.Node, res.To.NodeIP)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PATH\tTHROUGHPUT\tRR P50\tRR P90\tRR P99")
	for _, p := range []Path{res.Tunnel, res.Underlay} {
		l := p.Latency
		fmt.Fprintf(tw, "%s\t%s\t%v\t%v\t%v\n", p.What, bits(p.ThroughputBitsPerSec), l.P50.Round(time.Microsecond), l.P90.Round(time.Microsecond), l.P99.Round(time.Microsecond))
	}
	tw.Flush()
	fmt.Fprintf(w, "\ntunnel / underlay: throughput %.2f, request/response p50 %.2f\n", res.ThroughputRatio, res.LatencyP50Ratio)
}

func bits(b float64) string {
	switch {
	case b >= 1e9:
		return fmt.Sprintf("%.2f Gbit/s", b/1e9)
	default:
		return fmt.Sprintf("%.0f Mbit/s", b/1e6)
	}
}

// Commands returns `braid bench pods` and the hidden rr and rr-server it
// runs in the pods, to be added under `braid bench`.
func Commands() []*cobra.Command {
	return []*cobra.Command{podsCommand(), rrCommand(), rrServerCommand()}
}

func podsCommand() *cobra.Command {
	var (
		cfg    Config
		output string
	)
	cmd := &cobra.Command{
		Use:   "pods",
		Short: "Throughput and latency between pods of two clusters over the tunnel, beside the same nodes' underlay",
		Long: `pods measures the data path between two clusters, like subctl benchmark,
beside its raw baseline in the same run. It is a subcommand of braid bench
(whose other subcommands measure the control plane).

It runs, with nodeName set (no scheduler involved):
  in --to's cluster, on one node: a server pod (iperf3 -s, and braid bench
  rr-server) and the same servers in a hostNetwork pod;
  in --from's cluster, on one node: a client pod and a hostNetwork client.
Then from the client pod to the server pod's IP (pod to pod between the
clusters: over WireGuard), and from the host client to the server node's
IP (the underlay, node to node): iperf3 for --duration, and --rounds
request/response round trips of 64 bytes on one TCP connection (braid
bench rr, like netperf TCP_RR). It prints both paths and their ratios,
then deletes the pods.

The image must hold iperf3, sleep and braid (at --braid-path). In the lab
(braid-lab) pods run programs of the machine, so any image name works with
--braid-path set to this braid.`,
		Example: `  braid bench pods --from-kubeconfig east.kubeconfig --to-kubeconfig west.kubeconfig
  braid bench pods --from-context east --to-context west -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("-o %q: want table or json", output)
			}
			if cfg.Duration < time.Second {
				return fmt.Errorf("--duration %v: want at least 1s", cfg.Duration)
			}
			if cfg.Rounds < 1 {
				return fmt.Errorf("--rounds %d: want at least 1", cfg.Rounds)
			}
			cfg.Progress = func(format string, args ...any) { fmt.Fprintf(cmd.ErrOrStderr(), format+"\n", args...) }
			res, err := Run(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(res)
			}
			Print(cmd.OutOrStdout(), res)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.From.Kubeconfig, "from-kubeconfig", "", "kubeconfig of the client's cluster (default: $KUBECONFIG or ~/.kube/config)")
	f.StringVar(&cfg.From.Context, "from-context", "", "context of the client's cluster")
	f.StringVar(&cfg.From.Node, "from-node", "", "node for the clients (default: the first Ready one)")
	f.StringVar(&cfg.To.Kubeconfig, "to-kubeconfig", "", "kubeconfig of the server's cluster")
	f.StringVar(&cfg.To.Context, "to-context", "", "context of the server's cluster")
	f.StringVar(&cfg.To.Node, "to-node", "", "node for the servers (default: the first Ready one)")
	f.StringVar(&cfg.Namespace, "namespace", "default", "namespace of the benchmark's pods in both clusters")
	f.StringVar(&cfg.Image, "image", "ghcr.io/braidmesh/braid:latest", "image of the benchmark's pods: iperf3, sleep and braid")
	f.StringVar(&cfg.BraidPath, "braid-path", "braid", "braid in the image")
	f.DurationVar(&cfg.Duration, "duration", 5*time.Second, "length of each iperf3 run")
	f.IntVar(&cfg.Rounds, "rounds", 2000, "request/response round trips per path")
	f.StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}
