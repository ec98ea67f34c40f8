package testenv

import (
	"errors"
	"runtime"
	"testing"
	"time"
)

// fakeT records what Skipf does to a test without ending the real one; like
// testing.T, Skip and Fatalf end the calling goroutine.
type fakeT struct {
	testing.TB
	skipped, failed bool
	msg             string
}

func (f *fakeT) Helper() {}
func (f *fakeT) Skip(args ...any) {
	f.skipped = true
	f.msg = args[0].(string)
	runtime.Goexit()
}
func (f *fakeT) Fatalf(format string, args ...any) {
	f.failed = true
	f.msg = format
	runtime.Goexit()
}

func TestSkipfFailsWhenRequired(t *testing.T) {
	for _, tc := range []struct {
		env      string
		val      string
		wantFail bool
	}{
		{RequiredEnv, "", false},
		{RequiredEnv, "1", true},
		{LegacyRequiredEnv, "1", true},
	} {
		t.Setenv(RequiredEnv, "")
		t.Setenv(LegacyRequiredEnv, "")
		t.Setenv(tc.env, tc.val)
		f := &fakeT{}
		done := make(chan struct{})
		go func() {
			defer close(done)
			Skipf(f, "needs %s", "something")
		}()
		<-done
		if f.failed != tc.wantFail || f.skipped == tc.wantFail {
			t.Errorf("%s=%q: failed %v skipped %v, want failed %v", tc.env, tc.val, f.failed, f.skipped, tc.wantFail)
		}
	}
}

func TestFreePortsDiffer(t *testing.T) {
	ports := FreePorts(t, 8)
	seen := map[int]bool{}
	for _, p := range ports {
		if p <= 0 || seen[p] {
			t.Fatalf("ports %v: want 8 distinct positive ports", ports)
		}
		seen[p] = true
	}
}

func TestEventually(t *testing.T) {
	n := 0
	Eventually(t, 5*time.Second, func() error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if n != 3 {
		t.Fatalf("f called %d times, want 3", n)
	}
}
