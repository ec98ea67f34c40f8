package tunnel

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// traceEnv, when set to a file name, makes rotationsDuringTransfer record
// a timeline of the run and write it around the longest stall to that file:
// each device's handover phases and wireguard-go's handshake messages
// (both at debug level), the sender's TCP state (retransmissions, backoff,
// RTO, sampled every millisecond), and the receiver's gaps.
//
//	BRAID_ROTATION_TRACE=/tmp/rotation.txt go test -run '^$' -bench RotationStall -benchtime 1x ./tunnel/
const traceEnv = "BRAID_ROTATION_TRACE"

// rotationTrace is a timeline of events from several sources.
type rotationTrace struct {
	mu     sync.Mutex
	events []traceEvent
}

type traceEvent struct {
	at       time.Time
	who, msg string
}

func (tr *rotationTrace) add(at time.Time, who, msg string) {
	tr.mu.Lock()
	tr.events = append(tr.events, traceEvent{at, who, msg})
	tr.mu.Unlock()
}

// logger returns a logger recording every record (debug included) as an
// event of who.
func (tr *rotationTrace) logger(who string) *slog.Logger {
	return slog.New(&traceHandler{tr: tr, who: who})
}

// write writes the events from from to to, times relative to from, to the
// file traceEnv names.
func (tr *rotationTrace) write(tb testing.TB, from, to time.Time) {
	tr.mu.Lock()
	ev := slices.Clone(tr.events)
	tr.mu.Unlock()
	slices.SortStableFunc(ev, func(a, b traceEvent) int { return a.at.Compare(b.at) })
	var b strings.Builder
	for _, e := range ev {
		if e.at.Before(from) || e.at.After(to) {
			continue
		}
		fmt.Fprintf(&b, "%+8.1f ms  %-6s %s\n", float64(e.at.Sub(from))/float64(time.Millisecond), e.who, e.msg)
	}
	path := os.Getenv(traceEnv)
	if err := os.WriteFile(path, []byte(fmt.Sprintf("timeline from %s:\n%s", from.UTC().Format("15:04:05.000"), b.String())), 0o644); err != nil {
		tb.Errorf("write the rotation timeline: %v", err)
		return
	}
	tb.Logf("timeline around the longest stall in %s", path)
}

// count returns how many events' messages contain s.
func (tr *rotationTrace) count(s string) int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	n := 0
	for _, e := range tr.events {
		if strings.Contains(e.msg, s) {
			n++
		}
	}
	return n
}

type traceHandler struct {
	tr    *rotationTrace
	who   string
	attrs string
}

func (h *traceHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *traceHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	b.WriteString(h.attrs)
	r.Attrs(func(a slog.Attr) bool {
		if a.Key != "component" {
			fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		}
		return true
	})
	h.tr.add(r.Time, h.who, b.String())
	return nil
}

func (h *traceHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	for _, a := range as {
		if a.Key != "component" && a.Key != "device" {
			c.attrs += fmt.Sprintf(" %s=%v", a.Key, a.Value)
		}
	}
	return &c
}

func (h *traceHandler) WithGroup(string) slog.Handler { return h }

// watchTCP records the sender's TCP state each time it changes (sampled
// every millisecond) until stop is closed: retransmissions, the RTO
// backoff, the RTO, segments in flight and lost.
func (tr *rotationTrace) watchTCP(c net.Conn, stop <-chan struct{}) {
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		tr.add(time.Now(), "tcp", "no raw conn: "+err.Error())
		return
	}
	var last string
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		var info *unix.TCPInfo
		var gerr error
		if err := raw.Control(func(fd uintptr) {
			info, gerr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		}); err != nil || gerr != nil {
			return
		}
		s := fmt.Sprintf("retransmits=%d backoff=%d rto=%v unacked=%d lost=%d retrans=%d total_retrans=%d",
			info.Retransmits, info.Backoff, time.Duration(info.Rto)*time.Microsecond, info.Unacked, info.Lost, info.Retrans, info.Total_retrans)
		if s != last {
			tr.add(time.Now(), "tcp", s)
			last = s
		}
	}
}

// traced reports whether this run records a timeline.
func traced() bool { return os.Getenv(traceEnv) != "" }
