package controlplane

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/braidmesh/braid/internal/lab/proc"
)

// TestRetryPortClashReturnsTheAttemptThatStarted checks that a component
// whose first attempt lost its port is known by its second process only:
// the lab watches the processes it is given for exits, and the first
// attempt's exit is no failure.
func TestRetryPortClashReturnsTheAttemptThatStarted(t *testing.T) {
	var started []*proc.Process
	// attempt starts script with its output in log; one that is to fail
	// is waited for, as a component that exits before it is ready.
	attempt := func(log, script string, fails bool) (*proc.Process, error) {
		p, err := proc.Start("component", log, nil, "/bin/sh", "-c", script)
		if err != nil {
			return nil, err
		}
		started = append(started, p)
		if !fails {
			return p, nil
		}
		<-p.Done()
		return p, errors.New("exited")
	}

	log := filepath.Join(t.TempDir(), "component.log")
	p, err := retryPortClash(func() (*proc.Process, error) {
		if len(started) == 0 {
			return attempt(log, "echo 'bind: address already in use'; exit 1", true)
		}
		return attempt(log, "exec sleep 60", false)
	})
	if err != nil {
		t.Fatalf("retryPortClash: %v", err)
	}
	t.Cleanup(func() { p.Stop(time.Second) })
	if len(started) != 2 || p != started[1] {
		t.Fatalf("retryPortClash returned attempt %v of %d started, want the second", p, len(started))
	}
	if p.Exited() {
		t.Fatalf("the returned process exited: %v", p.Err())
	}

	// A failure that is not a port clash is not retried.
	log = filepath.Join(t.TempDir(), "broken.log")
	started = nil
	if _, err := retryPortClash(func() (*proc.Process, error) {
		return attempt(log, "echo 'flag provided but not defined'; exit 1", true)
	}); err == nil || len(started) != 1 {
		t.Fatalf("retryPortClash on a bad flag: err %v after %d attempts, want the error after 1", err, len(started))
	}
}
