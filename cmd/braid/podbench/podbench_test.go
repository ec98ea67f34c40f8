package podbench

import (
	"bytes"
	"net"
	"strings"
	"testing"
	"time"
)

func TestParseIperf(t *testing.T) {
	got, err := parseIperf([]byte(`{"start":{},"end":{"sum_sent":{"bits_per_second":2.5e9},"sum_received":{"bits_per_second":2.4e9}}}`))
	if err != nil || got != 2.4e9 {
		t.Fatalf("got %v %v", got, err)
	}
	if _, err := parseIperf([]byte(`{"error":"unable to connect to server: Connection refused"}`)); err == nil || !strings.Contains(err.Error(), "Connection refused") {
		t.Fatalf("iperf3 error: %v", err)
	}
	if _, err := parseIperf([]byte(`{"end":{}}`)); err == nil {
		t.Fatal("no throughput accepted")
	}
}

func TestRoundTripsOverLoopback(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	ctx := t.Context()
	go func() { done <- ServeRR(ctx, ln) }()
	res, err := MeasureRR(ctx, ln.Addr().String(), 200)
	if err != nil {
		t.Fatal(err)
	}
	if res.Rounds != 200 || res.P50 <= 0 || res.P50 > res.P90 || res.P90 > res.P99 || res.P99 > res.Max {
		t.Fatalf("percentiles out of order: %+v", res)
	}
	ln.Close()
	if err := <-done; err != nil {
		t.Fatalf("server: %v", err)
	}
}

func TestPrintShowsBothPaths(t *testing.T) {
	var b bytes.Buffer
	Print(&b, Result{
		Tunnel:          Path{What: "pod a → pod b", ThroughputBitsPerSec: 1.5e9, Latency: RRResult{P50: 900 * time.Microsecond}},
		Underlay:        Path{What: "node a → node b", ThroughputBitsPerSec: 12e9, Latency: RRResult{P50: 90 * time.Microsecond}},
		ThroughputRatio: 0.125, LatencyP50Ratio: 10,
	})
	for _, want := range []string{"1.50 Gbit/s", "12.00 Gbit/s", "900µs", "90µs", "throughput 0.12", "p50 10.00"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, b.String())
		}
	}
}
