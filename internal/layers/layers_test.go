package layers

import (
	"encoding/json"
	"io"
	"os/exec"
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

// layer returns the layer of a Braid package, or -1 for packages outside
// the layering (tests helpers, tools, internal).
func layer(path string) int {
	rel := strings.TrimPrefix(path, mod)
	switch {
	case strings.HasPrefix(rel, "cmd/"), strings.HasPrefix(rel, "e2e"):
		return 3
	case rel == "clustermesh/operator", rel == "clustermesh/agent":
		return 2
	case rel == "clustermesh", rel == "bpf", rel == "tunnel", rel == "kvstore",
		rel == "kvstore/etcd", rel == "kvstore/memory":
		return 0
	case strings.HasPrefix(rel, "clustermesh/") && strings.Count(rel, "/") == 1:
		return 1
	}
	return -1
}

func TestImportsRunOneWay(t *testing.T) {
	for _, p := range listPackages(t) {
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
				t.Errorf("%s (layer %d) imports %s (layer %d): imports must point to lower layers", p.ImportPath, from, imp, to)
			case to == from && from == 1:
				t.Errorf("%s imports %s: layer-1 packages must not import each other; wire them in a composition root", p.ImportPath, imp)
			case to == from && from == 0 && !strings.HasPrefix(p.ImportPath, imp+"/"):
				t.Errorf("%s imports %s: a leaf imports no other leaf (a backend only its own interface)", p.ImportPath, imp)
			}
		}
	}
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

func TestForbiddenDependencies(t *testing.T) {
	forbidden := map[string][]string{
		mod + "cmd/braid": {"github.com/cilium/ebpf"},
		mod + "kvstore":   {"k8s.io/client-go"},
	}
	for _, p := range listPackages(t) {
		for prefix, deps := range forbidden {
			if p.ImportPath != prefix && !strings.HasPrefix(p.ImportPath, prefix+"/") {
				continue
			}
			for _, d := range p.Deps {
				for _, f := range deps {
					if d == f || strings.HasPrefix(d, f+"/") {
						t.Errorf("%s links %s", p.ImportPath, d)
					}
				}
			}
		}
	}
}

func TestEveryPackageHasDoc(t *testing.T) {
	for _, p := range listPackages(t) {
		if p.Doc == "" {
			t.Errorf("package %s has no package doc comment (add a doc.go)", p.ImportPath)
		}
	}
}
