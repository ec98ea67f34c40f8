package proc

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestTailFileKeepsEarlierErrorLines(t *testing.T) {
	var log strings.Builder
	log.WriteString("I1204 18:05:01.000000    1849 server.go:1] \"Starting\"\n")
	log.WriteString("E1204 18:05:02.000000    1849 run.go:72] \"command failed\" err=\"boom\"\n")
	log.WriteString("time=2026-12-04T18:05:02Z level=ERROR msg=\"write mirror\"\n")
	log.WriteString("Everything is fine\n") // starts with E, no date: not an error line
	for i := range 30 {
		fmt.Fprintf(&log, "I1204 18:05:05.%06d    1849 shared_informer.go:531] \"Caches are synced\"\n", i)
	}
	path := filepath.Join(t.TempDir(), "log")
	if err := os.WriteFile(path, []byte(log.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	got := TailFile(path, 5)
	want := "(earlier error lines)\n" +
		"E1204 18:05:02.000000    1849 run.go:72] \"command failed\" err=\"boom\"\n" +
		"time=2026-12-04T18:05:02Z level=ERROR msg=\"write mirror\"\n" +
		"(last 5 lines)\n"
	if !strings.HasPrefix(got, want) {
		t.Fatalf("TailFile =\n%s\nwant it to start with\n%s", got, want)
	}
	if lines := strings.Split(strings.TrimPrefix(got, want), "\n"); len(lines) != 5 || !strings.Contains(lines[4], "18:05:05.000029") {
		t.Fatalf("tail after the error lines = %q, want the last 5 lines", lines)
	}
	// A log whose tail holds everything has no error section.
	if got := TailFile(path, 100); strings.Contains(got, "(earlier error lines)") || !strings.HasPrefix(got, "I1204 18:05:01") {
		t.Fatalf("TailFile(100) = %q, want the whole log as it is", got[:min(len(got), 200)])
	}
}
