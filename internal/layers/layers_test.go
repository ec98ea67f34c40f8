package layers

import (
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const mod = "github.com/braidmesh/braid/"

type pkg struct {
	ImportPath string
	Doc        string
	Imports    []string
	Deps       []string
	Name       string
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-json", "-tags", "e2e", mod+"...")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(out)
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("go list: %v", err)
	}
	return pkgs
}

// Layers, lowest first. The join bundle and the status document sit
// between the leaves and the loops: the join bundle needs clustermesh and
// the etcd backend, and the broker (a layer-1 package of STYLE.md) issues
// it; the status document needs only leaves, and the broker, operator and
// agent all serve it.
const (
	layerLeaf = iota
	layerJoin
	layerLoop
	layerRoot
	layerCmd
)

// layer returns the layer of a Braid package, or -1 for packages outside
// the layering (tests helpers, tools, internal).
func layer(path string) int {
	rel := strings.TrimPrefix(path, mod)
	switch {
	case strings.HasPrefix(rel, "cmd/"), strings.HasPrefix(rel, "e2e"):
		return layerCmd
	case rel == "clustermesh/operator", rel == "clustermesh/agent":
		return layerRoot
	case rel == "clustermesh/join", rel == "clustermesh/status":
		return layerJoin
	case rel == "clustermesh", rel == "bpf", rel == "tunnel", rel == "kvstore",
		rel == "kvstore/etcd", rel == "kvstore/memory":
		return layerLeaf
	case strings.HasPrefix(rel, "clustermesh/") && strings.Count(rel, "/") == 1:
		return layerLoop
	}
	return -1
}

// layerViolations checks that imports point to lower layers, that loops do
// not import each other and that a leaf imports no other leaf.
func layerViolations(pkgs []pkg) []string {
	var out []string
	for _, p := range pkgs {
		from := layer(p.ImportPath)
		if from < 0 {
			continue
		}
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, mod) {
				continue
			}
			if imp == mod+"reconcile" {
				continue // below every layer: see TestReconcileImportsNoBraid
			}
			to := layer(imp)
			if to < 0 {
				continue
			}
			switch {
			case to > from:
				out = append(out, fmt.Sprintf("%s (layer %d) imports %s (layer %d): imports must point to lower layers", p.ImportPath, from, imp, to))
			case to == from && from == layerLoop:
				out = append(out, fmt.Sprintf("%s imports %s: layer-1 packages must not import each other; wire them in a composition root", p.ImportPath, imp))
			case to == from && from == layerLeaf && !strings.HasPrefix(p.ImportPath, imp+"/"):
				out = append(out, fmt.Sprintf("%s imports %s: a leaf imports no other leaf (a backend only its own interface)", p.ImportPath, imp))
			}
		}
	}
	return out
}

// TestReconcileImportsNoBraid keeps the reconcile loop below every layer,
// so that leaves (kvstore/etcd) and loops alike may use it.
func TestReconcileImportsNoBraid(t *testing.T) {
	for _, p := range listPackages(t) {
		if p.ImportPath != mod+"reconcile" {
			continue
		}
		for _, d := range p.Deps {
			if strings.HasPrefix(d, mod) {
				t.Errorf("%s links %s: the loop package must import nothing from Braid", p.ImportPath, d)
			}
		}
		return
	}
	t.Fatalf("package %sreconcile not found", mod)
}

// forbidden lists, per package (and the packages under it), what it must
// not link. A binary's package links everything in its Deps.
var forbidden = map[string][]string{
	// braid talks to the status API, the kvstore and (for join) to
	// clusters with client-go: no datapath, no composition roots.
	mod + "cmd/braid": {"github.com/cilium/ebpf", mod + "clustermesh/operator", mod + "clustermesh/agent"},
	// braid-agent reads a join bundle; it does not run etcd.
	mod + "cmd/braid-agent": {"go.etcd.io/etcd/server"},
	mod + "kvstore":         {"k8s.io/client-go"},
}

func under(path, prefix string) bool { return path == prefix || strings.HasPrefix(path, prefix+"/") }

func forbiddenViolations(pkgs []pkg) []string {
	var out []string
	for _, p := range pkgs {
		for prefix, deps := range forbidden {
			if !under(p.ImportPath, prefix) {
				continue
			}
			for _, d := range p.Deps {
				for _, f := range deps {
					if under(d, f) {
						out = append(out, fmt.Sprintf("%s links %s", p.ImportPath, d))
					}
				}
			}
		}
	}
	return out
}

// allowedImports lists, per package (and the packages under it), the only
// non-standard-library packages it may import directly (each with the
// packages under it).
var allowedImports = map[string][]string{
	// The user commands: the status API, the kvstore, the join bundle and
	// client-go (with the API types it speaks and the YAML library
	// apimachinery itself uses, for deploy/'s manifests and -o yaml).
	mod + "cmd/braid/cli": {
		mod + "clustermesh", mod + "clustermesh/status", mod + "kvstore", mod + "clustermesh/join",
		"k8s.io/client-go", "k8s.io/api", "k8s.io/apimachinery", "sigs.k8s.io/yaml",
		"github.com/spf13/cobra", "github.com/spf13/pflag",
	},
}

// exact marks the Braid packages above whose subpackages are not allowed
// along with them (clustermesh's subpackages are the loops and roots).
var exact = map[string]bool{mod + "clustermesh": true}

func importViolations(pkgs []pkg) []string {
	var out []string
	for _, p := range pkgs {
		for prefix, allowed := range allowedImports {
			if !under(p.ImportPath, prefix) {
				continue
			}
			for _, imp := range p.Imports {
				if stdlib(imp) || under(imp, prefix) || slices.ContainsFunc(allowed, func(a string) bool {
					return imp == a || !exact[a] && under(imp, a)
				}) {
					continue
				}
				out = append(out, fmt.Sprintf("%s imports %s: it may import only the standard library and %s", p.ImportPath, imp, strings.Join(allowed, ", ")))
			}
		}
	}
	return out
}

// stdlib reports whether path is a standard library package: its first
// element has no dot.
func stdlib(path string) bool {
	first, _, _ := strings.Cut(path, "/")
	return !strings.Contains(first, ".")
}

func TestImportsRunOneWay(t *testing.T) {
	for _, v := range layerViolations(listPackages(t)) {
		t.Error(v)
	}
}

func TestForbiddenDependencies(t *testing.T) {
	for _, v := range forbiddenViolations(listPackages(t)) {
		t.Error(v)
	}
}

func TestAllowedImports(t *testing.T) {
	for _, v := range importViolations(listPackages(t)) {
		t.Error(v)
	}
}

// TestRulesCatchViolations runs the checks on a made-up import graph that
// breaks every rule once, and on one that breaks none, so a check that
// cannot fail fails here.
func TestRulesCatchViolations(t *testing.T) {
	bad := []pkg{
		{ImportPath: mod + "cmd/braid", Deps: []string{"fmt", "github.com/cilium/ebpf/link", mod + "clustermesh/operator", mod + "clustermesh/agent"}},
		{ImportPath: mod + "cmd/braid/demo", Deps: []string{mod + "clustermesh/operator"}},
		{ImportPath: mod + "cmd/braid-agent", Deps: []string{"go.etcd.io/etcd/server/v3/embed"}},
		{ImportPath: mod + "kvstore/etcd", Deps: []string{"k8s.io/client-go/rest"}},
		{ImportPath: mod + "cmd/braid/cli", Imports: []string{"fmt", mod + "clustermesh/status", mod + "clustermesh/remote", "github.com/cilium/ebpf"}},
		{ImportPath: mod + "clustermesh/join", Imports: []string{mod + "clustermesh/publish"}},
		{ImportPath: mod + "clustermesh/publish", Imports: []string{mod + "clustermesh/remote"}},
		{ImportPath: mod + "bpf", Imports: []string{mod + "clustermesh"}},
		{ImportPath: mod + "clustermesh/remote", Imports: []string{mod + "clustermesh/agent"}},
	}
	got := slices.Concat(layerViolations(bad), forbiddenViolations(bad), importViolations(bad))
	want := []string{
		"cmd/braid links github.com/cilium/ebpf/link",
		"cmd/braid links " + mod + "clustermesh/operator",
		"cmd/braid links " + mod + "clustermesh/agent",
		"cmd/braid/demo links " + mod + "clustermesh/operator",
		"cmd/braid-agent links go.etcd.io/etcd/server/v3/embed",
		"kvstore/etcd links k8s.io/client-go/rest",
		"cmd/braid/cli imports " + mod + "clustermesh/remote:",
		"cmd/braid/cli imports github.com/cilium/ebpf:",
		"clustermesh/join (layer 1) imports " + mod + "clustermesh/publish (layer 2)",
		"clustermesh/publish imports " + mod + "clustermesh/remote: layer-1 packages must not import each other",
		"bpf imports " + mod + "clustermesh: a leaf imports no other leaf",
		"clustermesh/remote (layer 2) imports " + mod + "clustermesh/agent (layer 3)",
	}
	for _, w := range want {
		if !slices.ContainsFunc(got, func(v string) bool { return strings.Contains(v, w) }) {
			t.Errorf("no violation reported for %q; got:\n%s", w, strings.Join(got, "\n"))
		}
	}
	if len(got) != len(want) {
		t.Errorf("got %d violations, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}

	good := []pkg{
		{ImportPath: mod + "cmd/braid", Deps: []string{"fmt", mod + "clustermesh/broker", "go.etcd.io/etcd/server/v3/embed", "k8s.io/client-go/kubernetes"}},
		{ImportPath: mod + "cmd/braid-agent", Deps: []string{"github.com/cilium/ebpf", mod + "clustermesh/agent", "go.etcd.io/etcd/client/v3"}},
		{ImportPath: mod + "cmd/braid/cli", Imports: []string{"fmt", "net/http", mod + "clustermesh", mod + "clustermesh/status", mod + "clustermesh/join",
			mod + "kvstore", "k8s.io/client-go/kubernetes", "k8s.io/apimachinery/pkg/apis/meta/v1", "github.com/spf13/cobra"}},
		{ImportPath: mod + "clustermesh/broker", Imports: []string{mod + "clustermesh/join", mod + "kvstore/etcd"}},
		{ImportPath: mod + "clustermesh/join", Imports: []string{mod + "clustermesh", mod + "kvstore/etcd"}},
		{ImportPath: mod + "kvstore/etcd", Imports: []string{mod + "kvstore"}},
	}
	if got := slices.Concat(layerViolations(good), forbiddenViolations(good), importViolations(good)); len(got) > 0 {
		t.Errorf("violations reported for a graph that breaks no rule:\n%s", strings.Join(got, "\n"))
	}
}

func TestEveryPackageHasDoc(t *testing.T) {
	for _, p := range listPackages(t) {
		if p.Doc == "" {
			t.Errorf("package %s has no package doc comment (add a doc.go)", p.ImportPath)
		}
	}
}
