package kubelab

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/braidmesh/braid/internal/lab/pinnedtls"
)

// DefaultServiceCIDR is the service IP range of a cluster whose
// Options.ServiceCIDR is empty.
const DefaultServiceCIDR = "10.96.0.0/16"

// defaultControllers are the kube-controller-manager controllers a cluster
// runs when Options.Controllers is nil.
var defaultControllers = []string{
	"endpointslice", "endpointslicemirroring", "serviceaccount", "namespace", "garbagecollector",
}

// Options configures a lab cluster. The zero value is a cluster named
// "lab<N>" with no controller manager.
type Options struct {
	// Name identifies the cluster; it must be unique among the clusters on
	// one Etcd, whose objects it keeps under /braidlab/<Name>. Empty means
	// "lab1", "lab2", ...
	Name string

	// ControllerManager runs a kube-controller-manager for the cluster, with
	// leader election off and only the controllers in Controllers.
	ControllerManager bool

	// Controllers are the controller manager's controllers. Nil means
	// endpointslice, endpointslicemirroring, serviceaccount, namespace and
	// garbagecollector.
	Controllers []string

	// ServiceCIDR is the service IP range (--service-cluster-ip-range).
	// Empty means DefaultServiceCIDR.
	ServiceCIDR string
}

// Cluster is a running lab cluster. Its fields must not be modified.
type Cluster struct {
	Name string

	// RESTConfig authenticates as an admin in system:masters, with client
	// rate limits raised for tests (QPS 200, burst 400). Copy it with
	// rest.CopyConfig before changing it, e.g. to impersonate.
	RESTConfig *rest.Config

	// Client is a clientset for RESTConfig.
	Client kubernetes.Interface

	// Kubeconfig is the path of a kubeconfig file with the same server and
	// credentials, for kubectl and other tools.
	Kubeconfig string

	bin string
}

// StartCluster starts a kube-apiserver storing its objects in etcd (and a
// kube-controller-manager if opts.ControllerManager) for the duration of t, and
// returns once the apiserver is ready and the "default" namespace exists (and,
// with the serviceaccount controller, its "default" ServiceAccount too). It
// skips t when the binaries are not built and fails t on any error.
func StartCluster(t testing.TB, etcd *Etcd, opts Options) *Cluster {
	t.Helper()
	name, ok := etcd.claim(opts.Name)
	if !ok {
		t.Fatalf("kubelab: cluster name %q is already used on this etcd", name)
	}
	serviceCIDR := opts.ServiceCIDR
	if serviceCIDR == "" {
		serviceCIDR = DefaultServiceCIDR
	}
	dir := t.TempDir()
	pki, err := newClusterPKI(dir, name)
	if err != nil {
		t.Fatalf("kubelab: cluster %s: %v", name, err)
	}
	caPool := x509.NewCertPool()
	caPool.AppendCertsFromPEM(pki.caPEM)
	apiClient := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: caPool}}}
	t.Cleanup(apiClient.CloseIdleConnections)

	_, ports := startReady(t, name+"/kube-apiserver", filepath.Join(dir, "kube-apiserver.log"),
		filepath.Join(etcd.bin, "kube-apiserver"), 1,
		func(ports []int) []string {
			return []string{
				"--etcd-servers=" + etcd.Endpoint,
				"--etcd-prefix=/braidlab/" + name,
				"--bind-address=127.0.0.1",
				"--advertise-address=127.0.0.1",
				"--secure-port=" + strconv.Itoa(ports[0]),
				"--endpoint-reconciler-type=none", // required with a loopback advertise address
				"--tls-cert-file=" + pki.certFile,
				"--tls-private-key-file=" + pki.keyFile,
				"--cert-dir=" + filepath.Join(dir, "apiserver-certs"),
				"--token-auth-file=" + pki.tokenFile,
				"--authorization-mode=RBAC",
				"--service-account-issuer=https://kubernetes.default.svc",
				"--service-account-key-file=" + pki.saPubFile,
				"--service-account-signing-key-file=" + pki.saKeyFile,
				"--service-cluster-ip-range=" + serviceCIDR,
				"--allow-privileged=true", // privileged pod templates (the agent DaemonSet) validate
				"--enable-priority-and-fairness=false",
				"--profiling=false",
				"--v=0",
			}
		},
		func(ctx context.Context, ports []int) error {
			return getOK(ctx, apiClient, "https://"+hostPort(ports[0])+"/readyz", pki.token)
		})

	cfg := &rest.Config{
		Host:            "https://" + hostPort(ports[0]),
		BearerToken:     pki.token,
		TLSClientConfig: rest.TLSClientConfig{CAData: pki.caPEM},
		QPS:             200,
		Burst:           400,
		UserAgent:       "kubelab",
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("kubelab: cluster %s: %v", name, err)
	}
	c := &Cluster{Name: name, RESTConfig: cfg, Client: client, Kubeconfig: filepath.Join(dir, "kubeconfig"), bin: etcd.bin}
	if err := writeKubeconfig(c.Kubeconfig, name, cfg); err != nil {
		t.Fatalf("kubelab: cluster %s: %v", name, err)
	}
	if err := c.waitFor(func(ctx context.Context) error {
		_, err := client.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
		return err
	}); err != nil {
		t.Fatalf("kubelab: cluster %s: namespace default: %v", name, err)
	}

	if opts.ControllerManager {
		controllers := opts.Controllers
		if controllers == nil {
			controllers = defaultControllers
		}
		c.startControllerManager(t, dir, pki, controllers)
	}
	return c
}

// startControllerManager runs a kube-controller-manager for c.
func (c *Cluster) startControllerManager(t testing.TB, dir string, pki *clusterPKI, controllers []string) {
	t.Helper()
	// /healthz needs no credentials. The serving certificate is self-signed,
	// written to --cert-dir; the check accepts only it, so that another
	// process that took the port cannot answer for the controller manager.
	certDir := filepath.Join(dir, "kcm-certs")
	pinned := pinnedtls.Client(filepath.Join(certDir, "kube-controller-manager.crt"))
	t.Cleanup(pinned.CloseIdleConnections)
	startReady(t, c.Name+"/kube-controller-manager", filepath.Join(dir, "kube-controller-manager.log"),
		filepath.Join(c.bin, "kube-controller-manager"), 1,
		func(ports []int) []string {
			return []string{
				"--kubeconfig=" + c.Kubeconfig,
				"--controllers=" + strings.Join(controllers, ","),
				"--leader-elect=false",
				"--bind-address=127.0.0.1",
				"--secure-port=" + strconv.Itoa(ports[0]),
				"--cert-dir=" + certDir,
				"--service-account-private-key-file=" + pki.saKeyFile,
				"--root-ca-file=" + pki.caFile,
				"--kube-api-qps=100",
				"--kube-api-burst=200",
				"--profiling=false",
				"--v=0",
			}
		},
		func(ctx context.Context, ports []int) error {
			return getOK(ctx, pinned, "https://"+hostPort(ports[0])+"/healthz", "")
		})
	if slices.Contains(controllers, "serviceaccount") {
		// The controllers run once their informers have synced; the first
		// ServiceAccount shows that they have.
		if err := c.waitFor(func(ctx context.Context) error {
			_, err := c.Client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
			return err
		}); err != nil {
			t.Fatalf("kubelab: cluster %s: service account default/default: %v", c.Name, err)
		}
	}
}

// waitFor polls check until it succeeds or StartTimeout passes; NotFound and
// transport errors are retried, any other API error is returned at once.
func (c *Cluster) waitFor(check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	for {
		err := check(ctx)
		if err == nil {
			return nil
		}
		if apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) || apierrors.IsInvalid(err) {
			return err
		}
		if ctx.Err() != nil {
			return fmt.Errorf("after %v: %w", StartTimeout, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Kubectl runs kubectl against c with stdin (may be nil) and returns its
// standard output. The error includes kubectl's standard error.
func (c *Cluster) Kubectl(ctx context.Context, stdin io.Reader, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, "kubectl"), append([]string{"--kubeconfig=" + c.Kubeconfig}, args...)...)
	cmd.Stdin = stdin
	cmd.Env = append(os.Environ(), "KUBECTL_INTERACTIVE_DELETE=false")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

func writeKubeconfig(path, name string, cfg *rest.Config) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters[name] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: cfg.BearerToken}
	kc.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name}
	kc.CurrentContext = name
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	return nil
}

// getOK GETs url (with a bearer token unless empty) and expects 200 OK.
func getOK(ctx context.Context, client *http.Client, url, token string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%w: GET %s: %s: %s", errNotReady, url, resp.Status, lastLines(body, 5))
	}
	return nil
}

// lastLines returns the failed checks of a /readyz or /healthz body ("[-]"
// lines), or else its last n lines, for error messages.
func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	var failed []string
	for _, l := range lines {
		if strings.HasPrefix(l, "[-]") {
			failed = append(failed, l)
		}
	}
	if len(failed) > 0 {
		lines = failed
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
