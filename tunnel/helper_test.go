package tunnel

import (
	"bufio"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/braidmesh/braid/tunnel/internal/netnstest"
)

// helperEnv, when set in the environment, turns the test binary into a
// one-device agent (see runHelper), so benchmarks can run each node's
// Device in its own process, the way agents run.
const helperEnv = "BRAID_TUNNEL_HELPER"

func TestMain(m *testing.M) {
	if cfg := os.Getenv(helperEnv); cfg != "" {
		os.Exit(runHelper(cfg))
	}
	os.Exit(m.Run())
}

// runHelper opens a Device in the process's own netns from the JSON Config
// in cfg, prints its public key, applies the JSON []Peer lines read from
// stdin (answering "ok" or the error) and closes the Device at EOF.
func runHelper(cfgJSON string) int {
	var cfg Config
	if err := json.Unmarshal([]byte(cfgJSON), &cfg); err != nil {
		fmt.Println("error:", err)
		return 1
	}
	d, err := New(cfg, slog.New(slog.DiscardHandler))
	if err == nil {
		err = d.Open()
	}
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	defer d.Close()
	fmt.Println(d.PublicKey())
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		var peers []Peer
		err := json.Unmarshal(in.Bytes(), &peers)
		if err == nil {
			err = d.Configure(peers)
		}
		if err != nil {
			fmt.Println("error:", err)
			continue
		}
		fmt.Println("ok")
	}
	return 0
}

// helperDevice is a Device running in a child process inside a netns.
type helperDevice struct {
	pub   string
	stdin *os.File
	out   *bufio.Scanner
}

func startHelper(tb testing.TB, ns *netnstest.NS, cfg Config) *helperDevice {
	tb.Helper()
	js, _ := json.Marshal(cfg)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+string(js))
	stdin, w, err := os.Pipe()
	if err != nil {
		tb.Fatal(err)
	}
	cmd.Stdin = stdin
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	ns.Do(tb, cmd.Start) // forked from a thread in ns: the child lives in ns
	stdin.Close()
	h := &helperDevice{stdin: w, out: bufio.NewScanner(stdout)}
	tb.Cleanup(func() {
		w.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Signal(syscall.SIGKILL)
			<-done
		}
	})
	h.pub = h.line(tb)
	return h
}

func (h *helperDevice) line(tb testing.TB) string {
	tb.Helper()
	if !h.out.Scan() {
		tb.Fatalf("helper exited: %v", h.out.Err())
	}
	s := h.out.Text()
	if strings.HasPrefix(s, "error:") {
		tb.Fatal("helper: " + s)
	}
	return s
}

func (h *helperDevice) configure(tb testing.TB, peers []Peer) {
	tb.Helper()
	js, _ := json.Marshal(peers)
	fmt.Fprintf(h.stdin, "%s\n", js)
	h.line(tb)
}
