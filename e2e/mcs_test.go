//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/braidmesh/braid/internal/kubelab"
	"github.com/braidmesh/braid/internal/lab"
	"github.com/braidmesh/braid/internal/testenv"
)

// mcsManifests: a "hello" Service (HTTP on 8080, answered by the lab's
// stand-in with the pod's identity) exported with a ServiceExport, and a
// client pod to resolve and call from.
const mcsManifests = `
apiVersion: v1
kind: Namespace
metadata: {name: mcs}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: hello, namespace: mcs}
spec:
  replicas: 1
  selector: {matchLabels: {app: hello}}
  template:
    metadata: {labels: {app: hello}}
    spec:
      containers:
        - name: hello
          image: braid.dev/stand-in:1
          ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: hello, namespace: mcs}
spec:
  selector: {app: hello}
  ports: [{name: http, port: %d, targetPort: 8080, protocol: TCP}]
---
apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceExport
metadata: {name: hello, namespace: mcs}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: mcs}
spec:
  containers:
    - name: client
      image: busybox:1
      command: ["sleep", "infinity"]
`

// TestMCS: two clusters export "hello" (west a second later); from a pod in
// east, hello.mcs.svc.clusterset.local resolves through the cluster's
// CoreDNS to the ServiceImport's ClusterSetIP and a connect to it reaches
// both clusters, also while both operators restart; after the last export
// is removed the name stops resolving.
// Then a port conflict: Conflict=True on both exports naming both clusters,
// and the import keeps the older export's port.
func TestMCS(t *testing.T) {
	kubeBin := requireLab(t)
	coredns, err := kubelab.CoreDNS()
	if err != nil {
		testenv.Skipf(t, "coredns not built: run `make kube-tools` (tools/coredns/build.sh): %v", err)
	}
	ctx := context.Background()
	l, err := lab.Up(ctx, lab.Config{Clusters: 2, Nodes: 1, Dir: t.TempDir(), KubeBin: kubeBin, Bin: bin, CoreDNS: coredns,
		LeaseTTL: 10 * time.Second, Progress: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("tear down the lab: %v", err)
		}
		checkNoLeftovers(t, l.Run, l.Dir)
	})
	e := &labEnv{Lab: l, east: l.Cluster("east"), west: l.Cluster("west")}
	for _, c := range []*lab.Cluster{e.east, e.west} {
		e.mustKubectl(t, c, strings.NewReader(fmt.Sprintf(mcsManifests, 8080)), "apply", "-f", "-")
		e.mustKubectl(t, c, nil, "-n", "mcs", "rollout", "status", "deployment/hello", "--timeout=180s")
		e.mustKubectl(t, c, nil, "-n", "mcs", "wait", "pod/client", "--for=condition=Ready", "--timeout=180s")
	}
	const name = "hello.mcs.svc.clusterset.local"
	importIP := func(c *lab.Cluster) (string, error) {
		out, err := e.kubectl(t, c, nil, "-n", "mcs", "get", "serviceimports.v1beta1.multicluster.x-k8s.io", "hello", "-o", "jsonpath={.spec.ips[0]}")
		if err != nil || out == "" {
			return "", fmt.Errorf("no ClusterSetIP yet: %q %v", out, err)
		}
		return strings.TrimSpace(out), nil
	}
	var ip string
	testenv.Eventually(t, 90*time.Second, func() (err error) {
		ip, err = importIP(e.east)
		return err
	})
	t.Logf("east's ClusterSetIP for hello: %s", ip)
	testenv.Eventually(t, 90*time.Second, func() error {
		out, err := e.kubectl(t, e.east, nil, "-n", "mcs", "exec", "client", "--", "busybox", "nslookup", name)
		if err != nil || !strings.Contains(out, "Address: "+ip) && !strings.Contains(out, "Address 1: "+ip) {
			return fmt.Errorf("nslookup %s: %q, %v (want %s)", name, out, err, ip)
		}
		return nil
	})
	heard := map[string]bool{}
	testenv.Eventually(t, 90*time.Second, func() error {
		out, err := e.kubectl(t, e.east, nil, "-n", "mcs", "exec", "client", "--", "curl", "-s", "--max-time", "2", "http://"+name+":8080/")
		if err != nil {
			return fmt.Errorf("curl: %q, %v", out, err)
		}
		var id identity
		if err := json.Unmarshal([]byte(out), &id); err != nil || id.Cluster == "" {
			return fmt.Errorf("answer %q is not an identity: %v", out, err)
		}
		heard[id.Cluster] = true
		if !heard["east"] || !heard["west"] {
			return fmt.Errorf("heard only from %v", heard)
		}
		return nil
	})

	// Both operators restart while east's client connects to the
	// ClusterSetIP: the import keeps its ClusterSetIP and derived Service,
	// and no connect fails (the agents keep serving it throughout).
	derivedUID := func() string {
		return strings.TrimSpace(e.mustKubectl(t, e.east, nil, "-n", "mcs", "get", "services", "-l", "multicluster.kubernetes.io/service-name=hello",
			"-o", "jsonpath={.items[*].metadata.uid}"))
	}
	uid := derivedUID()
	res, kill := e.connectLoopFrom(t, e.east, []string{"-n", "mcs", "exec", "client"}, "http://"+ip+":8080/", 40)
	defer kill()
	for _, c := range []*lab.Cluster{e.east, e.west} {
		c.StopOperator(syscall.SIGTERM)
		if err := c.StartOperator(); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case r := <-res:
		if r.failed != 0 {
			t.Fatalf("%d connects to the ClusterSetIP failed across the operator restarts (-1: the loop did not finish):\n%s", r.failed, r.failures)
		}
	case <-time.After(3 * time.Minute):
		t.Fatal("connect loop did not finish")
	}
	e.waitSynced(t)
	if got, err := importIP(e.east); err != nil || got != ip {
		t.Fatalf("after the operator restarts the ClusterSetIP is %q (%v), was %s", got, err, ip)
	}
	if got := derivedUID(); got != uid {
		t.Fatalf("after the operator restarts the derived Service is %q, was %q", got, uid)
	}

	// The import's EndpointSlices, as CoreDNS and the MCS API read them:
	// one per exporting cluster, accepted by a real API server.
	testenv.Eventually(t, 90*time.Second, func() error {
		out, err := e.kubectl(t, e.east, nil, "-n", "mcs", "get", "endpointslices", "-l", "multicluster.kubernetes.io/service-name=hello",
			"-o", `jsonpath={range .items[*]}{.metadata.labels.multicluster\.kubernetes\.io/source-cluster}={.endpoints[*].addresses[0]} {end}`)
		if err != nil {
			return err
		}
		withEndpoint := map[string]bool{}
		for _, f := range strings.Fields(out) {
			if c, addr, _ := strings.Cut(f, "="); addr != "" {
				withEndpoint[c] = true
			}
		}
		if !withEndpoint["east"] || !withEndpoint["west"] {
			return fmt.Errorf("MCS EndpointSlices %q: want one with an endpoint from east and from west", out)
		}
		return nil
	})

	// The last export goes: the import, and the name, go too.
	for _, c := range []*lab.Cluster{e.east, e.west} {
		e.mustKubectl(t, c, nil, "-n", "mcs", "delete", "serviceexports.v1beta1.multicluster.x-k8s.io", "hello")
	}
	testenv.Eventually(t, 90*time.Second, func() error {
		// NXDOMAIN, not any failure: a CoreDNS that stopped answering
		// must not pass for a name that is gone.
		out, err := e.kubectl(t, e.east, nil, "-n", "mcs", "exec", "client", "--", "busybox", "nslookup", name)
		if !strings.Contains(out, "NXDOMAIN") {
			return fmt.Errorf("%s still resolves or the lookup failed otherwise: %q, %v", name, out, err)
		}
		return nil
	})

	// A port conflict: east exports port 8080 first, west 8081 a second
	// later (creation timestamps have second granularity).
	e.mustKubectl(t, e.east, strings.NewReader("apiVersion: multicluster.x-k8s.io/v1beta1\nkind: ServiceExport\nmetadata: {name: hello, namespace: mcs}\n"), "apply", "-f", "-")
	testenv.Eventually(t, 90*time.Second, func() error { _, err := importIP(e.east); return err })
	// West's export must be created in a later second than east's
	// (creation timestamps have second granularity).
	created := e.mustKubectl(t, e.east, nil, "-n", "mcs", "get", "serviceexports.v1beta1.multicluster.x-k8s.io", "hello", "-o", "jsonpath={.metadata.creationTimestamp}")
	eastAt, err := time.Parse(time.RFC3339, strings.TrimSpace(created))
	if err != nil {
		t.Fatalf("east's export creation time %q: %v", created, err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if !time.Now().After(eastAt.Add(time.Second)) {
			return fmt.Errorf("still within east's export's second %s", eastAt)
		}
		return nil
	})
	e.mustKubectl(t, e.west, nil, "-n", "mcs", "patch", "service", "hello", "--type=json", `-p=[{"op":"replace","path":"/spec/ports/0/port","value":8081}]`)
	e.mustKubectl(t, e.west, strings.NewReader("apiVersion: multicluster.x-k8s.io/v1beta1\nkind: ServiceExport\nmetadata: {name: hello, namespace: mcs}\n"), "apply", "-f", "-")
	for _, c := range []*lab.Cluster{e.east, e.west} {
		testenv.Eventually(t, 90*time.Second, func() error {
			out, err := e.kubectl(t, c, nil, "-n", "mcs", "get", "serviceexports.v1beta1.multicluster.x-k8s.io", "hello",
				"-o", `jsonpath={.status.conditions[?(@.type=="Conflict")].status} {.status.conditions[?(@.type=="Conflict")].message}`)
			if err != nil || !strings.HasPrefix(out, "True ") || !strings.Contains(out, "conflicting clusters: east, west") {
				return fmt.Errorf("cluster %s: Conflict condition %q, %v", c.Name, out, err)
			}
			return nil
		})
		testenv.Eventually(t, 90*time.Second, func() error {
			out, err := e.kubectl(t, c, nil, "-n", "mcs", "get", "serviceimports.v1beta1.multicluster.x-k8s.io", "hello", "-o", "jsonpath={.spec.ports[*].port}")
			if err != nil || strings.TrimSpace(out) != "8080" {
				return fmt.Errorf("cluster %s: import ports %q, %v (want the older export's 8080)", c.Name, out, err)
			}
			return nil
		})
	}
	e.failed(t)
}
