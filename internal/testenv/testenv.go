// Package testenv is what every Braid test shares about its environment:
// what to do when the machine lacks something a test needs (root, bpffs,
// cgroup v2, TUN, nftables, a tool, a built binary), free loopback ports,
// and waiting for a condition.
//
// A test that cannot run here calls Skipf with a one-line reason. When the
// environment says every test must run ($BRAID_CI_REQUIRED, set by .ci/run;
// the older $BRAID_KUBE_REQUIRED means the same), Skipf fails the test
// instead, so a CI run cannot pass by not running its privileged tests.
// Skips that do not depend on the machine (-short, opt-in benchmarks, a
// harness lacking a capability) call t.Skip directly.
//
// The helpers are safe for parallel tests; they call t.Fatal, never panic.
package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"
)

// RequiredEnv is the variable that turns every environment skip into a
// failure. LegacyRequiredEnv, its first name (then only for the Kubernetes
// binaries), is honoured too.
const (
	RequiredEnv       = "BRAID_CI_REQUIRED"
	LegacyRequiredEnv = "BRAID_KUBE_REQUIRED"
)

// Required reports whether tests must not skip for lack of something in
// the environment.
func Required() bool {
	return os.Getenv(RequiredEnv) != "" || os.Getenv(LegacyRequiredEnv) != ""
}

// Skipf skips t with the formatted reason, or fails it with the same reason
// when Required.
func Skipf(t testing.TB, format string, args ...any) {
	t.Helper()
	reason := fmt.Sprintf(format, args...)
	if Required() {
		t.Fatalf("%s (%s is set: every test must run here)", reason, envName())
	}
	t.Skip("skip: " + reason)
}

func envName() string {
	if os.Getenv(RequiredEnv) != "" {
		return RequiredEnv
	}
	return LegacyRequiredEnv
}

// Root skips t (see Skipf) unless it runs as root; why says what for.
func Root(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skipf(t, "needs root (%s)", why)
	}
}

// LookPath returns the path of tool, or skips t (see Skipf) naming the
// Debian package that provides it.
func LookPath(t testing.TB, tool, debianPackage string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		Skipf(t, "%s not installed (Debian %s)", tool, debianPackage)
	}
	return p
}

// FreePorts returns n distinct TCP ports free on 127.0.0.1 when it
// returns (another process may take one before the caller binds it).
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("find a free port: %v", err)
		}
		defer l.Close() // held until all are found, so they differ
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// FreePort returns one free TCP port on 127.0.0.1 (see FreePorts).
func FreePort(t testing.TB) int {
	t.Helper()
	return FreePorts(t, 1)[0]
}

// Eventually calls f until it returns nil, and fails t with f's last error
// if that has not happened within timeout. It polls every 10 ms at first,
// backing off to every 100 ms.
func Eventually(t testing.TB, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	wait := 10 * time.Millisecond
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not true after %v: %v", timeout, err)
		}
		time.Sleep(wait)
		wait = min(wait*2, 100*time.Millisecond)
	}
}
