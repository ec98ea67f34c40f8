package kubelab

import (
	"context"
	"errors"
	"fmt"
	"github.com/braidmesh/braid/internal/lab/proc"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/braidmesh/braid/internal/testenv"
)

// StartTimeout bounds how long StartEtcd and StartCluster wait for a process
// to become ready. It is generous because the lab machines are shared.
const StartTimeout = 90 * time.Second

// maxAttempts is how often a process is started again when the free port it
// was given was taken before it could bind it.
const maxAttempts = 3

// process is a child process whose combined output goes to a log file,
// killed by the kernel if the test binary dies (see internal/lab/proc).
type process struct{ *proc.Process }

// startProcess starts bin with args, its output appended to logPath.
func startProcess(name, logPath, bin string, args ...string) (*process, error) {
	p, err := proc.Start(name, logPath, nil, bin, args...)
	if err != nil {
		return nil, err
	}
	return &process{p}, nil
}

func (p *process) exited() bool      { return p.Exited() }
func (p *process) stop()             { p.Stop(proc.DefaultGrace) }
func (p *process) tail(n int) string { return p.Tail(n) }

// portClash reports whether the process died because its port was taken.
func (p *process) portClash() bool {
	return p.exited() && strings.Contains(p.tail(50), "address already in use")
}

// cleanup registers stopping p at the end of t, logging p's output if t failed.
func (p *process) cleanup(t testing.TB) {
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("kubelab: last lines of %s (%s):\n%s", p.Name, p.Log, p.tail(40))
		}
	})
}

// waitReady polls ready until it succeeds, p exits, or StartTimeout passes.
func waitReady(p *process, ready func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	var last error
	for {
		if p.exited() {
			return fmt.Errorf("%s exited: %v", p.Name, p.Err())
		}
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		last = ready(rctx)
		rcancel()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %v: %w", p.Name, StartTimeout, last)
		case <-p.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// startReady starts a process on fresh free ports and waits until it is
// ready, starting it again if another process took one of its ports first.
// args receives the ports; nports is how many it needs.
func startReady(t testing.TB, name, logPath, bin string, nports int, args func(ports []int) []string, ready func(ctx context.Context, ports []int) error) (*process, []int) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		ports := make([]int, nports)
		for i := range ports {
			ports[i] = testenv.FreePort(t)
		}
		p, err := startProcess(name, logPath, bin, args(ports)...)
		if err != nil {
			t.Fatalf("kubelab: %v", err)
		}
		err = waitReady(p, func(ctx context.Context) error { return ready(ctx, ports) })
		if err == nil {
			p.cleanup(t)
			return p, ports
		}
		p.stop()
		if attempt < maxAttempts && p.portClash() {
			continue
		}
		t.Fatalf("kubelab: %v; last lines of %s:\n%s", err, logPath, p.tail(40))
	}
}

func hostPort(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

var errNotReady = errors.New("not ready")
