package lab

import (
	"fmt"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/braidmesh/braid/clustermesh/k8s"
	"github.com/braidmesh/braid/internal/lab/proc"
	"github.com/braidmesh/braid/reconcile"
)

const wireGuardKeyAnnotation = k8s.AnnotationWireGuardKey

// managed is a lab process that can be stopped and started again (tests
// restart agents and operators); only an exit nobody asked for is a failure.
type managed struct {
	lab  *Lab
	name string
	log  string
	cmd  func() (bin string, args []string)
	// cgroup, if set, is the cgroup v2 directory the process starts in.
	cgroup string

	mu       sync.Mutex
	p        *proc.Process
	restarts int                // exits in a row, for the restart policy
	backoff  *reconcile.Backoff // delay before the next restart
}

func (l *Lab) newManaged(name, log string, cmd func() (string, []string)) *managed {
	return &managed{lab: l, name: name, log: log, cmd: cmd,
		backoff: reconcile.NewBackoff(restartBackoff, maxRestartBackoff)}
}

// expected marks processes whose exit was asked for.
var expected sync.Map // *proc.Process → struct{}

func (m *managed) start() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.p != nil && !m.p.Exited() {
		return nil
	}
	bin, args := m.cmd()
	p, err := proc.StartInCgroup(m.name, m.log, m.cgroup, nil, bin, args...)
	if err != nil {
		return err
	}
	m.p = p
	m.lab.watch(p, m)
	return nil
}

// stop stops the process (SIGTERM, SIGKILL after grace) and waits.
func (m *managed) stop(grace time.Duration) { m.stopWith(syscall.SIGTERM, grace) }

// stopWith sends sig (SIGKILL: kill at once) and waits for the exit.
func (m *managed) stopWith(sig syscall.Signal, grace time.Duration) {
	m.mu.Lock()
	p := m.p
	m.mu.Unlock()
	if p == nil {
		return
	}
	expected.Store(p, struct{}{})
	if sig != syscall.SIGTERM {
		_ = p.Signal(sig)
	}
	p.Stop(grace)
}

// Restart policy of managed processes, as a DaemonSet's or Deployment's
// pod has (restartPolicy: Always, with back-off): a process that exits
// unasked is started again after about restartBackoff, doubled per exit up
// to maxRestartBackoff (with jitter); one that stays up for stableAfter starts over. Past
// maxRestarts exits in a row the lab reports it on Failed.
const (
	restartBackoff    = time.Second
	maxRestartBackoff = 16 * time.Second
	stableAfter       = 30 * time.Second
	maxRestarts       = 5
)

// watch handles p's exit: nothing if it was asked for or the lab is
// closing; else, for a managed process, a restart under the restart policy,
// and otherwise (or past maxRestarts) a report on l.failures.
func (l *Lab) watch(p *proc.Process, m *managed) {
	started := time.Now()
	go func() {
		<-p.Done()
		if _, ok := expected.Load(p); ok {
			expected.Delete(p)
			return
		}
		if l.isClosed() {
			return
		}
		err := fmt.Errorf("%s exited: %v; last lines of %s:\n%s", p.Name, p.Err(), p.Log, p.Tail(20))
		l.mu.Lock()
		l.exits = append(l.exits, err.Error())
		l.mu.Unlock()
		if m != nil {
			m.mu.Lock()
			if time.Since(started) >= stableAfter {
				m.restarts = 0
				m.backoff.Reset()
			}
			m.restarts++
			n := m.restarts
			backoff := m.backoff.Next()
			m.mu.Unlock()
			if n <= maxRestarts {
				l.cfg.Progress("%s exited (%v); restart %d in %v", p.Name, p.Err(), n, backoff.Round(time.Millisecond))
				if !reconcile.Wait(l.closing, backoff) || l.isClosed() {
					return
				}
				serr := m.start()
				if serr == nil {
					return
				}
				err = fmt.Errorf("%w; restart: %w", err, serr)
			}
		}
		select {
		case l.failures <- err:
		default: // the first failure is reported
		}
	}()
}

// UnexpectedExits describes every exit of a lab process nobody asked for
// (each restarted under the restart policy, or reported on Failed), oldest
// first. A lab that started cleanly and was not disturbed has none.
func (l *Lab) UnexpectedExits() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.exits)
}

func (l *Lab) isClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

// StopAgent stops n's braid-agent with sig (SIGTERM: graceful) and waits.
func (n *Node) StopAgent(sig syscall.Signal) { n.agent.stopWith(sig, 10*time.Second) }

// StartAgent starts n's braid-agent again after StopAgent.
func (n *Node) StartAgent() error { return n.agent.start() }

// AgentPID is the process ID of n's braid-agent, or 0 if it is not
// running.
func (n *Node) AgentPID() int {
	n.agent.mu.Lock()
	defer n.agent.mu.Unlock()
	if n.agent.p == nil || n.agent.p.Exited() {
		return 0
	}
	return n.agent.p.Pid()
}

// StopNode stops n's lab node process (its pods are removed) and waits.
func (n *Node) StopNode() { n.kubelt.stop(20 * time.Second) }

// StartNode starts n's lab node process again after StopNode.
func (n *Node) StartNode() error { return n.kubelt.start() }

// AgentLog is the path of n's agent log.
func (n *Node) AgentLog() string { return n.agent.log }

// NodeLog is the path of n's lab node log.
func (n *Node) NodeLog() string { return n.kubelt.log }

// StopOperator stops c's braid-operator with sig and waits.
func (c *Cluster) StopOperator(sig syscall.Signal) { c.operator.stopWith(sig, 10*time.Second) }

// StartOperator starts c's braid-operator again after StopOperator.
func (c *Cluster) StartOperator() error { return c.operator.start() }

// OperatorLog is the path of c's operator log.
func (c *Cluster) OperatorLog() string { return c.operator.log }

// Cluster returns the cluster named name, or nil.
func (l *Lab) Cluster(name string) *Cluster {
	for _, c := range l.Clusters {
		if string(c.Name) == name {
			return c
		}
	}
	return nil
}
