package node

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
)

// TestLabNode runs two lab nodes against a real kube-apiserver and checks
// what a kubelet must do: registration, pods with networking across nodes,
// probes and status, exec and logs through the apiserver and directly over
// SPDY and WebSocket, deletion, shutdown and leftovers of a killed node.
func TestLabNode(t *testing.T) {
	lab := newTestLab(t)
	client := lab.cluster.Client
	ctx := t.Context()
	a := lab.startNode(1, "zone-a", nil)
	b := lab.startNode(2, "zone-b", nil)
	lab.assignPodCIDR(a, lab.podCIDR(1))
	lab.assignPodCIDR(b, lab.podCIDR(2))

	t.Run("register", func(t *testing.T) {
		eventually(t, 30*time.Second, "node ready", func() error {
			nd, err := client.CoreV1().Nodes().Get(ctx, a.name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			for _, c := range nd.Status.Conditions {
				if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
					return nil
				}
			}
			return errorf("conditions %+v", nd.Status.Conditions)
		})
		nd, err := client.CoreV1().Nodes().Get(ctx, a.name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := nd.Labels[corev1.LabelTopologyZone]; got != "zone-a" {
			t.Errorf("zone label = %q, want zone-a", got)
		}
		if got := nd.Labels[corev1.LabelTopologyRegion]; got != "lab-region" {
			t.Errorf("region label = %q, want lab-region", got)
		}
		if len(nd.Status.Addresses) == 0 || nd.Status.Addresses[0].Type != corev1.NodeInternalIP || nd.Status.Addresses[0].Address != a.ip.String() {
			t.Errorf("addresses = %+v, want InternalIP %s", nd.Status.Addresses, a.ip)
		}
		if got := nd.Status.Capacity[corev1.ResourceMemory]; got.Cmp(resource.MustParse("8Gi")) != 0 {
			t.Errorf("memory capacity = %s, want 8Gi", got.String())
		}
		if nd.Status.DaemonEndpoints.KubeletEndpoint.Port != KubeletPort {
			t.Errorf("kubelet port = %d", nd.Status.DaemonEndpoints.KubeletEndpoint.Port)
		}
		var first *metav1.MicroTime
		eventually(t, 30*time.Second, "lease renewed", func() error {
			l, err := client.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, a.name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if err := checkLease(l, a.name); err != nil {
				return err
			}
			if first == nil {
				first = l.Spec.RenewTime
				return errorf("first renewal seen at %v", first.Time)
			}
			if !l.Spec.RenewTime.After(first.Time) {
				return errorf("renew time still %v", l.Spec.RenewTime.Time)
			}
			return nil
		})
	})

	// Routes to the other node's pod CIDR, via its underlay address.
	eventually(t, 30*time.Second, "host-gw routes", func() error {
		routes, err := ownRoutes(a.ns)
		if err != nil {
			return err
		}
		if len(routes) != 1 || routes[0].Dst.String() != lab.podCIDR(2) || !routes[0].Gw.Equal(b.ip) {
			return errorf("routes on %s: %+v", a.name, routes)
		}
		return nil
	})

	const index = "<h1>hello from a configmap</h1>\n"
	if _, err := client.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Data:       map[string]string{"index.html": index},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	web := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{
			NodeName: a.name,
			Containers: []corev1.Container{{
				Name: "nginx", Image: "nginx:1.27",
				Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: 80}},
				VolumeMounts:   []corev1.VolumeMount{{Name: "html", MountPath: "/usr/share/nginx/html"}},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromString("http")}}, PeriodSeconds: 1},
				LivenessProbe:  &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(80)}}, PeriodSeconds: 1},
			}},
			Volumes: []corev1.Volume{{Name: "html", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
				LocalObjectReference: corev1.LocalObjectReference{Name: "web"}}}}},
		},
	}
	ident := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "ident"},
		Spec: corev1.PodSpec{
			NodeName:   a.name,
			Containers: []corev1.Container{{Name: "app", Image: "registry.k8s.io/e2e-test-images/agnhost:2.53", Args: []string{"netexec", "--http-port=8080"}, Ports: []corev1.ContainerPort{{ContainerPort: 8080}}}},
		},
	}
	client1 := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "client"},
		Spec: corev1.PodSpec{
			NodeName: b.name,
			Containers: []corev1.Container{{
				Name: "sh", Image: "busybox:1.36",
				Command:        []string{"sh", "-c", "echo started $(POD_NAME); exec sleep 3600"},
				Env:            []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}, PeriodSeconds: 1},
			}},
		},
	}
	for _, p := range []*corev1.Pod{web, ident, client1} {
		if _, err := client.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create pod %s: %v", p.Name, err)
		}
	}
	webPod := lab.waitPodReady("default", "web")
	identPod := lab.waitPodReady("default", "ident")
	clientPod := lab.waitPodReady("default", "client")

	t.Run("status", func(t *testing.T) {
		for _, p := range []*corev1.Pod{webPod, identPod, clientPod} {
			if p.Status.Phase != corev1.PodRunning {
				t.Errorf("%s: phase %s", p.Name, p.Status.Phase)
			}
			cidr := lab.podCIDR(1)
			if p.Spec.NodeName == b.name {
				cidr = lab.podCIDR(2)
			}
			if !inCIDR(p.Status.PodIP, cidr) || len(p.Status.PodIPs) != 1 {
				t.Errorf("%s: pod IP %q (%v) not in %s", p.Name, p.Status.PodIP, p.Status.PodIPs, cidr)
			}
			if len(p.Status.ContainerStatuses) != 1 || !p.Status.ContainerStatuses[0].Ready || p.Status.ContainerStatuses[0].State.Running == nil {
				t.Errorf("%s: container statuses %+v", p.Name, p.Status.ContainerStatuses)
			}
			if p.Status.StartTime == nil || p.Status.HostIP == "" {
				t.Errorf("%s: start time %v, host IP %q", p.Name, p.Status.StartTime, p.Status.HostIP)
			}
		}
		// The pod's processes are in its cgroup under the node's parent.
		procs, err := os.ReadFile(filepath.Join(b.cgroup, podCgroupName(string(clientPod.UID)), "sh", "cgroup.procs"))
		if err != nil || len(bytes.TrimSpace(procs)) == 0 {
			t.Errorf("client container cgroup.procs = %q, %v; want its processes", procs, err)
		}
	})

	t.Run("exec-and-logs-through-apiserver", func(t *testing.T) {
		// Across nodes: client on b fetches the ConfigMap page from web on a.
		out, err := lab.kubectl("exec", "client", "--", "wget", "-qO-", "http://"+webPod.Status.PodIP+"/")
		if err != nil || out != index {
			t.Errorf("wget web from client = %q, %v; want %q", out, err, index)
		}
		out, err = lab.kubectl("exec", "client", "--", "wget", "-qO-", "http://"+identPod.Status.PodIP+":8080/")
		var id identity
		if err != nil || json.Unmarshal([]byte(out), &id) != nil || id.Pod != "ident" || id.Node != a.name || id.Cluster != lab.clusterName {
			t.Errorf("wget ident = %q, %v; want JSON naming pod ident, node %s, cluster %s", out, err, a.name, lab.clusterName)
		}
		_, err = lab.kubectl("exec", "client", "--", "sh", "-c", "exit 3")
		if err == nil || !strings.Contains(err.Error(), "exit status 3") {
			t.Errorf("exec exit 3: err = %v, want exit status 3", err)
		}
		out, err = lab.kubectl("logs", "client")
		if err != nil || out != "started client\n" {
			t.Errorf("kubectl logs client = %q, %v", out, err)
		}
		out, err = lab.kubectl("exec", "client", "--", "hostname")
		if err != nil || out != "client\n" {
			t.Errorf("hostname in pod client = %q, %v", out, err)
		}
		out, err = lab.kubectl("exec", "-i", "client", "--", "cat")
		if err != nil || out != "" {
			t.Errorf("exec -i cat with empty stdin = %q, %v", out, err)
		}
	})

	t.Run("exec-direct", func(t *testing.T) {
		// Both transports against the kubelet API itself.
		cfg := &rest.Config{Host: "https://" + b.ip.String() + ":10250", TLSClientConfig: rest.TLSClientConfig{Insecure: true}}
		u, _ := url.Parse(cfg.Host + "/exec/default/client/sh?command=sh&command=-c&command=read+x%3B+echo+got+$x%3B+echo+err+1>%262&input=1&output=1&error=1")
		spdyExec, err := remotecommand.NewSPDYExecutor(cfg, http.MethodPost, u)
		if err != nil {
			t.Fatal(err)
		}
		wsExec, err := remotecommand.NewWebSocketExecutor(cfg, http.MethodGet, u.String())
		if err != nil {
			t.Fatal(err)
		}
		for name, ex := range map[string]remotecommand.Executor{"spdy": spdyExec, "websocket": wsExec} {
			var stdout, stderr bytes.Buffer
			err := ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: strings.NewReader("hi\n"), Stdout: &stdout, Stderr: &stderr})
			if err != nil || stdout.String() != "got hi\n" || stderr.String() != "err\n" {
				t.Errorf("%s: stdout %q stderr %q err %v", name, stdout.String(), stderr.String(), err)
			}
		}
		u2, _ := url.Parse(cfg.Host + "/exec/default/client/sh?command=sh&command=-c&command=exit+7&output=1")
		ex, _ := remotecommand.NewWebSocketExecutor(cfg, http.MethodGet, u2.String())
		err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &bytes.Buffer{}})
		if ce, ok := err.(interface{ ExitStatus() int }); !ok || ce.ExitStatus() != 7 {
			t.Errorf("websocket exit 7: err = %v", err)
		}
		tty, _ := url.Parse(cfg.Host + "/exec/default/client/sh?command=tty&output=1&tty=1")
		ex, _ = remotecommand.NewSPDYExecutor(cfg, http.MethodPost, tty)
		var out bytes.Buffer
		err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &out, Tty: true})
		if err != nil || !strings.HasPrefix(out.String(), "/dev/pts/") {
			t.Errorf("tty: %q, %v", out.String(), err)
		}
	})

	t.Run("lifecycle", func(t *testing.T) {
		sh := func(name, script string) corev1.Container {
			return corev1.Container{Name: name, Image: "busybox", Command: []string{"sh", "-c", script}}
		}
		never, onFailure := corev1.RestartPolicyNever, corev1.RestartPolicyOnFailure
		liveness := sh("main", "exec sleep 3600")
		liveness.LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"false"}}}, InitialDelaySeconds: 1, PeriodSeconds: 1, FailureThreshold: 1}
		pods := []*corev1.Pod{
			{ObjectMeta: metav1.ObjectMeta{Name: "job"}, Spec: corev1.PodSpec{NodeName: b.name, RestartPolicy: never,
				InitContainers: []corev1.Container{sh("init", "echo init done")},
				Containers:     []corev1.Container{sh("main", "echo main; exit 2")}}},
			{ObjectMeta: metav1.ObjectMeta{Name: "ok"}, Spec: corev1.PodSpec{NodeName: b.name, RestartPolicy: onFailure,
				Containers: []corev1.Container{sh("main", "exit 0")}}},
			{ObjectMeta: metav1.ObjectMeta{Name: "crash"}, Spec: corev1.PodSpec{NodeName: b.name,
				Containers: []corev1.Container{sh("main", "echo run; exit 1")}}},
			{ObjectMeta: metav1.ObjectMeta{Name: "unhealthy"}, Spec: corev1.PodSpec{NodeName: b.name,
				Containers: []corev1.Container{liveness}}},
			{ObjectMeta: metav1.ObjectMeta{Name: "hostnet"}, Spec: corev1.PodSpec{NodeName: b.name, HostNetwork: true,
				Containers: []corev1.Container{sh("main", "exec sleep 3600")}}},
		}
		for _, p := range pods {
			if _, err := client.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		get := func(name string) *corev1.Pod {
			p, err := client.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			return p
		}
		eventually(t, 60*time.Second, "job failed", func() error {
			if p := get("job"); p.Status.Phase != corev1.PodFailed {
				return errorf("phase %s", p.Status.Phase)
			}
			return nil
		})
		job := get("job")
		if st := job.Status.InitContainerStatuses; len(st) != 1 || st[0].State.Terminated == nil || st[0].State.Terminated.ExitCode != 0 || st[0].State.Terminated.Reason != "Completed" {
			t.Errorf("job init status %+v", st)
		}
		if st := job.Status.ContainerStatuses; len(st) != 1 || st[0].State.Terminated == nil || st[0].State.Terminated.ExitCode != 2 || st[0].State.Terminated.Reason != "Error" {
			t.Errorf("job main status %+v", st)
		}
		if out, err := lab.kubectl("logs", "job", "-c", "init"); err != nil || out != "init done\n" {
			t.Errorf("logs job init = %q, %v", out, err)
		}
		if out, err := lab.kubectl("logs", "job", "-c", "main"); err != nil || out != "main\n" {
			t.Errorf("logs job main = %q, %v", out, err)
		}
		eventually(t, 60*time.Second, "ok succeeded", func() error {
			if p := get("ok"); p.Status.Phase != corev1.PodSucceeded {
				return errorf("phase %s", p.Status.Phase)
			}
			return nil
		})
		restarted := func(name string, code int32) {
			eventually(t, 60*time.Second, name+" restarted", func() error {
				p := get(name)
				if len(p.Status.ContainerStatuses) != 1 {
					return errorf("statuses %+v", p.Status.ContainerStatuses)
				}
				st := p.Status.ContainerStatuses[0]
				if st.RestartCount < 1 || st.LastTerminationState.Terminated == nil || st.LastTerminationState.Terminated.ExitCode != code {
					return errorf("restarts %d, last state %+v", st.RestartCount, st.LastTerminationState)
				}
				return nil
			})
		}
		restarted("crash", 1)
		restarted("unhealthy", 143) // SIGTERM ends sleep
		if p := lab.waitPodReady("default", "hostnet"); p.Status.PodIP != b.ip.String() {
			t.Errorf("hostNetwork pod IP %s, want the node's %s", p.Status.PodIP, b.ip)
		}
		if out, err := lab.kubectl("exec", "hostnet", "--", "hostname"); err != nil || out != b.name+"\n" {
			t.Errorf("hostname in hostNetwork pod = %q, %v; want %s", out, err, b.name)
		}
	})

	t.Run("delete", func(t *testing.T) {
		uid := string(webPod.UID)
		if err := client.CoreV1().Pods("default").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 60*time.Second, "pod web gone", func() error {
			_, err := client.CoreV1().Pods("default").Get(ctx, "web", metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return nil
			}
			return errorf("still there: %v", err)
		})
		if links, err := linksWithPrefix(a.ns, vethName(uid)); err != nil || len(links) != 0 {
			t.Errorf("veth of deleted pod: %v, %v", links, err)
		}
		if _, err := os.Stat(filepath.Join(a.cgroup, podCgroupName(uid))); !os.IsNotExist(err) {
			t.Errorf("cgroup of deleted pod: %v", err)
		}
	})

	t.Run("stop", func(t *testing.T) {
		a.stop(t)
		if cg := podCgroups(a.cgroup); len(cg) != 0 {
			t.Errorf("pod cgroups left after stop: %v", cg)
		}
		if links, err := linksWithPrefix(a.ns, "blp"); err != nil || len(links) != 0 {
			t.Errorf("pod veths left after stop: %v, %v", links, err)
		}
		if routes, err := ownRoutes(a.ns); err != nil || len(routes) != 0 {
			t.Errorf("host-gw routes left after stop: %v, %v", routes, err)
		}
	})

	t.Run("leftovers-of-killed-node", func(t *testing.T) {
		if err := b.cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		<-b.exited
		if cg := podCgroups(b.cgroup); len(cg) == 0 {
			t.Fatalf("a killed node left no pod cgroup; the test would prove nothing")
		}
		if err := inNetns(b.ns, func() error { return CleanupLeftovers(b.stateDir) }); err != nil {
			t.Fatalf("CleanupLeftovers: %v", err)
		}
		if cg := podCgroups(b.cgroup); len(cg) != 0 {
			t.Errorf("pod cgroups left: %v", cg)
		}
		if links, err := linksWithPrefix(b.ns, "blp"); err != nil || len(links) != 0 {
			t.Errorf("pod veths left: %v, %v", links, err)
		}
		if routes, err := ownRoutes(b.ns); err != nil || len(routes) != 0 {
			t.Errorf("host-gw routes left: %v, %v", routes, err)
		}
		if entries, _ := os.ReadDir(filepath.Join(b.stateDir, "pods")); len(entries) != 0 {
			t.Errorf("pod state left: %v", entries)
		}
	})
}

func checkLease(l *coordinationv1.Lease, node string) error {
	if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != node || l.Spec.RenewTime == nil || len(l.OwnerReferences) != 1 {
		return errorf("lease %+v", l.Spec)
	}
	return nil
}
