//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/braidmesh/braid/internal/etcdlab"
)

// bin is where TestMain built the binaries.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "braid-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = dir
	for _, cmd := range []string{"braid", "braid-operator", "braid-agent", "braid-lab"} {
		build := exec.Command("go", "build", "-o", filepath.Join(dir, cmd), "../cmd/"+cmd)
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n", cmd, err)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	etcdlab.Cleanup()
	os.RemoveAll(dir)
	os.Exit(code)
}
