package demo

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// TestDemo runs `braid demo` (the README's first command) and checks that
// it shows each cluster syncing the other, a change crossing the mesh, a
// forged write refused by etcd, and a dead cluster drained.
func TestDemo(t *testing.T) {
	var out bytes.Buffer
	if err := runDemo(t.Context(), &out, t.TempDir(), 2*time.Second, 0); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	for _, want := range []string{
		"both clusters synced",
		"west    2   synced",
		"east    1   synced",
		"remote service default/web  in west",
		"west saw it after",
		"permission denied",
		"west marked east gone",
		"east    1   gone",
		"demo done",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out.String())
		}
	}
}
