package controlplane

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/braidmesh/braid/internal/lab/proc"
)

// Etcd is the single-member etcd the lab's apiservers share, each under its
// own prefix. It serves plain HTTP on loopback: only processes on this
// machine's host network namespace reach it.
type Etcd struct {
	// Endpoint is the client URL, http://127.0.0.1:PORT.
	Endpoint string

	p *proc.Process
}

// StartEtcd runs bin/etcd with its data and log in dir and returns once it
// is healthy or ctx is done.
func StartEtcd(ctx context.Context, bin, dir string) (*Etcd, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	var e *Etcd
	_, err := retryPortClash(func() (*proc.Process, error) {
		ports, err := freePorts(2)
		if err != nil {
			return nil, err
		}
		client, peer := fmt.Sprintf("http://127.0.0.1:%d", ports[0]), fmt.Sprintf("http://127.0.0.1:%d", ports[1])
		p, err := proc.Start("etcd", filepath.Join(dir, "etcd.log"), nil, filepath.Join(bin, "etcd"),
			"--name=braid-lab",
			"--data-dir="+filepath.Join(dir, "data"),
			"--listen-client-urls="+client,
			"--advertise-client-urls="+client,
			"--listen-peer-urls="+peer,
			"--initial-advertise-peer-urls="+peer,
			"--initial-cluster=braid-lab="+peer,
			"--initial-cluster-state=new",
			"--unsafe-no-fsync", // a lab's state is disposable
			"--log-level=warn",
		)
		if err != nil {
			return nil, err
		}
		e = &Etcd{Endpoint: client, p: p}
		return p, waitReady(ctx, p, func(ctx context.Context) error { return etcdHealthy(ctx, client) })
	})
	if err != nil {
		return nil, err
	}
	return e, nil
}

// Process is the etcd process, for a caller that watches it.
func (e *Etcd) Process() *proc.Process { return e.p }

// Stop stops etcd and waits for it.
func (e *Etcd) Stop() { e.p.Stop(0) }

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
		return fmt.Errorf("etcd /health: %s %s", resp.Status, body)
	}
	return nil
}
