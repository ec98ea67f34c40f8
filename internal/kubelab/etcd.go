package kubelab

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Etcd is a single-member etcd serving plain HTTP on loopback, shared by the
// lab clusters started on it.
type Etcd struct {
	// Endpoint is the client URL, http://127.0.0.1:PORT.
	Endpoint string

	bin string

	mu    sync.Mutex
	names map[string]bool // cluster names in use, each owning /braidlab/<name>
}

// StartEtcd starts an etcd for the duration of t, or skips t when the binaries
// are not built (see Require). Its data lives in a temporary directory and is
// not fsynced.
func StartEtcd(t testing.TB) *Etcd {
	t.Helper()
	bin := Require(t)
	dir := t.TempDir()
	_, ports := startReady(t, "etcd", filepath.Join(dir, "etcd.log"), filepath.Join(bin, "etcd"), 2,
		func(ports []int) []string {
			client, peer := "http://"+hostPort(ports[0]), "http://"+hostPort(ports[1])
			return []string{
				"--name=kubelab",
				"--data-dir=" + filepath.Join(dir, "data"),
				"--listen-client-urls=" + client,
				"--advertise-client-urls=" + client,
				"--listen-peer-urls=" + peer,
				"--initial-advertise-peer-urls=" + peer,
				"--initial-cluster=kubelab=" + peer,
				"--initial-cluster-state=new",
				"--unsafe-no-fsync",
				"--log-level=warn",
			}
		},
		func(ctx context.Context, ports []int) error {
			return etcdHealthy(ctx, "http://"+hostPort(ports[0]))
		})
	return &Etcd{Endpoint: "http://" + hostPort(ports[0]), bin: bin, names: map[string]bool{}}
}

func etcdHealthy(ctx context.Context, endpoint string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint+"/health", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"health":"true"`) {
		return fmt.Errorf("%w: etcd /health: %s %s", errNotReady, resp.Status, body)
	}
	return nil
}

// claim reserves a cluster name on e; it reports false if the name is taken.
// An empty name is replaced by a fresh one.
func (e *Etcd) claim(name string) (string, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if name == "" {
		for i := 1; ; i++ {
			if n := fmt.Sprintf("lab%d", i); !e.names[n] {
				name = n
				break
			}
		}
	}
	if e.names[name] {
		return name, false
	}
	e.names[name] = true
	return name, true
}
