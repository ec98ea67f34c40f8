package remote

import (
	"log/slog"
	"strings"
	"testing"
	"time"
)

// logLines is a log destination that hands each line to the test.
type logLines chan string

func (l logLines) Write(p []byte) (int, error) {
	l <- string(p)
	return len(p), nil
}

// TestUngrantedIsLoggedOnlyIfItLasts checks that a cluster whose config
// came before its grant (two watches) is not reported as ignored once the
// grant arrives, and that one still without a grant is.
func TestUngrantedIsLoggedOnlyIfItLasts(t *testing.T) {
	logs := make(logLines, 10)
	// The checks are called directly below; the timers' own (an hour
	// away) never run in the test.
	w, err := New(Config{Self: "a", UngrantedWarnAfter: time.Hour}, nil, slog.New(slog.NewTextHandler(logs, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	noLog := func(what string) {
		t.Helper()
		select {
		case l := <-logs:
			t.Fatalf("logged %q for %s", l, what)
		default:
		}
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
	noLog("a cluster whose grant came")

	// c's grant goes, comes, and goes again: only the latest note is
	// reported.
	w.setUngranted("c", reason)
	first := w.ungranted["c"]
	w.setUngranted("c", "")
	w.setUngranted("c", reason)
	latest := w.ungranted["c"]
	w.warnUngranted("c", first)
	noLog("an earlier absence of c's grant")
	w.warnUngranted("c", latest)
	if l := <-logs; !strings.Contains(l, "ignoring cluster") || !strings.Contains(l, "cluster=c") || !strings.Contains(l, reason) {
		t.Fatalf("logged %q, want c reported ignored with its reason", l)
	}

	// Through the timer: a cluster still without a grant is reported.
	timed := make(logLines, 1)
	w2, err := New(Config{Self: "a", UngrantedWarnAfter: time.Millisecond}, nil, slog.New(slog.NewTextHandler(timed, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	w2.setUngranted("d", reason)
	select {
	case l := <-timed:
		if !strings.Contains(l, "cluster=d") {
			t.Fatalf("logged %q, want d reported ignored", l)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("d, without a grant, was not reported within 30s")
	}
}
