package kubelab

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/braidmesh/braid/internal/testenv"
)

// ErrNotBuilt is returned (wrapped) by BinDir when the binaries for the
// current tools/kube files are not in the cache.
var ErrNotBuilt = errors.New("kube tools not built")

// skipReason is the one-line reason tests skip with when ErrNotBuilt.
const skipReason = "kube-apiserver not built: run `make kube-tools` (tools/kube/build.sh)"

// binaries are the commands build.sh puts in the bin directory.
var binaries = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-proxy", "kube-scheduler", "kubectl"}

// BinDir returns the directory holding the etcd, kube-apiserver,
// kube-controller-manager and kubectl binaries: $BRAID_KUBE_BIN if set,
// otherwise the directory tools/kube/build.sh builds into for the current
// contents of tools/kube, found by walking up from the working directory to
// the braid module root. The error wraps ErrNotBuilt when a binary is missing.
func BinDir() (string, error) {
	if dir := os.Getenv("BRAID_KUBE_BIN"); dir != "" {
		return checkBinDir(dir)
	}
	tools, err := toolsDir("kube")
	if err != nil {
		return "", err
	}
	key, err := cacheKey(tools)
	if err != nil {
		return "", err
	}
	cache := os.Getenv("BRAID_CACHE")
	if cache == "" {
		cache = "/var/cache/braid"
	}
	return checkBinDir(filepath.Join(cache, "kube-"+key, "bin"))
}

func checkBinDir(dir string) (string, error) {
	for _, b := range binaries {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return "", fmt.Errorf("%w: %w", ErrNotBuilt, err)
		}
	}
	return dir, nil
}

// Require returns BinDir, or skips the test when the binaries are not built
// (fails it instead if $BRAID_CI_REQUIRED is set, as in CI; see
// internal/testenv).
func Require(t testing.TB) string {
	t.Helper()
	dir, err := BinDir()
	switch {
	case errors.Is(err, ErrNotBuilt):
		testenv.Skipf(t, "%s: %v", skipReason, err)
	case err != nil:
		t.Fatalf("kubelab: %v", err)
	}
	return dir
}

// toolsDir returns the absolute path of tools/<name> in the braid module
// that contains the working directory.
func toolsDir(name string) (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("locate tools/%s: %w", name, err)
	}
	for dir := wd; ; {
		if isBraidRoot(dir) {
			return filepath.Join(dir, "tools", name), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("locate tools/%s: %s is not inside the braid module (set BRAID_KUBE_BIN and BRAID_COREDNS)", name, wd)
		}
		dir = parent
	}
}

// CoreDNS returns the path of the coredns binary: $BRAID_COREDNS if set,
// otherwise the one tools/coredns/build.sh builds for the current contents
// of tools/coredns. The error wraps ErrNotBuilt when it is missing.
func CoreDNS() (string, error) {
	if p := os.Getenv("BRAID_COREDNS"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%w: %w", ErrNotBuilt, err)
		}
		return p, nil
	}
	tools, err := toolsDir("coredns")
	if err != nil {
		return "", err
	}
	key, err := cacheKey(tools)
	if err != nil {
		return "", err
	}
	cache := os.Getenv("BRAID_CACHE")
	if cache == "" {
		cache = "/var/cache/braid"
	}
	p := filepath.Join(cache, "coredns-"+key, "bin", "coredns")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%w: coredns (run tools/coredns/build.sh): %w", ErrNotBuilt, err)
	}
	return p, nil
}

func isBraidRoot(dir string) bool {
	f, err := os.Open(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if fields := strings.Fields(s.Text()); len(fields) == 2 && fields[0] == "module" {
			return fields[1] == "github.com/braidmesh/braid"
		}
	}
	return false
}

// cacheKey mirrors cache_key in tools/kube/build.sh and tools/coredns/build.sh: the first 16 hex digits
// of the sha256 of the manifest "<sha256 hex>  <relative path>\n" over go.mod,
// go.sum, build.sh and every *.go file, sorted by path bytes.
func cacheKey(dir string) (string, error) {
	files := []string{"go.mod", "go.sum", "build.sh"}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && strings.HasSuffix(d.Name(), ".go") {
			rel, err := filepath.Rel(dir, path)
			if err != nil {
				return err
			}
			files = append(files, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("compute kube tools key: %w", err)
	}
	slices.Sort(files)
	files = slices.Compact(files)
	manifest := sha256.New()
	for _, rel := range files {
		sum, err := fileSHA256(filepath.Join(dir, rel))
		if err != nil {
			return "", fmt.Errorf("compute kube tools key: %w", err)
		}
		fmt.Fprintf(manifest, "%s  %s\n", sum, rel)
	}
	return hex.EncodeToString(manifest.Sum(nil))[:16], nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
