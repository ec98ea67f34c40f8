package remote

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer is a log destination the Watcher's timers may write to.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestUngrantedIsLoggedOnlyIfItLasts checks that a cluster whose config
// came before its grant (two watches) is not reported as ignored once the
// grant arrives, and that one still without a grant is.
func TestUngrantedIsLoggedOnlyIfItLasts(t *testing.T) {
	var logs lockedBuffer
	w, err := New(Config{Self: "a", UngrantedWarnAfter: time.Hour}, nil, slog.New(slog.NewTextHandler(&logs, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	const reason = "no grant from the broker"

	// b's grant follows its config: the check finds nothing to report.
	w.setUngranted("b", reason)
	early := w.ungranted["b"]
	if st := w.Status(); len(st) != 1 || st[0].Name != "b" || st[0].Ungranted != reason {
		t.Fatalf("Status while b has no grant = %+v, want b ignored", st)
	}
	w.setUngranted("b", "")
	w.warnUngranted("b", early)
	if got := logs.String(); got != "" {
		t.Fatalf("logged %q for a cluster whose grant came", got)
	}

	// c's grant goes, comes, and goes again: only the latest note is
	// reported, once.
	w.setUngranted("c", reason)
	first := w.ungranted["c"]
	w.setUngranted("c", "")
	w.setUngranted("c", reason)
	latest := w.ungranted["c"]
	w.warnUngranted("c", first)
	if got := logs.String(); got != "" {
		t.Fatalf("logged %q for an earlier absence of c's grant", got)
	}
	w.warnUngranted("c", latest)
	if got := logs.String(); strings.Count(got, "ignoring cluster") != 1 || !strings.Contains(got, "cluster=c") || !strings.Contains(got, reason) {
		t.Fatalf("log = %q, want c reported ignored once with its reason", got)
	}

	// Through the timer: a cluster still without a grant is reported.
	var timed lockedBuffer
	w2, err := New(Config{Self: "a", UngrantedWarnAfter: time.Millisecond}, nil, slog.New(slog.NewTextHandler(&timed, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	w2.setUngranted("d", reason)
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(timed.String(), "cluster=d") {
		if time.Now().After(deadline) {
			t.Fatal("d, without a grant, was not reported within 30s")
		}
		time.Sleep(time.Millisecond)
	}
}
