package bpf

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/braidmesh/braid/internal/testenv"
)

// TestGeneratedCurrent regenerates the objects into a temporary directory
// and checks the committed ones are identical. It needs the toolchain
// `make generate` uses and skips without it.
func TestGeneratedCurrent(t *testing.T) {
	if testing.Short() {
		t.Skip("skip: -short")
	}
	for _, tool := range [][2]string{{"clang", "clang"}, {"llvm-strip", "llvm"}, {"go", "golang"}} {
		testenv.LookPath(t, tool[0], tool[1])
	}
	if _, err := os.Stat("/usr/include/bpf/bpf_helpers.h"); err != nil {
		testenv.Skipf(t, "libbpf headers not installed (Debian libbpf-dev)")
	}
	src, err := os.ReadFile("gen.go")
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	for _, line := range strings.Split(string(src), "\n") {
		if rest, ok := strings.CutPrefix(line, "//go:generate go run github.com/cilium/ebpf/cmd/bpf2go "); ok {
			args = strings.Fields(rest)
		}
	}
	if args == nil {
		t.Fatal("no bpf2go line in gen.go")
	}
	out := t.TempDir()
	cmd := exec.Command("go", append([]string{"run", "github.com/cilium/ebpf/cmd/bpf2go", "-output-dir", out}, args...)...)
	cmd.Env = append(os.Environ(), "GOPACKAGE=bpf")
	if b, err := cmd.CombinedOutput(); err != nil {
		if bytes.Contains(b, []byte("could not create module cache")) || bytes.Contains(b, []byte("GOCACHE")) {
			testenv.Skipf(t, "go toolchain unusable for this user: %s", bytes.TrimSpace(b))
		}
		t.Fatalf("bpf2go: %v\n%s", err, b)
	}
	for _, f := range []string{"braid_bpfel.go", "braid_bpfel.o"} {
		want, err := os.ReadFile(filepath.Join(out, f))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: run `make generate` (go generate ./bpf/) and commit the result", f)
		}
	}
}
