package status_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh/status"
)

// TestSlowBodyConnectionsAreClosed opens 200 connections that declare a
// request body and never send it: the server must close every one within
// its read timeout, and its goroutines must return to the baseline.
func TestSlowBodyConnectionsAreClosed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() { served <- status.Serve(ctx, ln, fixed(status.Snapshot{Cluster: "east", Healthy: true}), nil) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Error(err)
		}
	}()
	// One complete request first, so the server's own goroutines exist.
	if _, err := status.Fetch(t.Context(), http.DefaultClient, "http://"+ln.Addr().String()); err != nil {
		t.Fatal(err)
	}
	http.DefaultClient.CloseIdleConnections()
	baseline := runtime.NumGoroutine()

	const n = 200
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		if _, err := fmt.Fprintf(c, "POST /api/status HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
	}
	limit := status.ReadTimeout + 5*time.Second // the bound under test, plus scheduling slack
	for i, c := range conns {
		if err := c.SetReadDeadline(time.Now().Add(limit)); err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, c); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("connection %d still open after %v: the server has no read timeout", i, limit)
			}
		}
	}
	deadline := time.Now().Add(limit)
	for runtime.NumGoroutine() > baseline {
		if time.Now().After(deadline) {
			t.Fatalf("goroutines: %d, baseline %d", runtime.NumGoroutine(), baseline)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestFetchCapsTheResponse checks that braid's client refuses a status
// document larger than MaxSnapshotBytes instead of reading it all.
func TestFetchCapsTheResponse(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"cluster":"`)
		chunk := strings.Repeat("a", 1<<20)
		for range status.MaxSnapshotBytes/len(chunk) + 2 {
			if _, err := io.WriteString(w, chunk); err != nil {
				return
			}
		}
		fmt.Fprint(w, `"}`)
	}))
	defer srv.Close()
	_, err := status.Fetch(t.Context(), srv.Client(), srv.URL)
	if err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("Fetch of an oversized document = %v, want an error saying it is too large", err)
	}
}
