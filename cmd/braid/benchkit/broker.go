package benchkit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/broker"
	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/reconcile"
)

// BrokerProcess is a broker (`braid broker`: embedded etcd, TLS,
// authentication, fsync on) running as a child process, with a root client.
type BrokerProcess struct {
	// DataDir is the broker's data directory.
	DataDir string
	// Endpoint is its client URL, MetricsURL where etcd serves /metrics.
	Endpoint, MetricsURL string
	// Admin is a root client; Close closes it.
	Admin *clientv3.Client
	// CACertPEM is the broker's CA, for join bundles.
	CACertPEM []byte

	cmd       *exec.Cmd
	exited    chan struct{}
	closeOnce sync.Once
}

// StartBroker runs `exe broker` on dataDir with free loopback ports, no
// join endpoint and no status page, waits until it answers its root user
// (at most a minute), and returns it. The broker may then still be
// bringing the cluster roles to the key schema (broker.SyncClusterRoles),
// so a permission added to a cluster's role may be revoked: grant extra
// keys through roles of their own. env is added to its environment; its
// stderr goes to stderr.
func StartBroker(ctx context.Context, exe, dataDir string, env []string, stderr io.Writer) (*BrokerProcess, error) {
	// A port found free may be taken (by any process's outgoing
	// connection) before the broker binds it; it then exits at once, and
	// a few more tries with other ports get past that.
	for attempt := 1; ; attempt++ {
		b, err := startBrokerOnce(ctx, exe, dataDir, env, stderr)
		if !errors.Is(err, errBrokerExited) || attempt == 3 {
			return b, err
		}
	}
}

var errBrokerExited = errors.New("it exited")

func startBrokerOnce(ctx context.Context, exe, dataDir string, env []string, stderr io.Writer) (*BrokerProcess, error) {
	ports, err := freePorts(3)
	if err != nil {
		return nil, fmt.Errorf("start broker: %w", err)
	}
	b := &BrokerProcess{
		DataDir:    dataDir,
		Endpoint:   fmt.Sprintf("https://127.0.0.1:%d", ports[0]),
		MetricsURL: fmt.Sprintf("http://127.0.0.1:%d", ports[2]),
		exited:     make(chan struct{}),
	}
	b.cmd = exec.Command(exe, "broker", "--data-dir", dataDir, "--listen", b.Endpoint,
		"--listen-peer", fmt.Sprintf("https://127.0.0.1:%d", ports[1]), "--metrics-listen", b.MetricsURL,
		"--join-listen", "", "--status-addr", "", "--log-level", "error")
	b.cmd.Env = append(os.Environ(), env...)
	b.cmd.Stderr = stderr
	// A benchmark killed outright (a timeout, Ctrl-\) takes its broker
	// with it rather than leaving it holding ports and CPU.
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := b.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start broker: %w", err)
	}
	go func() { _ = b.cmd.Wait(); close(b.exited) }()
	retry := reconcile.NewBackoff(50*time.Millisecond, time.Second)
	for deadline := time.Now().Add(time.Minute); ; {
		cfg, err := broker.LocalAdminConfig(dataDir, []string{b.Endpoint})
		if err == nil {
			actx, cancel := context.WithTimeout(ctx, 2*time.Second)
			b.Admin, err = broker.AdminClient(actx, cfg)
			cancel()
			if err == nil {
				if _, err = b.Admin.Get(ctx, "x"); err == nil {
					break
				}
				b.Admin.Close()
				b.Admin = nil
			}
		}
		select {
		case <-b.exited:
			return nil, fmt.Errorf("start broker: %w: %v", errBrokerExited, b.cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) || !reconcile.Wait(ctx, retry.Next()) {
			b.Close()
			return nil, fmt.Errorf("start broker: not ready: %w", errors.Join(err, ctx.Err()))
		}
	}
	if b.CACertPEM, err = os.ReadFile(filepath.Join(dataDir, "pki", "ca.crt")); err != nil {
		b.Close()
		return nil, fmt.Errorf("start broker: %w", err)
	}
	return b, nil
}

// PID is the broker's process ID.
func (b *BrokerProcess) PID() int { return b.cmd.Process.Pid }

// AddCluster grants g and returns the cluster's credentials for this
// broker (its endpoint and CA).
func (b *BrokerProcess) AddCluster(ctx context.Context, g clustermesh.Grant) (join.Credentials, error) {
	c, err := broker.AddCluster(ctx, b.Admin, g)
	if err != nil {
		return c, err
	}
	c.Endpoints, c.CACertPEM = []string{b.Endpoint}, slices.Clone(b.CACertPEM)
	return c, nil
}

// Close stops the broker (interrupt, then kill after 30 s) and waits for it.
func (b *BrokerProcess) Close() {
	b.closeOnce.Do(func() {
		if b.Admin != nil {
			b.Admin.Close()
		}
		_ = b.cmd.Process.Signal(os.Interrupt)
		select {
		case <-b.exited:
		case <-time.After(30 * time.Second):
			_ = b.cmd.Process.Kill()
			<-b.exited
		}
	})
}

// freePorts returns n distinct free loopback ports.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var out []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}
