// Package etcdlab runs real multi-member etcd clusters as separate processes
// for tests: the binary is internal/etcdmain, built once per test binary.
//
// Binary skips the calling test when the build fails. Call Cleanup from
// TestMain after m.Run to remove the built binary. Members are killed at
// the end of the test that started them.
package etcdlab

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/braidmesh/braid/internal/testenv"
)

var build struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// Binary builds internal/etcdmain once per process and returns its path,
// or skips t if it cannot be built.
func Binary(t testing.TB) string {
	t.Helper()
	build.once.Do(func() {
		dir, err := os.MkdirTemp("", "braid-etcdlab-")
		if err != nil {
			build.err = err
			return
		}
		build.dir = dir
		path := filepath.Join(dir, "etcd")
		out, err := exec.Command("go", "build", "-o", path, "github.com/braidmesh/braid/internal/etcdmain").CombinedOutput()
		if err != nil {
			build.err = fmt.Errorf("%v: %s", err, bytes.TrimSpace(out))
			return
		}
		build.path = path
	})
	if build.err != nil {
		testenv.Skipf(t, "go build internal/etcdmain failed: %v", build.err)
	}
	return build.path
}

// Cleanup removes the binary Binary built, if any.
func Cleanup() {
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
}

// TLS names the certificate files members serve with. The certificate must
// be valid for 127.0.0.1 for both server and client use (members use it
// for peer TLS too), signed by CAFile.
type TLS struct {
	CertFile, KeyFile, CAFile string
}

// Member is one etcd process.
type Member struct {
	Name     string
	Endpoint string // client URL
	Cmd      *exec.Cmd
	// Done is closed when the process has exited.
	Done chan struct{}

	mu  sync.Mutex
	log bytes.Buffer
}

// Write collects the member's output.
func (m *Member) Write(b []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.log.Write(b)
}

// Log returns the member's output so far.
func (m *Member) Log() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.log.String()
}

// StartCluster runs an n-member cluster on loopback with client and peer
// TLS. The test's cleanup kills what is left and, if the test failed, logs
// the tail of each member's output.
func StartCluster(t testing.TB, bin string, tls TLS, n int) []*Member {
	t.Helper()
	ports := testenv.FreePorts(t, 2*n)
	var initial []string
	for i := range n {
		initial = append(initial, fmt.Sprintf("m%d=https://127.0.0.1:%d", i, ports[n+i]))
	}
	dir := t.TempDir()
	members := make([]*Member, n)
	for i := range n {
		client := fmt.Sprintf("https://127.0.0.1:%d", ports[i])
		peer := fmt.Sprintf("https://127.0.0.1:%d", ports[n+i])
		m := &Member{Name: fmt.Sprintf("m%d", i), Endpoint: client, Done: make(chan struct{})}
		m.Cmd = exec.Command(bin,
			"--name", m.Name,
			"--data-dir", filepath.Join(dir, m.Name),
			"--listen-client-urls", client, "--advertise-client-urls", client,
			"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-token", "braid-test", "--initial-cluster-state", "new",
			"--cert-file", tls.CertFile, "--key-file", tls.KeyFile,
			"--peer-cert-file", tls.CertFile, "--peer-key-file", tls.KeyFile,
			"--peer-trusted-ca-file", tls.CAFile, "--peer-client-cert-auth",
			"--heartbeat-interval", "50", "--election-timeout", "500",
			"--log-level", "warn",
		)
		m.Cmd.Stdout, m.Cmd.Stderr = m, m
		if err := m.Cmd.Start(); err != nil {
			t.Fatalf("start etcd %s: %v", m.Name, err)
		}
		go func() { _ = m.Cmd.Wait(); close(m.Done) }()
		members[i] = m
	}
	t.Cleanup(func() {
		for _, m := range members {
			_ = m.Cmd.Process.Kill()
			<-m.Done
			if t.Failed() {
				t.Logf("etcd %s log tail:\n%s", m.Name, tail(m.Log(), 2000))
			}
		}
	})
	return members
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// Stop ends m with sig and waits up to d for it to exit.
func (m *Member) Stop(t testing.TB, sig syscall.Signal, d time.Duration) {
	t.Helper()
	if err := m.Cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal etcd %s: %v", m.Name, err)
	}
	select {
	case <-m.Done:
	case <-time.After(d):
		t.Fatalf("etcd %s did not exit within %v of %v", m.Name, d, sig)
	}
}

// Endpoints returns the members' client URLs.
func Endpoints(ms []*Member) []string {
	out := make([]string, 0, len(ms))
	for _, m := range ms {
		out = append(out, m.Endpoint)
	}
	return out
}
