package node

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestExpand(t *testing.T) {
	env := map[string]string{"A": "1", "POD": "web"}
	for in, want := range map[string]string{
		"$(A)":          "1",
		"x$(POD)y":      "xweby",
		"$(MISSING)":    "$(MISSING)",
		"$$(A)":         "$(A)",
		"cost $5":       "cost $5",
		"$(unterminate": "$(unterminate",
		"trailing $":    "trailing $",
	} {
		if got := expand(in, env); got != want {
			t.Errorf("expand(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLookProgram(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "tool")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "data"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	path := "/nonexistent:" + dir
	if p, ok := lookProgram("tool", path); !ok || p != exe {
		t.Errorf("lookProgram(tool) = %q, %v", p, ok)
	}
	if _, ok := lookProgram("data", path); ok {
		t.Error("a file without exec bits was taken for a program")
	}
	if _, ok := lookProgram("nginx-not-here", path); ok {
		t.Error("a missing program was found")
	}
	if p, ok := lookProgram(exe, ""); !ok || p != exe {
		t.Errorf("absolute path: %q, %v", p, ok)
	}
	c := &corev1.Container{Command: []string{"sh", "-c"}, Args: []string{"echo $(X)"}}
	if got := containerArgv(c, map[string]string{"X": "hi"}); strings.Join(got, "|") != "sh|-c|echo hi" {
		t.Errorf("containerArgv = %q", got)
	}
}

func TestIPAM(t *testing.T) {
	a, err := newIPAM("10.1.2.0/29")
	if err != nil {
		t.Fatal(err)
	}
	if a.gateway() != netip.MustParseAddr("10.1.2.1") || a.broadcast() != netip.MustParseAddr("10.1.2.7") {
		t.Fatalf("gateway %s broadcast %s", a.gateway(), a.broadcast())
	}
	var got []string
	for i := range 5 {
		ip, err := a.allocate("uid" + string(rune('a'+i)))
		if err != nil {
			t.Fatalf("allocate %d: %v", i, err)
		}
		got = append(got, ip.String())
	}
	if strings.Join(got, " ") != "10.1.2.2 10.1.2.3 10.1.2.4 10.1.2.5 10.1.2.6" {
		t.Errorf("allocated %v", got)
	}
	if _, err := a.allocate("another"); err == nil {
		t.Error("allocation from an exhausted CIDR succeeded")
	}
	if ip, _ := a.allocate("uidb"); ip.String() != "10.1.2.3" {
		t.Errorf("same UID got a new address %s", ip)
	}
	a.release(netip.MustParseAddr("10.1.2.3"))
	if ip, err := a.allocate("another"); err != nil || ip.String() != "10.1.2.3" {
		t.Errorf("after release: %s, %v", ip, err)
	}
	for _, bad := range []string{"fd00::/64", "10.0.0.0/31", "nonsense"} {
		if _, err := newIPAM(bad); err == nil {
			t.Errorf("newIPAM(%q) accepted", bad)
		}
	}
}

func TestStandinServes(t *testing.T) {
	dir := t.TempDir()
	html := filepath.Join(dir, "html")
	os.MkdirAll(filepath.Join(html, "sub"), 0o755)
	os.WriteFile(filepath.Join(html, "index.html"), []byte("root page"), 0o644)
	os.WriteFile(filepath.Join(html, "sub", "a.txt"), []byte("a file"), 0o644)
	single := filepath.Join(dir, "single.conf")
	os.WriteFile(single, []byte("one file"), 0o644)

	s := &standin{Pod: "web", Namespace: "default", Node: "n1", Cluster: "east", PodIP: "10.0.0.2",
		Mounts: []standinMount{{Path: "/usr/share/nginx/html", Dir: html}, {Path: "/etc/app/app.conf", Dir: single}},
		log:    discardLogger()}
	for path, want := range map[string]string{
		"/":                                "root page",
		"/index.html":                      "root page",
		"/sub/a.txt":                       "a file",
		"/usr/share/nginx/html/":           "root page",
		"/usr/share/nginx/html/sub/a.txt":  "a file",
		"/etc/app/app.conf":                "one file",
		"/app.conf":                        "one file",
		"/../../etc/passwd":                "404 page not found\n",
		"/usr/share/nginx/html/../../../x": "404 page not found\n",
	} {
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "http://pod"+path, nil))
		if got := rec.Body.String(); got != want {
			t.Errorf("GET %s = %q, want %q", path, got, want)
		}
	}

	plain := &standin{Pod: "api", Namespace: "ns", Container: "c", Node: "n2", Cluster: "west", PodIP: "10.0.1.5", log: discardLogger()}
	rec := httptest.NewRecorder()
	plain.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "http://pod/anything", nil))
	var id identity
	if err := json.Unmarshal(rec.Body.Bytes(), &id); err != nil || id != (identity{Pod: "api", Namespace: "ns", Container: "c", Node: "n2", Cluster: "west", PodIP: "10.0.1.5"}) {
		t.Errorf("identity = %+v, %v (body %q)", id, err, rec.Body.String())
	}
	if _, err := parseMount("relative=/x"); err == nil {
		t.Error("parseMount accepted a relative mount path")
	}
}

func TestWriteLogs(t *testing.T) {
	base := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var b bytes.Buffer
	for i, l := range []string{"stdout F one", "stderr F two", "stdout P thr", "stdout F ee", "stdout F four"} {
		b.WriteString(base.Add(time.Duration(i)*time.Second).Format(time.RFC3339Nano) + " " + l + "\n")
	}
	b.WriteString("garbage line\n")
	path := filepath.Join(t.TempDir(), "0.log")
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	read := func(o logOptions) string {
		var out bytes.Buffer
		if err := writeLogs(t.Context(), &out, path, o, func() bool { return false }); err != nil {
			t.Fatal(err)
		}
		return out.String()
	}
	all := logOptions{tailLines: -1, limitBytes: -1}
	if got := read(all); got != "one\ntwo\nthree\nfour\n" {
		t.Errorf("all = %q", got)
	}
	tail := all
	tail.tailLines = 2
	if got := read(tail); got != "four\n" { // the garbage line counts as a line
		t.Errorf("tail 2 = %q", got)
	}
	limit := all
	limit.limitBytes = 6
	if got := read(limit); got != "one\ntw" {
		t.Errorf("limit 6 = %q", got)
	}
	since := all
	since.since = base.Add(3 * time.Second)
	if got := read(since); got != "ee\nfour\n" {
		t.Errorf("since = %q", got)
	}
	ts := all
	ts.timestamps = true
	if got := read(ts); !strings.HasPrefix(got, base.Format(time.RFC3339Nano)+" one\n") {
		t.Errorf("timestamps = %q", got)
	}
	if _, err := parseLogOptions(map[string][]string{"tailLines": {"-3"}}); err == nil {
		t.Error("negative tailLines accepted")
	}
}

func TestDesiredRoutes(t *testing.T) {
	node := func(name, cidr, ip string) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDR: cidr},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}}}
	}
	own := netip.MustParsePrefix("10.9.0.0/24")
	want, err := desiredRoutes("self", own, []*corev1.Node{
		node("self", "10.9.0.0/24", "192.168.0.1"),
		node("b", "10.9.1.0/24", "192.168.0.2"),
		node("c", "10.9.0.128/25", "192.168.0.3"), // overlaps ours
		node("d", "bogus", "192.168.0.4"),
		node("e", "10.9.2.0/24", "not-an-ip"),
		node("f", "", "192.168.0.6"), // no CIDR yet: silently skipped
	})
	if len(want) != 1 || want[netip.MustParsePrefix("10.9.1.0/24")] != netip.MustParseAddr("192.168.0.2") {
		t.Errorf("routes = %v", want)
	}
	for _, name := range []string{"node c", "node d", "node e"} {
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("error %v does not name %s", err, name)
		}
	}
}

func TestPodPhase(t *testing.T) {
	mk := func(state corev1.ContainerState, final bool, code int32) *container {
		return &container{state: state, final: final, exitCode: code}
	}
	running := corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}
	waiting := corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}}
	done := corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{}}
	pod := &corev1.Pod{Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever}}
	for _, tc := range []struct {
		name string
		cs   []*container
		want corev1.PodPhase
	}{
		{"not started", []*container{mk(running, false, 0), mk(waiting, false, 0)}, corev1.PodPending},
		{"running", []*container{mk(running, false, 0), mk(done, true, 0)}, corev1.PodRunning},
		{"succeeded", []*container{mk(done, true, 0), mk(done, true, 0)}, corev1.PodSucceeded},
		{"failed", []*container{mk(done, true, 0), mk(done, true, 1)}, corev1.PodFailed},
		{"none", nil, corev1.PodPending},
	} {
		if got := podPhase(pod, tc.cs, false); got != tc.want {
			t.Errorf("%s: phase %s, want %s", tc.name, got, tc.want)
		}
	}
	if got := podPhase(pod, nil, true); got != corev1.PodFailed {
		t.Errorf("failed init: %s", got)
	}
}

func TestMergeConditionsKeepsTransitionTimes(t *testing.T) {
	then := metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	old := []corev1.PodCondition{
		{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: then},
		{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: then},
		{Type: "example.com/gate", Status: corev1.ConditionTrue, LastTransitionTime: then},
	}
	got := mergeConditions(old, []corev1.PodCondition{
		{Type: corev1.PodReady, Status: corev1.ConditionTrue},
		{Type: corev1.ContainersReady, Status: corev1.ConditionFalse},
	})
	byType := map[corev1.PodConditionType]corev1.PodCondition{}
	for _, c := range got {
		byType[c.Type] = c
	}
	if !byType[corev1.PodReady].LastTransitionTime.Time.Equal(then.Time) {
		t.Error("unchanged condition got a new transition time")
	}
	if byType[corev1.ContainersReady].LastTransitionTime.Time.Equal(then.Time) {
		t.Error("changed condition kept its old transition time")
	}
	if _, ok := byType["example.com/gate"]; !ok {
		t.Error("a condition owned by someone else was dropped")
	}
}

func TestParseCapacity(t *testing.T) {
	c, err := ParseCapacity("cpu=2, memory=4Gi,pods=50")
	if err != nil || c.Cpu().Value() != 2 || c.Memory().String() != "4Gi" || c.Pods().Value() != 50 {
		t.Errorf("ParseCapacity = %v, %v", c, err)
	}
	for _, bad := range []string{"cpu", "cpu=lots", "=1"} {
		if _, err := ParseCapacity(bad); err == nil {
			t.Errorf("ParseCapacity(%q) accepted", bad)
		}
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
