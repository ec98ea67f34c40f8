//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"github.com/braidmesh/braid/internal/testenv"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh/status"
)

// TestDemo runs `braid-lab demo` as a user does, follows the instructions
// it prints (the kubectl exec commands must show answers from both
// clusters, the status pages both clusters synced), then presses Ctrl-C:
// the demo must exit cleanly and leave nothing behind (checkNoLeftovers:
// namespaces, interfaces, pinned maps, WireGuard sockets, cgroups,
// processes, mounts, run records).
func TestDemo(t *testing.T) {
	kubeBin := requireLab(t)
	dir := t.TempDir()
	cmd := exec.Command(filepath.Join(bin, "braid-lab"), "demo", "--dir", dir, "--examples", "../deploy/examples")
	cmd.Env = append(os.Environ(), "BRAID_KUBE_BIN="+kubeBin)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	// Its own process group, as a shell gives a foreground job: Ctrl-C
	// goes to the whole group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	var run string
	var printed []string
	lines := make(chan string, 1000)
	go func() {
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			lines <- s.Text()
		}
		close(lines)
		exited <- cmd.Wait()
	}()
	defer func() {
		if t.Failed() {
			t.Logf("demo output:\n%s", strings.Join(printed, "\n"))
		}
	}()
	runRE := regexp.MustCompile(`run ([0-9a-f]{4}) in `)
	started := time.Now()
	deadline := time.After(5 * time.Minute)
	var execs, pages []string
wait:
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("demo exited before it was ready: %v", <-exited)
			}
			printed = append(printed, l)
			if m := runRE.FindStringSubmatch(l); m != nil && run == "" {
				run = m[1]
			}
			if strings.Contains(l, " exec deploy/client -- curl ") {
				execs = append(execs, strings.TrimSpace(l))
			}
			if strings.HasPrefix(strings.TrimSpace(l), "east  http://") || strings.HasPrefix(strings.TrimSpace(l), "west  http://") {
				pages = append(pages, strings.Fields(l)[1])
			}
			if strings.HasPrefix(l, "Ctrl-C stops the lab") {
				break wait
			}
		case <-deadline:
			_ = cmd.Process.Kill()
			t.Fatal("demo not ready within 5 minutes")
		}
	}
	t.Logf("demo ready %v after it started (binaries prebuilt)", time.Since(started).Round(100*time.Millisecond))
	go func() {
		for l := range lines {
			printed = append(printed, l)
		}
	}()
	if run == "" || len(execs) != 2 || len(pages) != 2 {
		t.Fatalf("demo printed run %q, exec commands %q, status pages %q", run, execs, pages)
	}

	for _, line := range execs {
		args := strings.Fields(line)
		heard := map[string]bool{}
		testenv.Eventually(t, 30*time.Second, func() error {
			out, err := exec.Command(args[0], args[1:]...).Output()
			if err != nil {
				return err
			}
			var id identity
			if err := json.Unmarshal(out, &id); err != nil {
				return err
			}
			heard[id.Cluster] = true
			if !heard["east"] || !heard["west"] {
				return errNotYet(heard)
			}
			return nil
		})
	}
	client := &http.Client{Timeout: 2 * time.Second}
	for _, p := range pages {
		snap, err := status.Fetch(context.Background(), client, p)
		if err != nil {
			t.Fatalf("status page %s: %v", p, err)
		}
		if len(snap.Remotes) != 1 || !snap.Remotes[0].Synced || !snap.Remotes[0].Connected {
			t.Errorf("status page %s (%s): remotes %+v, want the other cluster synced", p, snap.Cluster, snap.Remotes)
		}
		resp, err := client.Get(p)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Errorf("status page %s: %v %v", p, resp, err)
		} else {
			resp.Body.Close()
		}
	}

	// Ctrl-C: the terminal signals the foreground process group.
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("demo after Ctrl-C: %v", err)
		}
	case <-time.After(2 * time.Minute):
		_ = cmd.Process.Kill()
		t.Fatal("demo did not exit within 2 minutes of Ctrl-C")
	}
	checkNoLeftovers(t, run, dir)
}

type errNotYet map[string]bool

func (e errNotYet) Error() string {
	var s []string
	for k := range e {
		s = append(s, k)
	}
	return "answers so far only from " + strings.Join(s, ", ")
}
