package bpf

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestGeneratedCurrent regenerates the objects into a temporary directory
// and checks the committed ones are identical. It needs the toolchain
// `make generate` uses and skips without it.
func TestGeneratedCurrent(t *testing.T) {
	if testing.Short() {
		t.Skip("skip: -short")
	}
	for _, tool := range []string{"clang", "llvm-strip", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skip: %s not installed (needed to regenerate)", tool)
		}
	}
	if _, err := os.Stat("/usr/include/bpf/bpf_helpers.h"); err != nil {
		t.Skip("skip: libbpf headers not installed (Debian libbpf-dev)")
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
			t.Skipf("skip: go toolchain unusable for this user: %s", bytes.TrimSpace(b))
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
