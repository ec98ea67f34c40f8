package kubelab

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCacheKeyMatchesBuildScript checks that BinDir and CoreDNS look where
// tools/kube/build.sh and tools/coredns/build.sh build. It needs no
// binaries.
func TestCacheKeyMatchesBuildScript(t *testing.T) {
	for _, name := range []string{"kube", "coredns"} {
		tools, err := toolsDir(name)
		if err != nil {
			t.Fatal(err)
		}
		cache := t.TempDir()
		cmd := exec.Command("bash", filepath.Join(tools, "build.sh"), "--dir")
		cmd.Env = append(cmd.Environ(), "BRAID_CACHE="+cache)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s/build.sh --dir: %v", name, err)
		}
		key, err := cacheKey(tools)
		if err != nil {
			t.Fatal(err)
		}
		got := strings.TrimSpace(string(out))
		if want := filepath.Join(cache, name+"-"+key, "bin"); got != want {
			t.Errorf("%s/build.sh builds into %s, the lookup is in %s", name, got, want)
		}
	}
}
