package kubelab_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/braidmesh/braid/internal/kubelab"
)

// deployDir is the kustomize base, relative to this package.
var deployDir = filepath.Join("..", "..", "deploy")

// TestDeployManifests renders deploy/ with `kubectl kustomize`, applies it to
// a real apiserver with a server-side dry run (CRDs and the namespace for
// real first, so that the rest validates), then for real, and checks that
// the RBAC rules grant what the operator and agent need and no more.
func TestDeployManifests(t *testing.T) {
	bin := kubelab.Require(t)
	ctx := t.Context()
	rendered, err := exec.CommandContext(ctx, filepath.Join(bin, "kubectl"), "kustomize", deployDir).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = errors.New(string(ee.Stderr))
		}
		t.Fatalf("kubectl kustomize %s: %v", deployDir, err)
	}
	objs := decodeAll(t, rendered)

	var kinds []string
	var first []*unstructured.Unstructured // must exist before the rest validates
	for _, o := range objs {
		kinds = append(kinds, o.GetKind()+"/"+o.GetName())
		switch o.GetKind() {
		case "CustomResourceDefinition", "Namespace":
			first = append(first, o)
		case "ClusterRole", "ClusterRoleBinding":
		default:
			if o.GetNamespace() != "braid-system" {
				t.Errorf("%s/%s is in namespace %q, want braid-system", o.GetKind(), o.GetName(), o.GetNamespace())
			}
		}
	}
	slices.Sort(kinds)
	for _, want := range []string{
		"CustomResourceDefinition/serviceexports.multicluster.x-k8s.io",
		"CustomResourceDefinition/serviceimports.multicluster.x-k8s.io",
		"Namespace/braid-system",
		"Deployment/braid-operator", "Service/braid-operator", "DaemonSet/braid-agent",
		"ServiceAccount/braid-operator", "ServiceAccount/braid-agent",
		"ClusterRole/braid-operator", "ClusterRole/braid-agent",
		"ClusterRoleBinding/braid-operator", "ClusterRoleBinding/braid-agent",
	} {
		if !slices.Contains(kinds, want) {
			t.Errorf("rendered manifests lack %s; have %v", want, kinds)
		}
	}

	etcd := kubelab.StartEtcd(t)
	c := kubelab.StartCluster(t, etcd, kubelab.Options{Name: "deploy"})
	kubectl := func(objs []*unstructured.Unstructured, args ...string) string {
		t.Helper()
		out, err := c.Kubectl(ctx, encodeAll(t, objs), args...)
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	kubectl(first, "apply", "--server-side", "-f", "-")
	kubectl(nil, "wait", "--for=condition=Established", "--timeout=30s",
		"crd/serviceexports.multicluster.x-k8s.io", "crd/serviceimports.multicluster.x-k8s.io")
	out := kubectl(objs, "apply", "--server-side", "--dry-run=server", "-f", "-")
	if n := strings.Count(out, "(server dry run)"); n != len(objs) {
		t.Errorf("dry run applied %d of %d objects:\n%s", n, len(objs), out)
	}
	kubectl(objs, "apply", "--server-side", "-f", "-")

	// The rules, checked by the apiserver's own authorizer.
	const (
		operator = "system:serviceaccount:braid-system:braid-operator"
		agent    = "system:serviceaccount:braid-system:braid-agent"
	)
	for _, tc := range []struct {
		user                          string
		verb, group, resource, subres string
		allowed                       bool
	}{
		{operator, "watch", "", "services", "", true},
		{operator, "list", "", "pods", "", true},
		{operator, "list", "", "nodes", "", true},
		{operator, "watch", "", "namespaces", "", true},
		{operator, "watch", "discovery.k8s.io", "endpointslices", "", true},
		{operator, "create", "discovery.k8s.io", "endpointslices", "", true},
		{operator, "delete", "discovery.k8s.io", "endpointslices", "", true},
		{operator, "watch", "multicluster.x-k8s.io", "serviceexports", "", true},
		{operator, "update", "multicluster.x-k8s.io", "serviceexports", "status", true},
		{operator, "update", "multicluster.x-k8s.io", "serviceexports", "", false},
		{operator, "create", "multicluster.x-k8s.io", "serviceimports", "", true},
		{operator, "patch", "multicluster.x-k8s.io", "serviceimports", "", true},
		{operator, "create", "", "events", "", true},
		{operator, "create", "events.k8s.io", "events", "", true},
		{operator, "get", "", "secrets", "", false},
		// Derived Services of ServiceImports: created, updated, deleted.
		{operator, "create", "", "services", "", true},
		{operator, "delete", "", "services", "", true},
		{operator, "patch", "", "services", "", false},
		{operator, "create", "networking.k8s.io", "servicecidrs", "", true},
		{operator, "delete", "networking.k8s.io", "servicecidrs", "", false},
		{operator, "update", "", "pods", "", false},
		{agent, "watch", "", "nodes", "", true},
		{agent, "list", "", "pods", "", true},
		{agent, "watch", "", "services", "", true},
		{agent, "list", "discovery.k8s.io", "endpointslices", "", true},
		{agent, "watch", "networking.k8s.io", "networkpolicies", "", true},
		{agent, "update", "networking.k8s.io", "networkpolicies", "", false},
		{agent, "create", "discovery.k8s.io", "endpointslices", "", false},
		{agent, "patch", "", "nodes", "", true},
		{agent, "delete", "", "nodes", "", false},
		{agent, "list", "multicluster.x-k8s.io", "serviceimports", "", false},
		{agent, "get", "", "secrets", "", false},
	} {
		sar, err := c.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{
				User:   tc.user,
				Groups: []string{"system:serviceaccounts", "system:serviceaccounts:braid-system", "system:authenticated"},
				ResourceAttributes: &authorizationv1.ResourceAttributes{
					Namespace: "app", Verb: tc.verb, Group: tc.group, Resource: tc.resource, Subresource: tc.subres,
				},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("subject access review: %v", err)
		}
		if sar.Status.Allowed != tc.allowed {
			t.Errorf("%s may %s %s/%s %s: %v, want %v", tc.user[len("system:serviceaccount:braid-system:"):],
				tc.verb, tc.group, tc.resource, tc.subres, sar.Status.Allowed, tc.allowed)
		}
	}
}

func decodeAll(t *testing.T, data []byte) []*unstructured.Unstructured {
	t.Helper()
	var objs []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var o unstructured.Unstructured
		if err := dec.Decode(&o.Object); errors.Is(err, io.EOF) {
			return objs
		} else if err != nil {
			t.Fatalf("decode rendered manifests: %v", err)
		}
		if len(o.Object) > 0 {
			objs = append(objs, &o)
		}
	}
}

// encodeAll returns objs as a YAML stream of JSON documents.
func encodeAll(t *testing.T, objs []*unstructured.Unstructured) io.Reader {
	t.Helper()
	var buf bytes.Buffer
	for _, o := range objs {
		b, err := json.Marshal(o.Object)
		if err != nil {
			t.Fatal(err)
		}
		buf.WriteString("---\n")
		buf.Write(b)
		buf.WriteString("\n")
	}
	return &buf
}

// TestAgentFindsItsOwnSettings: the rendered agent DaemonSet passes no
// flag for what a node can find out itself (zone, region, node IPs,
// pod-facing interfaces, the cgroup v2 mount).
func TestAgentFindsItsOwnSettings(t *testing.T) {
	bin := kubelab.Require(t)
	rendered, err := exec.CommandContext(t.Context(), filepath.Join(bin, "kubectl"), "kustomize", deployDir).Output()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v", deployDir, err)
	}
	found := false
	for _, o := range decodeAll(t, rendered) {
		if o.GetKind() != "DaemonSet" || o.GetName() != "braid-agent" {
			continue
		}
		found = true
		containers, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
		for _, c := range containers {
			args, _, _ := unstructured.NestedStringSlice(c.(map[string]any), "args")
			for _, a := range args {
				for _, flag := range []string{"--zone", "--region", "--node-ip", "--interface", "--pod-devices", "--cgroup"} {
					if a == flag || strings.HasPrefix(a, flag+"=") {
						t.Errorf("agent DaemonSet passes %s; the agent finds it itself", a)
					}
				}
			}
		}
	}
	if !found {
		t.Fatal("no braid-agent DaemonSet rendered")
	}
}
