package bpf_test

import (
	"bufio"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/braidmesh/braid/bpf"
	"github.com/braidmesh/braid/bpf/bpftest"
	"github.com/braidmesh/braid/internal/testenv"
)

// buildLoader builds internal/testloader once per test binary.
func buildLoader(t *testing.T) string {
	t.Helper()
	gobin := testenv.LookPath(t, "go", "golang")
	out := filepath.Join(t.TempDir(), "testloader")
	cmd := exec.Command(gobin, "build", "-o", out, "./internal/testloader")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build testloader: %v\n%s", err, b)
	}
	return out
}

type loaderProc struct {
	cmd *exec.Cmd
}

func startLoader(t *testing.T, bin string, args ...string) *loaderProc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &loaderProc{cmd: cmd}
	t.Cleanup(func() { p.cmd.Process.Kill(); p.cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		t.Fatalf("loader not ready: %q, %v", line, err)
	}
	return p
}

// TestRestartKeepsConnections restarts the datapath process (once killed
// hard, once stopped cleanly) while a TCP stream runs through a VIP and new
// connections open in a loop: the stream must survive and no connect fail.
func TestRestartKeepsConnections(t *testing.T) {
	bpftest.RequireRoot(t)
	bin := buildLoader(t)
	pin := bpftest.PinDir(t)
	lab := bpftest.NewLB(t)
	cg := bpftest.Cgroup(t)
	vip := netip.MustParseAddrPort("10.96.0.30:80")
	args := []string{"-pin", pin, "-cgroup", cg, "-vip", vip.String(),
		"-backends", netip.AddrPortFrom(lab.LocalV4, bpftest.BackendPort).String() + "," + netip.AddrPortFrom(lab.RemoteV4, bpftest.BackendPort).String()}
	first := startLoader(t, bin, args...)
	t.Cleanup(func() {
		objs, err := bpf.Load(bpf.Config{PinDir: pin, IPCacheEntries: 1024, ServiceEntries: 1024, BackendEntries: 1024})
		if err != nil {
			t.Errorf("reload for cleanup: %v", err)
			return
		}
		objs.DetachCgroup(cg)
		objs.Unpin()
		objs.Close()
	})
	bpftest.EnterCgroup(t, cg)

	// The long-lived stream.
	var stream net.Conn
	if err := bpftest.Do(lab.Client, func() (err error) {
		stream, err = net.Dial("tcp", vip.String())
		return err
	}); err != nil {
		t.Fatalf("open stream: %v", err)
	}
	defer stream.Close()
	br := bufio.NewReader(stream)
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatalf("stream greeting: %v", err)
	}

	var stop atomic.Bool
	var connects, failures, echoes atomic.Int64
	var streamErr error
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		msg := []byte("ping\n")
		buf := make([]byte, len(msg))
		for !stop.Load() {
			stream.SetDeadline(time.Now().Add(2 * time.Second))
			if _, err := stream.Write(msg); err != nil {
				streamErr = err
				return
			}
			if _, err := io.ReadFull(br, buf); err != nil {
				streamErr = err
				return
			}
			echoes.Add(1)
			time.Sleep(5 * time.Millisecond)
		}
	}()
	go func() {
		defer wg.Done()
		for !stop.Load() {
			_, peer, err := bpftest.Ask(lab.Client, "tcp", vip)
			connects.Add(1)
			if err != nil || peer != vip {
				failures.Add(1)
				t.Logf("connect during restart: peer %s, %v", peer, err)
			}
		}
	}()
	waitMore := func(what string) {
		start := connects.Load()
		deadline := time.Now().Add(10 * time.Second)
		for connects.Load() < start+200 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		t.Logf("%s: %d connects so far", what, connects.Load())
	}

	waitMore("loader 1 running")
	first.cmd.Process.Kill() // crash: nothing cleaned up
	first.cmd.Wait()
	waitMore("no loader")
	second := startLoader(t, bin, args...) // reopens pins, updates links in place
	waitMore("loader 2 running")
	second.cmd.Process.Signal(os.Interrupt) // clean stop
	second.cmd.Wait()
	startLoader(t, bin, args...)
	waitMore("loader 3 running")

	stop.Store(true)
	wg.Wait()
	if streamErr != nil {
		t.Errorf("stream broke across restarts: %v", streamErr)
	}
	if f := failures.Load(); f != 0 {
		t.Errorf("%d of %d connects failed across restarts", f, connects.Load())
	}
	t.Logf("%d connects, %d stream round trips, %d failures", connects.Load(), echoes.Load(), failures.Load())
}
