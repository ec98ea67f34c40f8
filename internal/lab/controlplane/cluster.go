package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/braidmesh/braid/internal/lab/pinnedtls"
	"github.com/braidmesh/braid/internal/lab/proc"
)

// StartTimeout bounds how long Start and StartEtcd wait for one process to
// become ready. It is generous because the lab machines are shared.
const StartTimeout = 90 * time.Second

// DefaultNodeCIDRMaskSize is the prefix length of each node's pod CIDR when
// Config.NodeCIDRMaskSize is zero.
const DefaultNodeCIDRMaskSize = 24

// Config describes one lab cluster's control plane.
type Config struct {
	// Name is the cluster's name; its objects live under /braid-lab/<Name>
	// in the shared etcd, so it must be unique per etcd.
	Name string
	// Dir holds the cluster's PKI, kubeconfigs and logs (created).
	Dir string
	// BinDir holds kube-apiserver, kube-controller-manager and
	// kube-scheduler (internal/kubelab.BinDir).
	BinDir string
	// EtcdServers is the etcd client URL (Etcd.Endpoint).
	EtcdServers string
	// Address is where the apiserver listens and what it advertises; nodes
	// must reach it. A loopback address turns the endpoint reconciler off,
	// as the apiserver requires.
	Address netip.Addr
	// Port is the apiserver's port; zero picks a free one.
	Port int
	// ServiceCIDR is the service IP range; ClusterCIDR the pod range the
	// controller manager carves node pod CIDRs from.
	ServiceCIDR, ClusterCIDR netip.Prefix
	// NodeCIDRMaskSize is the prefix length of each node's pod CIDR; zero
	// means DefaultNodeCIDRMaskSize.
	NodeCIDRMaskSize int
}

// Cluster is a running control plane: kube-apiserver, kube-controller-manager
// (all default controllers, node pod CIDRs allocated) and kube-scheduler.
// Its fields must not be modified.
type Cluster struct {
	Name string
	// Server is the apiserver URL.
	Server string
	// Kubeconfig is the admin kubeconfig (a client certificate in
	// system:masters), for kubectl and tools.
	Kubeconfig string
	// CAFile is the cluster CA, which signs every certificate of the cluster.
	CAFile string
	// RESTConfig and Client act as the admin.
	RESTConfig *rest.Config
	Client     kubernetes.Interface

	cfg   Config
	ca    *ca
	procs []*proc.Process // apiserver, controller manager, scheduler
}

// Start writes the cluster's PKI and kubeconfigs into cfg.Dir and starts its
// control plane, returning once the apiserver is ready, the controller
// manager and scheduler are healthy and the "default" ServiceAccount exists.
// On error everything started is stopped.
func Start(ctx context.Context, cfg Config) (c *Cluster, err error) {
	if cfg.Name == "" || cfg.Dir == "" || cfg.BinDir == "" || cfg.EtcdServers == "" {
		return nil, errors.New("start control plane: Name, Dir, BinDir and EtcdServers are required")
	}
	if !cfg.Address.IsValid() || !cfg.ServiceCIDR.IsValid() || !cfg.ClusterCIDR.IsValid() {
		return nil, fmt.Errorf("start control plane %s: Address, ServiceCIDR and ClusterCIDR are required", cfg.Name)
	}
	if cfg.NodeCIDRMaskSize == 0 {
		cfg.NodeCIDRMaskSize = DefaultNodeCIDRMaskSize
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("start control plane %s: %w", cfg.Name, err)
	}
	c = &Cluster{Name: cfg.Name, cfg: cfg}
	started := c // the returns below set c to nil before this runs
	defer func() {
		if err != nil {
			started.Stop()
			err = fmt.Errorf("start control plane %s: %w", cfg.Name, err)
		}
	}()
	if cfg.Port == 0 {
		if cfg.Port, err = freePort(cfg.Address); err != nil {
			return nil, err
		}
		c.cfg.Port = cfg.Port
	}
	c.Server = "https://" + net.JoinHostPort(cfg.Address.String(), strconv.Itoa(cfg.Port))
	if err := c.writePKI(); err != nil {
		return nil, err
	}
	if err := c.startAPIServer(ctx); err != nil {
		return nil, err
	}
	if c.RESTConfig, err = clientcmd.BuildConfigFromFlags("", c.Kubeconfig); err != nil {
		return nil, fmt.Errorf("load %s: %w", c.Kubeconfig, err)
	}
	c.RESTConfig.QPS, c.RESTConfig.Burst, c.RESTConfig.UserAgent = 100, 200, "braid-lab"
	if c.Client, err = kubernetes.NewForConfig(c.RESTConfig); err != nil {
		return nil, err
	}
	if err := c.startControllerManager(ctx); err != nil {
		return nil, err
	}
	if err := c.startScheduler(ctx); err != nil {
		return nil, err
	}
	// The controllers run once their informers have synced; the first
	// ServiceAccount shows that they have.
	if err := c.waitFor(ctx, func(ctx context.Context) error {
		_, err := c.Client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err
	}); err != nil {
		return nil, fmt.Errorf("service account default/default: %w", err)
	}
	if err := c.grantCNI(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// CNIRole is the ClusterRole, bound to the group system:nodes, that lets
// lab nodes do what a host-gw CNI daemon does besides the kubelet's work:
// read every Node, for the routes to their pod CIDRs (the Node authorizer
// lets a kubelet read only its own Node). The lab's braid-agents run with
// their node's credentials, so it also grants what deploy/agent-rbac.yaml
// grants them beyond a kubelet's rights: reading NetworkPolicies.
const CNIRole = "braid-lab:cni"

func (c *Cluster) grantCNI(ctx context.Context) error {
	rules := []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"networkpolicies"}, Verbs: []string{"get", "list", "watch"}},
	}
	if _, err := c.Client.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: CNIRole}, Rules: rules,
	}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create cluster role %s: %w", CNIRole, err)
	}
	if _, err := c.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: CNIRole},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: CNIRole},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.GroupKind, Name: "system:nodes"}},
	}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("bind cluster role %s: %w", CNIRole, err)
	}
	return nil
}

func (c *Cluster) path(name string) string { return filepath.Join(c.cfg.Dir, name) }

// writePKI writes the CA, the apiserver's serving and kubelet-client
// certificates, the service-account keys and the admin, controller-manager
// and scheduler kubeconfigs.
func (c *Cluster) writePKI() error {
	var err error
	if c.ca, err = newCA(c.Name); err != nil {
		return err
	}
	caKey, err := x509.MarshalPKCS8PrivateKey(c.ca.key)
	if err != nil {
		return fmt.Errorf("marshal CA key: %w", err)
	}
	c.CAFile = c.path("ca.crt")
	if err := os.WriteFile(c.CAFile, c.ca.pem, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(c.path("ca.key"), pemEncode("PRIVATE KEY", caKey), 0o600); err != nil {
		return err
	}
	firstServiceIP := c.cfg.ServiceCIDR.Masked().Addr().Next()
	if _, _, err := c.ca.issueFiles(c.cfg.Dir, "apiserver", certSpec{
		cn:     "kube-apiserver",
		ips:    []netip.Addr{c.cfg.Address, netip.MustParseAddr("127.0.0.1"), firstServiceIP},
		dns:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		server: true,
	}); err != nil {
		return err
	}
	// The apiserver's client certificate towards kubelets (exec, logs).
	if _, _, err := c.ca.issueFiles(c.cfg.Dir, "apiserver-kubelet-client", certSpec{
		cn: "kube-apiserver-kubelet-client", orgs: []string{"system:masters"},
	}); err != nil {
		return err
	}
	if _, _, err := writeServiceAccountKeys(c.cfg.Dir); err != nil {
		return err
	}
	c.Kubeconfig = c.path("admin.kubeconfig")
	for _, kc := range []struct {
		path string
		spec certSpec
	}{
		{c.Kubeconfig, certSpec{cn: "braid-lab-admin", orgs: []string{"system:masters"}}},
		{c.path("controller-manager.kubeconfig"), certSpec{cn: "system:kube-controller-manager"}},
		{c.path("scheduler.kubeconfig"), certSpec{cn: "system:kube-scheduler"}},
	} {
		if err := c.ca.writeKubeconfig(kc.path, c.Name, c.Server, kc.spec); err != nil {
			return err
		}
	}
	return nil
}

// NodeFiles are the credentials of one node, as a kubelet has them.
type NodeFiles struct {
	// Kubeconfig authenticates as system:node:<name> in system:nodes, so
	// the Node authorizer and NodeRestriction apply as to a kubelet.
	Kubeconfig string
	// ServingCert and ServingKey serve the kubelet API; the certificate is
	// signed by the cluster CA and names the node's IP, so the apiserver
	// (--kubelet-certificate-authority) verifies it.
	ServingCert, ServingKey string
	// ClientCA verifies the apiserver's client certificate on the kubelet
	// API.
	ClientCA string
}

// AddNode writes credentials for node name reachable at ip into
// Dir/nodes/<name>/.
func (c *Cluster) AddNode(name string, ip netip.Addr) (NodeFiles, error) {
	dir := filepath.Join(c.cfg.Dir, "nodes", name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return NodeFiles{}, fmt.Errorf("add node %s: %w", name, err)
	}
	f := NodeFiles{Kubeconfig: filepath.Join(dir, "kubeconfig"), ClientCA: c.CAFile}
	if err := c.ca.writeKubeconfig(f.Kubeconfig, c.Name, c.Server, certSpec{
		cn: "system:node:" + name, orgs: []string{"system:nodes"},
	}); err != nil {
		return NodeFiles{}, fmt.Errorf("add node %s: %w", name, err)
	}
	var err error
	f.ServingCert, f.ServingKey, err = c.ca.issueFiles(dir, "kubelet", certSpec{
		cn: "system:node:" + name, orgs: []string{"system:nodes"}, ips: []netip.Addr{ip}, dns: []string{name}, server: true,
	})
	if err != nil {
		return NodeFiles{}, fmt.Errorf("add node %s: %w", name, err)
	}
	return f, nil
}

func (c *Cluster) startAPIServer(ctx context.Context) error {
	reconciler := "lease"
	if c.cfg.Address.IsLoopback() {
		reconciler = "none" // the apiserver refuses a loopback endpoint
	}
	args := []string{
		"--etcd-servers=" + c.cfg.EtcdServers,
		"--etcd-prefix=/braid-lab/" + c.Name,
		"--bind-address=" + c.cfg.Address.String(),
		"--advertise-address=" + c.cfg.Address.String(),
		"--secure-port=" + strconv.Itoa(c.cfg.Port),
		"--endpoint-reconciler-type=" + reconciler,
		"--tls-cert-file=" + c.path("apiserver.crt"),
		"--tls-private-key-file=" + c.path("apiserver.key"),
		"--cert-dir=" + c.path("apiserver-certs"),
		"--client-ca-file=" + c.CAFile,
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--kubelet-client-certificate=" + c.path("apiserver-kubelet-client.crt"),
		"--kubelet-client-key=" + c.path("apiserver-kubelet-client.key"),
		"--kubelet-certificate-authority=" + c.CAFile,
		"--kubelet-preferred-address-types=InternalIP",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + c.path("sa.pub"),
		"--service-account-signing-key-file=" + c.path("sa.key"),
		"--service-cluster-ip-range=" + c.cfg.ServiceCIDR.String(),
		"--allow-privileged=true",
		"--enable-priority-and-fairness=false", // one fewer controller per apiserver on 2 shared cores
		"--profiling=false",
		"--v=0",
	}
	tlsCfg, err := c.adminTLS()
	if err != nil {
		return err
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	defer client.CloseIdleConnections()
	p, err := proc.Start(c.Name+"/kube-apiserver", c.path("kube-apiserver.log"), nil, filepath.Join(c.cfg.BinDir, "kube-apiserver"), args...)
	if err != nil {
		return err
	}
	c.procs = append(c.procs, p)
	return waitReady(ctx, p, func(ctx context.Context) error { return getOK(ctx, client, c.Server+"/readyz") })
}

// adminTLS is a TLS client config with the admin's certificate, read back
// from its kubeconfig.
func (c *Cluster) adminTLS() (*tls.Config, error) {
	kc, err := clientcmd.LoadFromFile(c.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", c.Kubeconfig, err)
	}
	auth := kc.AuthInfos[kc.Contexts[kc.CurrentContext].AuthInfo]
	cert, err := tls.X509KeyPair(auth.ClientCertificateData, auth.ClientKeyData)
	if err != nil {
		return nil, fmt.Errorf("admin certificate: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.ca.pem)
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}, nil
}

func (c *Cluster) startControllerManager(ctx context.Context) error {
	return c.startHealthy(ctx, "kube-controller-manager", "kcm-certs", func(port int) []string {
		return []string{
			"--kubeconfig=" + c.path("controller-manager.kubeconfig"),
			"--use-service-account-credentials", // each controller acts as its own service account, as in kubeadm clusters
			"--leader-elect=false",
			"--allocate-node-cidrs",
			"--cluster-cidr=" + c.cfg.ClusterCIDR.String(),
			"--node-cidr-mask-size=" + strconv.Itoa(c.cfg.NodeCIDRMaskSize),
			"--service-cluster-ip-range=" + c.cfg.ServiceCIDR.String(),
			"--service-account-private-key-file=" + c.path("sa.key"),
			"--root-ca-file=" + c.CAFile,
			"--cluster-signing-cert-file=" + c.CAFile,
			"--cluster-signing-key-file=" + c.path("ca.key"),
			"--bind-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(port),
			"--kube-api-qps=100",
			"--kube-api-burst=200",
			"--profiling=false",
			"--v=0",
		}
	})
}

func (c *Cluster) startScheduler(ctx context.Context) error {
	return c.startHealthy(ctx, "kube-scheduler", "scheduler-certs", func(port int) []string {
		return []string{
			"--kubeconfig=" + c.path("scheduler.kubeconfig"),
			"--leader-elect=false",
			"--bind-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(port),
			"--profiling=false",
			"--v=0",
		}
	})
}

// startHealthy runs a component that serves /healthz on a loopback port
// (the path needs no credentials) and waits until it is healthy. It gives
// the component --cert-dir=certDir, where the component writes a
// self-signed serving certificate named after it; the check accepts only
// that one, so another process that took the port cannot answer for it.
func (c *Cluster) startHealthy(ctx context.Context, component, certDir string, args func(port int) []string) error {
	certDir = c.path(certDir)
	pinned := pinnedtls.Client(filepath.Join(certDir, component+".crt"))
	defer pinned.CloseIdleConnections()
	p, err := retryPortClash(func() (*proc.Process, error) {
		port, err := freePort(netip.MustParseAddr("127.0.0.1"))
		if err != nil {
			return nil, err
		}
		p, err := proc.Start(c.Name+"/"+component, c.path(component+".log"), nil, filepath.Join(c.cfg.BinDir, component), append(args(port), "--cert-dir="+certDir)...)
		if err != nil {
			return nil, err
		}
		return p, waitReady(ctx, p, func(ctx context.Context) error {
			return getOK(ctx, pinned, fmt.Sprintf("https://127.0.0.1:%d/healthz", port))
		})
	})
	if err != nil {
		return err
	}
	// Only the attempt that became healthy: a caller watching Processes
	// for exits must not see an attempt that lost its port.
	c.procs = append(c.procs, p)
	return nil
}

// Processes returns the control plane's processes, for a caller that watches
// them for failure.
func (c *Cluster) Processes() []*proc.Process { return c.procs }

// Stop stops the scheduler, controller manager and apiserver, in that order,
// and waits for them. It is safe to call more than once.
func (c *Cluster) Stop() {
	for i := len(c.procs) - 1; i >= 0; i-- {
		c.procs[i].Stop(0)
	}
}

// waitFor polls check until it succeeds or StartTimeout passes; NotFound and
// transport errors are retried, authorization and validation errors returned.
func (c *Cluster) waitFor(ctx context.Context, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, StartTimeout)
	defer cancel()
	for {
		err := check(ctx)
		if err == nil {
			return nil
		}
		if apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) || apierrors.IsInvalid(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("after %v: %w", StartTimeout, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitReady polls ready until it succeeds, p exits, ctx is done or
// StartTimeout passes.
func waitReady(ctx context.Context, p *proc.Process, ready func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, StartTimeout)
	defer cancel()
	for {
		if p.Exited() {
			return fmt.Errorf("%s exited (%v); last lines of %s:\n%s", p.Name, p.Err(), p.Log, p.Tail(20))
		}
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		last := ready(rctx)
		rcancel()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w (%w); last lines of %s:\n%s", p.Name, ctx.Err(), last, p.Log, p.Tail(20))
		case <-p.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// maxAttempts is how often a process is started again when the free port it
// was given was taken before it could bind it.
const maxAttempts = 3

// retryPortClash runs start, again if the process died because its port was
// taken in the meantime, and returns the process that started. A failed
// process is stopped.
func retryPortClash(start func() (*proc.Process, error)) (*proc.Process, error) {
	for attempt := 1; ; attempt++ {
		p, err := start()
		if err == nil {
			return p, nil
		}
		if p == nil {
			return nil, err
		}
		p.Stop(0)
		if attempt >= maxAttempts || !strings.Contains(p.Tail(50), "address already in use") {
			return nil, err
		}
	}
}

// getOK GETs url and expects 200 OK.
func getOK(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, failedChecks(body))
	}
	return nil
}

// failedChecks returns the "[-]" lines of a /readyz or /healthz body, or its
// last line.
func failedChecks(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	var failed []string
	for _, l := range lines {
		if strings.HasPrefix(l, "[-]") {
			failed = append(failed, l)
		}
	}
	if len(failed) == 0 {
		failed = lines[len(lines)-1:]
	}
	return strings.Join(failed, " | ")
}

func freePort(addr netip.Addr) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(addr.String(), "0"))
	if err != nil {
		return 0, fmt.Errorf("find a free port on %s: %w", addr, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		ls = append(ls, l)
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports, nil
}
