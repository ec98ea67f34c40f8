package node

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/braidmesh/braid/internal/cgroupv2"
	"github.com/braidmesh/braid/internal/kubelab"
	"github.com/braidmesh/braid/internal/netnsrun"
	"github.com/braidmesh/braid/internal/testenv"
)

// TestMain lets the test binary play the lab node binary: `<test> node ...`
// runs the node command (as cmd/braid-lab does), so Run can start its
// stand-in as `<exe> node standin ...`.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "node" {
		cmd := NewCommand()
		cmd.SetArgs(os.Args[2:])
		if err := cmd.Execute(); err != nil {
			fmt.Fprintln(os.Stderr, "node:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// requirePrivileged skips t (see testenv.Skipf: a failure where CI
// requires every test) unless it can create namespaces, veths and cgroups,
// and returns the cgroup v2 mount point.
func requirePrivileged(t *testing.T) string {
	t.Helper()
	testenv.Root(t, "network namespaces, veths, cgroups")
	m, err := cgroupv2.Find()
	if err != nil {
		testenv.Skipf(t, "needs cgroup v2: %v", err)
	}
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		testenv.Skipf(t, "needs network namespace support")
	}
	return m.Point
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// inNetns runs fn on a thread inside ns.
func inNetns(ns netns.NsHandle, fn func() error) error { return netnsrun.Do(ns, fn) }

// testLab is one kube-apiserver, an underlay bridge and lab nodes on it.
type testLab struct {
	t           *testing.T
	cluster     *kubelab.Cluster
	cgroupRoot  string
	subnet      byte // underlay 198.18.<subnet>.0/24
	podNet      byte // pod CIDRs 10.<podNet>.<i>.0/24
	bridge      string
	clusterName string
	apiAddr     string // the apiserver as the nodes reach it
	caFile      string
}

func newTestLab(t *testing.T) *testLab {
	cgRoot := requirePrivileged(t)
	etcd := kubelab.StartEtcd(t)
	suffix := randHex(3)
	cl := kubelab.StartCluster(t, etcd, kubelab.Options{
		Name: "node" + suffix, ControllerManager: true,
		// Pods' service account volumes need the root CA ConfigMap.
		Controllers: []string{"serviceaccount", "serviceaccount-token", "root-ca-cert-publisher", "namespace", "garbagecollector"},
	})
	b := make([]byte, 2)
	_, _ = rand.Read(b)
	lab := &testLab{t: t, cluster: cl, clusterName: cl.Name, cgroupRoot: cgRoot, subnet: b[0], podNet: 100 + b[1]%100, bridge: "blb" + suffix}
	lab.addBridge()

	// The apiserver listens on loopback; nodes reach it through a proxy on
	// the bridge address.
	l, err := net.Listen("tcp", net.JoinHostPort(lab.underlayIP(1).String(), "0"))
	if err != nil {
		t.Fatalf("proxy listen: %v", err)
	}
	lab.apiAddr = l.Addr().String()
	target := strings.TrimPrefix(cl.RESTConfig.Host, "https://")
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				u, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer u.Close()
				go func() { _, _ = io.Copy(u, c); u.(*net.TCPConn).CloseWrite() }()
				_, _ = io.Copy(c, u)
			}()
		}
	}()
	lab.caFile = filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(lab.caFile, cl.RESTConfig.CAData, 0o600); err != nil {
		t.Fatal(err)
	}
	return lab
}

// addBridge creates the underlay bridge with address .1, removed at cleanup.
func (l *testLab) addBridge() {
	t := l.t
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: l.bridge}}
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatalf("add bridge: %v", err)
	}
	t.Cleanup(func() {
		if err := netlink.LinkDel(br); err != nil {
			t.Errorf("delete bridge %s: %v", l.bridge, err)
		}
	})
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: l.underlayIP(1), Mask: net.CIDRMask(24, 32)}}
	if err := netlink.AddrAdd(br, addr); err != nil {
		t.Fatalf("address bridge: %v", err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		t.Fatalf("bridge up: %v", err)
	}

}

func (l *testLab) underlayIP(host byte) net.IP { return net.IPv4(198, 18, l.subnet, host).To4() }

func (l *testLab) podCIDR(i int) string { return fmt.Sprintf("10.%d.%d.0/24", l.podNet, i) }

// labNode is a node process in its own network namespace.
type labNode struct {
	name     string
	ip       net.IP
	ns       netns.NsHandle
	stateDir string
	cgroup   string
	cmd      *exec.Cmd
	log      string
	exited   chan struct{}
	waitErr  error // the node's exit; read after exited is closed
}

// startNode creates node i's namespace on the underlay and starts the node
// process in it.
func (l *testLab) startNode(i int, zone string, creds *nodeCreds) *labNode {
	t := l.t
	t.Helper()
	n := &labNode{name: fmt.Sprintf("node-%d", i), ip: l.underlayIP(byte(10 + i)), exited: make(chan struct{})}
	dir := t.TempDir()
	n.stateDir = filepath.Join(dir, "state")
	n.log = filepath.Join(dir, "node.log")

	var err error
	runtime.LockOSThread()
	home, _ := netns.Get()
	n.ns, err = netns.New()
	netns.Set(home)
	home.Close()
	runtime.UnlockOSThread()
	if err != nil {
		t.Fatalf("node netns: %v", err)
	}
	t.Cleanup(func() { n.ns.Close() })

	hostSide := fmt.Sprintf("blu%s%d", randHex(3), i)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostSide}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(n.ns))}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("node veth: %v", err)
	}
	t.Cleanup(func() {
		if lk, err := netlink.LinkByName(hostSide); err == nil {
			_ = netlink.LinkDel(lk)
		}
	})
	br, _ := netlink.LinkByName(l.bridge)
	hl, _ := netlink.LinkByName(hostSide)
	if err := netlink.LinkSetMaster(hl, br); err != nil {
		t.Fatalf("attach veth: %v", err)
	}
	if err := netlink.LinkSetUp(hl); err != nil {
		t.Fatal(err)
	}
	err = inNetns(n.ns, func() error {
		lo, _ := netlink.LinkByName("lo")
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		eth, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(eth, &netlink.Addr{IPNet: &net.IPNet{IP: n.ip, Mask: net.CIDRMask(24, 32)}}); err != nil {
			return err
		}
		return netlink.LinkSetUp(eth)
	})
	if err != nil {
		t.Fatalf("node netns setup: %v", err)
	}

	n.cgroup = filepath.Join(l.cgroupRoot, "braid-lab-test-"+randHex(4))
	if err := os.Mkdir(n.cgroup, 0o755); err != nil {
		t.Fatalf("cgroup: %v", err)
	}
	t.Cleanup(func() {
		if err := removeCgroupTree(n.cgroup); err != nil {
			t.Errorf("remove cgroup: %v", err)
		}
	})

	if creds == nil {
		creds = l.testCreds(dir, n.ip)
	}
	args := []string{"node",
		"--kubeconfig", creds.kubeconfig, "--node-name", n.name, "--cluster", l.clusterName,
		"--zone", zone, "--region", "lab-region", "--node-ip", n.ip.String(),
		"--cgroup-parent", n.cgroup, "--state-dir", n.stateDir,
		"--serving-cert", creds.cert, "--serving-key", creds.key, "--client-ca", creds.clientCA,
		"--capacity", "cpu=4,memory=8Gi,pods=20",
	}
	logf, err := os.Create(n.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	n.cmd = exec.Command(os.Args[0], args...)
	n.cmd.Stdout, n.cmd.Stderr = logf, logf
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := inNetns(n.ns, n.cmd.Start); err != nil {
		t.Fatalf("start node: %v", err)
	}
	go func() { n.waitErr = n.cmd.Wait(); close(n.exited) }()
	t.Cleanup(func() {
		n.stop(t)
		if t.Failed() {
			b, _ := os.ReadFile(n.log)
			t.Logf("log of %s:\n%s", n.name, tail(b, 60))
		}
	})
	return n
}

func tail(b []byte, lines int) string {
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

// stop sends SIGTERM and waits for the node to clean up and exit.
func (n *labNode) stop(t *testing.T) {
	select {
	case <-n.exited:
		return
	default:
	}
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.exited:
		if n.waitErr != nil {
			t.Errorf("node %s exited after SIGTERM with %v (a data race under -race exits 66)", n.name, n.waitErr)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("node %s did not stop within 30s of SIGTERM", n.name)
		_ = n.cmd.Process.Kill()
		<-n.exited
	}
}

// nodeCreds are a node's kubeconfig and kubelet API certificates.
type nodeCreds struct {
	kubeconfig, cert, key, clientCA string
}

// testCreds writes a kubeconfig reaching the kubelab apiserver through the
// proxy, with the admin token, and a self-signed serving certificate; the
// kubelab apiserver has no kubelet client certificate, so no client CA.
func (l *testLab) testCreds(dir string, ip net.IP) *nodeCreds {
	t := l.t
	kubeconfig := filepath.Join(dir, "kubeconfig")
	kc := clientcmdapi.NewConfig()
	kc.Clusters["lab"] = &clientcmdapi.Cluster{Server: "https://" + l.apiAddr, CertificateAuthorityData: l.cluster.RESTConfig.CAData, TLSServerName: "localhost"}
	kc.AuthInfos["lab"] = &clientcmdapi.AuthInfo{Token: l.cluster.RESTConfig.BearerToken}
	kc.Contexts["lab"] = &clientcmdapi.Context{Cluster: "lab", AuthInfo: "lab"}
	kc.CurrentContext = "lab"
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		t.Fatal(err)
	}
	cert, key := writeServingCert(t, dir, ip)
	return &nodeCreds{kubeconfig: kubeconfig, cert: cert, key: key}
}

// writeServingCert writes a kubelet serving certificate for ip, signed by a
// throwaway CA.
func writeServingCert(t *testing.T, dir string, ip net.IP) (string, string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "lab-node-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kubelet"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{ip}}, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	certFile, keyFile := filepath.Join(dir, "kubelet.crt"), filepath.Join(dir, "kubelet.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// eventually polls check until it returns nil, failing t after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, check func() error) {
	t.Helper()
	testenv.Eventually(t, timeout, func() error {
		if err := check(); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	})
}

// assignPodCIDR plays the controller manager's node IPAM: it sets the
// node's pod CIDR once the node registered.
func (l *testLab) assignPodCIDR(n *labNode, cidr string) {
	t := l.t
	t.Helper()
	nodes := l.cluster.Client.CoreV1().Nodes()
	eventually(t, 60*time.Second, "node "+n.name+" registered", func() error {
		_, err := nodes.Get(t.Context(), n.name, metav1.GetOptions{})
		return err
	})
	patch := fmt.Sprintf(`{"spec":{"podCIDR":%q,"podCIDRs":[%q]}}`, cidr, cidr)
	if _, err := nodes.Patch(t.Context(), n.name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("set pod CIDR of %s: %v", n.name, err)
	}
}

func (l *testLab) waitPodReady(ns, name string) *corev1.Pod {
	t := l.t
	t.Helper()
	var pod *corev1.Pod
	eventually(t, 60*time.Second, "pod "+name+" ready", func() error {
		p, err := l.cluster.Client.CoreV1().Pods(ns).Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		pod = p
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return nil
			}
		}
		return fmt.Errorf("phase %s, conditions %+v, containers %+v", p.Status.Phase, p.Status.Conditions, p.Status.ContainerStatuses)
	})
	return pod
}

// kubectl runs kubectl against the lab cluster.
func (l *testLab) kubectl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(l.t.Context(), 60*time.Second)
	defer cancel()
	out, err := l.cluster.Kubectl(ctx, nil, args...)
	return string(out), err
}

func linksWithPrefix(ns netns.NsHandle, prefix string) ([]string, error) {
	var names []string
	err := inNetns(ns, func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, prefix) {
				names = append(names, l.Attrs().Name)
			}
		}
		return nil
	})
	return names, err
}

func ownRoutes(ns netns.NsHandle) ([]netlink.Route, error) {
	var routes []netlink.Route
	err := inNetns(ns, func() error {
		var err error
		routes, err = netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
		return err
	})
	return routes, err
}

// podCgroups lists the pod cgroups under a node's cgroup parent.
func podCgroups(parent string) []string {
	entries, _ := os.ReadDir(parent)
	var out []string
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), "pod-") {
			out = append(out, e.Name())
		}
	}
	return out
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

func inCIDR(ip, cidr string) bool {
	_, n, err := net.ParseCIDR(cidr)
	return err == nil && n.Contains(net.ParseIP(ip))
}
