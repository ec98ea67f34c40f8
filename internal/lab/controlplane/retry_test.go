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
	log := filepath.Join(t.TempDir(), "component.log")
	var started []*proc.Process
	p, err := retryPortClash(func() (*proc.Process, error) {
		if len(started) == 0 {
			p, err := proc.Start("clash", log, nil, "/bin/sh", "-c", "echo 'bind: address already in use'; exit 1")
			if err != nil {
				return nil, err
			}
			started = append(started, p)
			<-p.Done()
			return p, errors.New("exited")
		}
		p, err := proc.Start("ok", log, nil, "/bin/sh", "-c", "exec sleep 60")
		if err != nil {
			return nil, err
		}
		started = append(started, p)
		return p, nil
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
		p, err := proc.Start("broken", log, nil, "/bin/sh", "-c", "echo 'flag provided but not defined'; exit 1")
		if err != nil {
			return nil, err
		}
		started = append(started, p)
		<-p.Done()
		return p, errors.New("exited")
	}); err == nil || len(started) != 1 {
		t.Fatalf("retryPortClash on a bad flag: err %v after %d attempts, want the error after 1", err, len(started))
	}
}
