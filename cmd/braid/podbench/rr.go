package podbench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"time"

	"github.com/spf13/cobra"
)

// RRSize is the size of each request and response.
const RRSize = 64

// RRResult is the latency of request/response round trips on one TCP
// connection (like netperf TCP_RR).
type RRResult struct {
	Rounds int           `json:"rounds"`
	P50    time.Duration `json:"p50Ns"`
	P90    time.Duration `json:"p90Ns"`
	P99    time.Duration `json:"p99Ns"`
	Max    time.Duration `json:"maxNs"`
}

// MeasureRR makes rounds round trips to addr, after a tenth of them to warm
// up, and returns their percentiles.
func MeasureRR(ctx context.Context, addr string, rounds int) (RRResult, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return RRResult{}, fmt.Errorf("request/response to %s: %w", addr, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	buf := make([]byte, RRSize)
	lat := make([]time.Duration, 0, rounds)
	warm := rounds / 10
	for i := range rounds + warm {
		start := time.Now()
		if _, err := conn.Write(buf); err != nil {
			return RRResult{}, fmt.Errorf("request/response to %s: round %d: %w", addr, i, err)
		}
		if _, err := io.ReadFull(conn, buf); err != nil {
			return RRResult{}, fmt.Errorf("request/response to %s: round %d: %w", addr, i, err)
		}
		if i >= warm {
			lat = append(lat, time.Since(start))
		}
	}
	slices.Sort(lat)
	pct := func(p float64) time.Duration { return lat[int(p/100*float64(len(lat)-1))] }
	return RRResult{Rounds: rounds, P50: pct(50), P90: pct(90), P99: pct(99), Max: lat[len(lat)-1]}, nil
}

// ServeRR answers every RRSize-byte request on ln with the same bytes
// until ctx is done.
func ServeRR(ctx context.Context, ln net.Listener) error {
	go func() { <-ctx.Done(); ln.Close() }()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("request/response server: %w", err)
		}
		go func() {
			defer conn.Close()
			buf := make([]byte, RRSize)
			for {
				if _, err := io.ReadFull(conn, buf); err != nil {
					return
				}
				if _, err := conn.Write(buf); err != nil {
					return
				}
			}
		}()
	}
}

func rrCommand() *cobra.Command {
	var (
		addr   string
		rounds int
	)
	cmd := &cobra.Command{
		Use:    "rr",
		Short:  "Time request/response round trips to a braid bench rr-server (run by braid bench pods in a pod)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if rounds < 1 {
				return fmt.Errorf("--rounds %d: want at least 1", rounds)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Minute)
			defer cancel()
			res, err := MeasureRR(ctx, addr, rounds)
			if err != nil {
				return err
			}
			return json.NewEncoder(cmd.OutOrStdout()).Encode(res)
		},
	}
	cmd.Flags().StringVar(&addr, "addr", "", "server address, host:port")
	cmd.Flags().IntVar(&rounds, "rounds", 2000, "round trips measured")
	return cmd
}

func rrServerCommand() *cobra.Command {
	var listen string
	cmd := &cobra.Command{
		Use:    "rr-server",
		Short:  "Echo request/response round trips (run by braid bench pods in a pod)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			return ServeRR(cmd.Context(), ln)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", ":5202", "listen address")
	return cmd
}
