package kubelab

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCacheKeyMatchesBuildScript checks that BinDir looks where
// tools/kube/build.sh builds. It needs no binaries.
func TestCacheKeyMatchesBuildScript(t *testing.T) {
	tools, err := toolsDir()
	if err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	cmd := exec.Command("bash", filepath.Join(tools, "build.sh"), "--dir")
	cmd.Env = append(cmd.Environ(), "BRAID_CACHE="+cache)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("build.sh --dir: %v", err)
	}
	key, err := cacheKey(tools)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.TrimSpace(string(out))
	if want := filepath.Join(cache, "kube-"+key, "bin"); got != want {
		t.Errorf("build.sh builds into %s, BinDir looks in %s", got, want)
	}
}
