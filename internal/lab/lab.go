package lab

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/broker"
	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/clustermesh/relay"
	"github.com/braidmesh/braid/clustermesh/status"
	"github.com/braidmesh/braid/internal/kubelab"
	"github.com/braidmesh/braid/internal/lab/controlplane"
)

// DefaultDir is where runs keep their state when Config.Dir is empty.
const DefaultDir = "/run/braid-lab"

// ReadyTimeout bounds how long Up waits for the whole lab to be ready after
// its processes started.
const ReadyTimeout = 3 * time.Minute

// Config describes a lab.
type Config struct {
	Clusters, Nodes int
	// Dir holds one directory per run (record, PKI, kubeconfigs, logs);
	// empty means DefaultDir.
	Dir string
	// KubeBin holds the Kubernetes binaries; empty means kubelab.BinDir().
	KubeBin string
	// Bin holds braid-agent, braid-operator and braid-lab (whose `node`
	// command plays the kubelet); empty means the directory of the running
	// executable.
	Bin string
	// LeaseTTL is the operators' --lease-ttl; zero keeps their default.
	LeaseTTL time.Duration
	// StrictEncryption names the clusters whose operators run with
	// --strict-encryption: their cluster config asks every agent to drop
	// plaintext to remote pods.
	StrictEncryption []clustermesh.ClusterName
	// Relay names the clusters whose operators run a relay
	// (--relay-listen) and whose agents read the mesh from it (--relay)
	// instead of from the broker.
	Relay []clustermesh.ClusterName
	// Spare clusters are planned beside Clusters (names, IDs, ranges, node
	// namespaces, all in the run's record) but not started: AddCluster
	// starts one without Braid, for a test that joins it to the running
	// mesh as a user would.
	Spare int
	// CoreDNS, if set, is a coredns binary (kubelab.CoreDNS): each cluster
	// then runs it in its first node's network namespace on port 53 for
	// cluster.local and clusterset.local (the kubernetes plugin's
	// multicluster option), and its pods resolve through it. Empty: no
	// cluster DNS, pods use the machine's resolv.conf.
	CoreDNS string
	// Progress, if set, receives one line per step.
	Progress func(format string, args ...any)
	// Log receives the embedded broker's logs; nil discards them.
	Log *slog.Logger
}

// Lab is a running lab: the underlay, the broker, the clusters and their
// nodes. Its methods are safe for concurrent use.
type Lab struct {
	// Run is the run's ID; every name the lab creates contains it.
	Run string
	// Dir is the run's directory.
	Dir string
	// HostIP is the host's address on the underlay, where the apiservers,
	// the broker and the operators' status pages listen.
	HostIP netip.Addr
	// Broker is the broker's client URL; BrokerJoin its join endpoint
	// (`braid token create`, `braid join`); BrokerStatus its status page
	// and JSON API, on loopback.
	Broker, BrokerJoin, BrokerStatus string
	// KubeBin holds kubectl and the other Kubernetes binaries.
	KubeBin  string
	Clusters []*Cluster

	cfg      Config
	plan     *Plan
	etcd     *controlplane.Etcd
	failures chan error
	// closing ends when Close starts: restarts waiting on it give up.
	closing     context.Context
	stopClosing context.CancelFunc

	mu         sync.Mutex
	broker     *broker.Broker // nil while stopped
	brokerStop func()
	closed     bool
	exits      []string   // unexpected exits of lab processes, oldest first
	outside    []*Outside // outside hosts added (AddOutside); nil while being added
}

// Cluster is one lab cluster.
type Cluster struct {
	Name                 clustermesh.ClusterName
	ID                   clustermesh.ClusterID
	PodCIDR, ServiceCIDR netip.Prefix
	// KubeServiceCIDR is the apiserver's --service-cluster-ip-range, the
	// first half of ServiceCIDR; ClusterSetCIDR, the second half, is where
	// the operator allocates ClusterSetIPs. The broker grants ServiceCIDR.
	KubeServiceCIDR, ClusterSetCIDR netip.Prefix
	// DNS is the cluster's CoreDNS address (port 53) when Config.CoreDNS
	// is set.
	DNS netip.Addr
	// Kubeconfig is the admin kubeconfig; RESTConfig and Client act as the
	// admin too.
	Kubeconfig string
	RESTConfig *rest.Config
	Client     kubernetes.Interface
	// StatusURL is the operator's status page.
	StatusURL string
	// Join is the cluster's join bundle.
	Join  string
	Nodes []*Node

	lab      *Lab
	plan     *ClusterPlan
	cp       *controlplane.Cluster
	operator *managed
	coredns  *managed
}

// Node is one lab node: a network namespace on the underlay with a lab node
// (the kubelet stand-in) and a braid-agent in it.
type Node struct {
	Name, Zone string
	IP         netip.Addr
	// Netns is the name of the node's network namespace (/run/netns/<Netns>).
	Netns string
	// Cgroup is the node's cgroup: the agent's socket load balancer is
	// attached to it and pods run below it.
	Cgroup string
	// PinDir is where the agent pins its BPF maps and links.
	PinDir string
	// WireGuard is the agent's WireGuard device, in Netns.
	WireGuard string
	// StatusURL is the agent's status page.
	StatusURL string
	Cluster   *Cluster

	plan   *NodePlan
	files  controlplane.NodeFiles
	agent  *managed
	kubelt *managed
}

// Up cleans up after killed runs in cfg.Dir, then builds a lab and returns
// once every node is Ready and every operator and agent has synced every
// other cluster. On error (or ctx done) it tears down what it built.
func Up(ctx context.Context, cfg Config) (_ *Lab, err error) {
	if cfg.Dir == "" {
		cfg.Dir = DefaultDir
	}
	if cfg.Progress == nil {
		cfg.Progress = func(string, ...any) {}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.KubeBin == "" {
		if cfg.KubeBin, err = kubelab.BinDir(); err != nil {
			return nil, fmt.Errorf("lab up: %w (run `make kube-tools`)", err)
		}
	}
	if cfg.Bin == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("lab up: %w", err)
		}
		cfg.Bin = filepath.Dir(exe)
	}
	for _, b := range []string{"braid-agent", "braid-operator", "braid-lab"} {
		if _, err := os.Stat(filepath.Join(cfg.Bin, b)); err != nil {
			return nil, fmt.Errorf("lab up: %s not in %s (run `make build`): %w", b, cfg.Bin, err)
		}
	}
	if err := Cleanup(cfg.Dir, cfg.Progress); err != nil {
		return nil, fmt.Errorf("lab up: clean up killed runs: %w", err)
	}
	cg, err := cgroup2Root()
	if err != nil {
		return nil, fmt.Errorf("lab up: %w", err)
	}
	if cfg.Spare < 0 || cfg.Clusters < 1 {
		return nil, fmt.Errorf("lab up: %d clusters and %d spare: want at least one cluster and no negative spare", cfg.Clusters, cfg.Spare)
	}
	p, err := newPlan(newRunID(), cfg.Dir, cg, cfg.Clusters+cfg.Spare, cfg.Nodes)
	if err != nil {
		return nil, fmt.Errorf("lab up: %w", err)
	}
	statusPort, err := freeLoopbackPort()
	if err != nil {
		return nil, fmt.Errorf("lab up: broker status port: %w", err)
	}
	if err := writeRecord(p); err != nil {
		return nil, err
	}
	l := &Lab{Run: p.Run, Dir: p.Dir, HostIP: p.HostIP, KubeBin: cfg.KubeBin, cfg: cfg, plan: p, failures: make(chan error, 1),
		Broker:       "https://" + net.JoinHostPort(p.HostIP.String(), strconv.Itoa(BrokerPort)),
		BrokerJoin:   "https://" + net.JoinHostPort(p.HostIP.String(), strconv.Itoa(BrokerJoinPort)),
		BrokerStatus: "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(statusPort))}
	l.closing, l.stopClosing = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			l.Close()
			err = fmt.Errorf("lab up: %w", err)
		}
	}()
	if err := l.build(ctx); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *Lab) build(ctx context.Context) error {
	p, say := l.plan, l.cfg.Progress
	say("run %s in %s: %d clusters × %d nodes, %d spare", p.Run, p.Dir, l.cfg.Clusters, len(p.Clusters[0].Nodes), l.cfg.Spare)
	if err := createBridge(p); err != nil {
		return err
	}
	say("underlay %s on bridge %s (host %s); no route leaves the machine", p.Underlay, p.Bridge, p.HostIP)
	if err := os.MkdirAll(p.CgroupRoot, 0o755); err != nil {
		return fmt.Errorf("create cgroup %s: %w", p.CgroupRoot, err)
	}
	var err error
	if l.etcd, err = controlplane.StartEtcd(ctx, l.cfg.KubeBin, filepath.Join(p.Dir, "etcd")); err != nil {
		return err
	}
	if err := l.StartBroker(ctx); err != nil {
		return err
	}
	say("broker: embedded etcd with TLS and authentication at %s", l.Broker)

	// Control planes start in parallel: each is mostly waiting.
	for i := range l.cfg.Clusters {
		l.Clusters = append(l.Clusters, l.newCluster(i))
	}
	errs := make([]error, len(l.Clusters))
	var wg sync.WaitGroup
	for i, c := range l.Clusters {
		wg.Go(func() { errs[i] = l.startControlPlane(ctx, c, i) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for _, c := range l.Clusters {
		creds, err := l.addCluster(ctx, clustermesh.Grant{Name: c.Name, ID: c.ID,
			PodCIDRs: []netip.Prefix{c.PodCIDR}, ServiceCIDRs: []netip.Prefix{c.ServiceCIDR}})
		if err != nil {
			return err
		}
		if err := creds.Save(c.Join); err != nil {
			return err
		}
		c.operator = l.newManaged(string(c.Name)+"/braid-operator", filepath.Join(c.plan.Dir, "operator.log"), c.operatorArgs)
		if err := c.operator.start(); err != nil {
			return err
		}
		if err := c.waitRelay(ctx); err != nil {
			return err
		}
		for j := range c.plan.Nodes {
			n := c.newNode(j)
			if err := l.startNode(n); err != nil {
				return err
			}
			if err := n.startAgent(); err != nil {
				return err
			}
		}
		if l.cfg.CoreDNS != "" {
			if err := c.startCoreDNS(ctx); err != nil {
				return err
			}
			say("cluster %s: CoreDNS on %s:53 (cluster.local, clusterset.local)", c.Name, c.DNS)
		}
		say("cluster %s: braid-operator (status %s), %d nodes with a lab node and a braid-agent each", c.Name, c.StatusURL, len(c.Nodes))
	}
	return l.WaitReady(ctx)
}

func (l *Lab) newCluster(i int) *Cluster {
	cp := &l.plan.Clusters[i]
	c := &Cluster{Name: cp.Name, ID: cp.ID, PodCIDR: cp.PodCIDR, ServiceCIDR: cp.ServiceCIDR, StatusURL: cp.Status,
		Join: filepath.Join(cp.Dir, "join.json"), lab: l, plan: cp}
	c.KubeServiceCIDR, c.ClusterSetCIDR = halves(c.ServiceCIDR)
	if l.cfg.CoreDNS != "" {
		c.DNS = cp.Nodes[0].IP
	}
	return c
}

func (c *Cluster) newNode(j int) *Node {
	np := &c.plan.Nodes[j]
	n := &Node{Name: np.Name, Zone: np.Zone, IP: np.IP, Netns: np.Netns, Cgroup: np.Cgroup, PinDir: np.PinDir,
		WireGuard: np.WireGuard, StatusURL: np.Status, Cluster: c, plan: np}
	c.Nodes = append(c.Nodes, n)
	return n
}

// startControlPlane starts the control plane of c, the lab's cluster i.
func (l *Lab) startControlPlane(ctx context.Context, c *Cluster, i int) error {
	start := time.Now()
	cp, err := controlplane.Start(ctx, controlplane.Config{
		Name: string(c.Name), Dir: c.plan.Dir, BinDir: l.cfg.KubeBin, EtcdServers: l.etcd.Endpoint,
		Address: l.plan.HostIP, Port: APIServerPort + i, ServiceCIDR: c.KubeServiceCIDR, ClusterCIDR: c.PodCIDR,
	})
	if err != nil {
		return err
	}
	c.cp = cp
	for _, pr := range cp.Processes() {
		l.watch(pr, nil)
	}
	c.Kubeconfig, c.RESTConfig, c.Client = cp.Kubeconfig, cp.RESTConfig, cp.Client
	l.cfg.Progress("cluster %s: kube-apiserver %s, kube-controller-manager, kube-scheduler ready in %v", c.Name, c.plan.APIServer, time.Since(start).Round(100*time.Millisecond))
	return nil
}

// AddCluster starts the next spare cluster (Config.Spare): its control
// plane and its nodes' lab nodes, but no operator, no agents and no join
// bundle, and no grant on the broker: that is for `braid join`. It returns
// once every node is Ready with a pod CIDR. StartBraid then runs Braid's
// processes with the bundle join stored. AddCluster must not run
// concurrently with other calls that read Clusters.
func (l *Lab) AddCluster(ctx context.Context) (*Cluster, error) {
	i := len(l.Clusters)
	if i >= len(l.plan.Clusters) {
		return nil, fmt.Errorf("add cluster: no spare cluster left (Config.Spare is %d)", l.cfg.Spare)
	}
	c := l.newCluster(i)
	if err := l.startControlPlane(ctx, c, i); err != nil {
		return nil, fmt.Errorf("add cluster %s: %w", c.Name, err)
	}
	l.mu.Lock()
	l.Clusters = append(l.Clusters, c)
	l.mu.Unlock()
	for j := range c.plan.Nodes {
		if err := l.startNode(c.newNode(j)); err != nil {
			return nil, fmt.Errorf("add cluster %s: %w", c.Name, err)
		}
	}
	if l.cfg.CoreDNS != "" {
		if err := c.startCoreDNS(ctx); err != nil {
			return nil, fmt.Errorf("add cluster %s: %w", c.Name, err)
		}
	}
	rctx, cancel := context.WithTimeout(ctx, ReadyTimeout)
	defer cancel()
	if err := l.poll(rctx, func() error { return c.nodesReady(rctx, false) }); err != nil {
		return nil, fmt.Errorf("add cluster %s: nodes not ready: %w", c.Name, err)
	}
	l.cfg.Progress("cluster %s: %d nodes with a lab node each, no Braid yet", c.Name, len(c.Nodes))
	return c, nil
}

// StartBraid starts c's braid-operator and an agent on each node with the
// join bundle at joinFile, as the pods `braid join` applies would (the lab
// cannot run Braid's images). For a cluster from AddCluster.
func (c *Cluster) StartBraid(joinFile string) error {
	if c.operator != nil {
		return fmt.Errorf("cluster %s: Braid already runs", c.Name)
	}
	c.Join = joinFile
	c.operator = c.lab.newManaged(string(c.Name)+"/braid-operator", filepath.Join(c.plan.Dir, "operator.log"), c.operatorArgs)
	if err := c.operator.start(); err != nil {
		return err
	}
	for _, n := range c.Nodes {
		if err := n.startAgent(); err != nil {
			return err
		}
	}
	return nil
}

// StopBraid stops what StartBraid started, as deleting the pods would
// (after `braid leave`, say). Only the broker's view changes: the
// cluster's control plane and nodes keep running.
func (c *Cluster) StopBraid() {
	for _, n := range c.Nodes {
		if n.agent != nil {
			n.agent.stop(10 * time.Second)
		}
	}
	if c.operator != nil {
		c.operator.stop(10 * time.Second)
	}
}

// addCluster grants a cluster its name, ID and ranges on the broker and
// returns its credentials.
func (l *Lab) addCluster(ctx context.Context, g clustermesh.Grant) (join.Credentials, error) {
	l.mu.Lock()
	b := l.broker
	l.mu.Unlock()
	if b == nil {
		return join.Credentials{}, fmt.Errorf("add cluster %s: %w", g.Name, broker.ErrNotRunning)
	}
	return b.AddCluster(ctx, g)
}

// StartBroker starts the embedded broker (again, after StopBroker), on the
// same data and address, and returns once it serves.
func (l *Lab) StartBroker(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.brokerStop != nil {
		return nil
	}
	b, err := broker.New(broker.Config{
		DataDir:    filepath.Join(l.Dir, "broker"),
		ClientURLs: []string{l.Broker},
		PeerURL:    "https://" + net.JoinHostPort(l.HostIP.String(), strconv.Itoa(BrokerPeerPort)),
		JoinURL:    l.BrokerJoin,
		StatusAddr: strings.TrimPrefix(l.BrokerStatus, "http://"),
		Logger:     l.cfg.Log,
	})
	if err != nil {
		return err
	}
	bctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- b.Run(bctx) }()
	select {
	case <-b.Ready():
	case err := <-done:
		cancel()
		return fmt.Errorf("broker: %w", err)
	case <-ctx.Done():
		cancel()
		<-done
		return ctx.Err()
	}
	l.broker = b
	l.brokerStop = func() { cancel(); <-done }
	return nil
}

// StopBroker stops the embedded broker; StartBroker starts it again.
func (l *Lab) StopBroker() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.brokerStop != nil {
		l.brokerStop()
		l.brokerStop, l.broker = nil, nil
	}
}

func (c *Cluster) operatorArgs() (string, []string) {
	args := []string{
		"--join", c.Join,
		"--cluster-id", strconv.Itoa(int(c.ID)),
		"--pod-cidr", c.PodCIDR.String(),
		"--service-cidr", c.ServiceCIDR.String(),
		"--clusterset-cidr", c.ClusterSetCIDR.String(),
		"--kubeconfig", c.Kubeconfig,
		"--ensure-crds",
		"--status-addr", net.JoinHostPort(c.lab.HostIP.String(), strconv.Itoa(OperatorStatusPort+int(c.ID)-1)),
	}
	if c.lab.cfg.LeaseTTL > 0 {
		args = append(args, "--lease-ttl", c.lab.cfg.LeaseTTL.String())
	}
	if slices.Contains(c.lab.cfg.StrictEncryption, c.Name) {
		args = append(args, "--strict-encryption")
	}
	if c.relayed() {
		args = append(args, "--relay-listen", "https://"+net.JoinHostPort(c.lab.HostIP.String(), strconv.Itoa(RelayPort+int(c.ID)-1)),
			"--relay-data-dir", c.relayDir(), "--relay-metrics-url", c.RelayMetricsURL())
	}
	return filepath.Join(c.lab.cfg.Bin, "braid-operator"), args
}

// relayed says whether c's operator runs a relay its agents read.
func (c *Cluster) relayed() bool { return slices.Contains(c.lab.cfg.Relay, c.Name) }

// relayDir is the data directory of c's relay.
func (c *Cluster) relayDir() string { return filepath.Join(c.plan.Dir, "relay") }

// RelayMetricsURL is where c's relay's etcd serves /metrics ("" without
// a relay).
func (c *Cluster) RelayMetricsURL() string {
	if !c.relayed() {
		return ""
	}
	return "http://" + net.JoinHostPort(c.lab.HostIP.String(), strconv.Itoa(RelayMetricsPort+int(c.ID)-1))
}

// RelayBundle is the agents' bundle of c's relay ("" without one).
func (c *Cluster) RelayBundle() string {
	if !c.relayed() {
		return ""
	}
	return filepath.Join(c.relayDir(), relay.AgentsFile)
}

// waitRelay waits, if c runs a relay, until the relay has written its
// agents' bundle: the agents need it to start.
func (c *Cluster) waitRelay(ctx context.Context) error {
	if !c.relayed() {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, ReadyTimeout)
	defer cancel()
	if err := c.lab.poll(ctx, func() error {
		_, err := os.Stat(c.RelayBundle())
		return err
	}); err != nil {
		return fmt.Errorf("cluster %s: relay's agents' bundle: %w", c.Name, err)
	}
	return nil
}

// startNode creates n's namespace and cgroup, and starts its lab node in
// the namespace.
func (l *Lab) startNode(n *Node) error {
	if err := createNodeNetns(l.plan, n.plan); err != nil {
		return err
	}
	if err := os.MkdirAll(n.Cgroup, 0o755); err != nil {
		return fmt.Errorf("create node %s: cgroup: %w", n.Name, err)
	}
	if err := os.MkdirAll(n.plan.Dir, 0o700); err != nil {
		return fmt.Errorf("create node %s: %w", n.Name, err)
	}
	var err error
	if n.files, err = n.Cluster.cp.AddNode(n.Name, n.IP); err != nil {
		return err
	}
	n.kubelt = l.newManaged(n.Name+"/node", filepath.Join(n.plan.Dir, "node.log"), n.inNetns(n.nodeArgs))
	return n.kubelt.start()
}

// startAgent starts n's braid-agent in its namespace and cgroup, sandboxed
// as its DaemonSet pod would be (sandboxed).
func (n *Node) startAgent() error {
	n.agent = n.Cluster.lab.newManaged(n.Name+"/braid-agent", filepath.Join(n.plan.Dir, "agent.log"), n.sandboxed(n.agentArgs))
	n.agent.cgroup = n.Cgroup
	return n.agent.start()
}

// inNetns wraps a command so that it runs in n's network namespace (and
// the host's mount namespace).
func (n *Node) inNetns(cmd func() (string, []string)) func() (string, []string) {
	return func() (string, []string) {
		bin, args := cmd()
		// Not `ip netns exec`: it mounts a fresh /sys, hiding the cgroup2
		// and bpf file systems mounted below it.
		return "nsenter", append([]string{"--net=/run/netns/" + n.Netns, "--", bin}, args...)
	}
}

func (n *Node) agentArgs() (string, []string) {
	bin := filepath.Join(n.Cluster.lab.cfg.Bin, "braid-agent")
	args := []string{
		"--join", n.Cluster.Join,
		"--node", n.Name,
		// No --zone, --region or --node-ip: the agent reads them from its
		// Node, which the lab node registers with both labels and its
		// InternalIP. No --cgroup: the agent finds the cgroup2 mount, which
		// its sandbox shows rooted at the node's cgroup. No --interface:
		// --pod-devices auto (the default) follows the pods' veths.
		"--bpf-pin-dir", n.PinDir,
		"--wireguard-device", n.WireGuard,
		"--state-dir", filepath.Join(n.plan.Dir, "agent"),
		"--status-addr", net.JoinHostPort(n.IP.String(), strconv.Itoa(AgentStatusPort)),
		"--kubeconfig", n.files.Kubeconfig,
		// Lab pods sit in their own netns under the node's cgroup: the
		// socket load balancer serves them, and the tc programs follow
		// their veths (--pod-devices auto: the host sides in the node's
		// netns; the node's own eth0 holds its address and is left alone),
		// so a pod's cross-cluster traffic takes both, as the lab's tests
		// check.
		"--socket-lb-host-only=false",
	}
	if b := n.Cluster.RelayBundle(); b != "" {
		args = append(args, "--relay", b)
	}
	return bin, args
}

// WaitReady waits until every node is Ready with a pod CIDR and has
// published its WireGuard key, and every operator and agent has synced every
// other cluster (ReadyTimeout at most).
func (l *Lab) WaitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, ReadyTimeout)
	defer cancel()
	start := time.Now()
	for _, c := range l.Clusters {
		if err := l.poll(ctx, func() error { return c.nodesReady(ctx, true) }); err != nil {
			return fmt.Errorf("cluster %s: nodes not ready: %w", c.Name, err)
		}
	}
	l.cfg.Progress("every node registered, Ready, with a pod CIDR and a WireGuard key (%v)", time.Since(start).Round(100*time.Millisecond))
	client := &http.Client{Timeout: 2 * time.Second}
	defer client.CloseIdleConnections()
	for _, c := range l.Clusters {
		urls := []string{c.StatusURL}
		for _, n := range c.Nodes {
			urls = append(urls, n.StatusURL)
		}
		for _, u := range urls {
			if err := l.poll(ctx, func() error { return l.synced(ctx, client, u) }); err != nil {
				return fmt.Errorf("%s: %w", u, err)
			}
		}
	}
	l.cfg.Progress("every operator and agent synced every other cluster (%v)", time.Since(start).Round(100*time.Millisecond))
	return nil
}

// poll runs check until it succeeds, a lab process fails, or ctx is done.
func (l *Lab) poll(ctx context.Context, check func() error) error {
	for {
		err := check()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %w)", ctx.Err(), err)
		case ferr := <-l.failures:
			l.failures <- ferr // keep it for Failed
			return ferr
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// nodesReady checks every node is Ready with a pod CIDR and, if withKey,
// has its WireGuard key published (by its agent).
func (c *Cluster) nodesReady(ctx context.Context, withKey bool) error {
	for _, n := range c.Nodes {
		node, err := c.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		ready := false
		for _, cond := range node.Status.Conditions {
			ready = ready || cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue
		}
		switch {
		case !ready:
			return fmt.Errorf("node %s not Ready", n.Name)
		case node.Spec.PodCIDR == "":
			return fmt.Errorf("node %s has no pod CIDR yet", n.Name)
		case withKey && node.Annotations[wireGuardKeyAnnotation] == "":
			return fmt.Errorf("node %s has no WireGuard key yet", n.Name)
		}
	}
	return nil
}

// synced checks that the status page at url reports every other cluster
// connected and synced.
func (l *Lab) synced(ctx context.Context, client *http.Client, url string) error {
	snap, err := status.Fetch(ctx, client, url)
	if err != nil {
		return err
	}
	for _, c := range l.Clusters {
		if c.Name == snap.Cluster {
			continue
		}
		found := false
		for _, r := range snap.Remotes {
			if r.Name == c.Name {
				found = true
				if !r.Connected || !r.Synced {
					return fmt.Errorf("%s %s: cluster %s not synced yet", snap.Role, snap.Cluster, c.Name)
				}
			}
		}
		if !found {
			return fmt.Errorf("%s %s: cluster %s not seen yet", snap.Role, snap.Cluster, c.Name)
		}
	}
	return nil
}

// Failed receives the first unexpected exit of a lab process.
func (l *Lab) Failed() <-chan error { return l.failures }

// Close stops every process (agents, lab nodes, operators, control planes,
// broker, etcd) and removes everything the run created. It is idempotent.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.mu.Unlock()
	l.stopClosing()
	var wg sync.WaitGroup
	for _, c := range l.Clusters {
		for _, n := range c.Nodes {
			if n.agent != nil {
				wg.Go(func() { n.agent.stop(10 * time.Second) })
			}
		}
	}
	wg.Wait()
	for _, c := range l.Clusters {
		for _, n := range c.Nodes {
			if n.kubelt != nil {
				wg.Go(func() { n.kubelt.stop(20 * time.Second) })
			}
		}
		if c.operator != nil {
			wg.Go(func() { c.operator.stop(0) })
		}
		if c.coredns != nil {
			wg.Go(func() { c.coredns.stop(0) })
		}
	}
	wg.Wait()
	for _, c := range l.Clusters {
		if c.cp != nil {
			wg.Go(c.cp.Stop)
		}
	}
	wg.Wait()
	l.StopBroker()
	if l.etcd != nil {
		l.etcd.Stop()
	}
	return teardown(l.plan)
}
