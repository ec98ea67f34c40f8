package meshsim

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/clustermesh/remote"
	"github.com/braidmesh/braid/cmd/braid/benchkit"
)

// consumeSpec is what one consumer process runs.
type consumeSpec struct {
	JoinFile  string
	Consumers int
	// Expect is how many remote clusters make the initial sync complete.
	Expect int
	// RawKey, if set, is watched raw by the first consumer.
	RawKey     string
	ProfileDir string
}

func consumeCommand() *cobra.Command {
	var spec consumeSpec
	cmd := &cobra.Command{
		Use:    "consume",
		Short:  "Consumers of one cluster (run by braid sim); JSON lines on stdout, commands on stdin",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if spec.Consumers < 1 || spec.Consumers > maxConsumersPerCluster {
				return fmt.Errorf("--consumers %d: must be in 1..%d", spec.Consumers, maxConsumersPerCluster)
			}
			if spec.Expect < 0 || spec.Expect > int(clustermesh.MaxClusterID) {
				return fmt.Errorf("--expect %d: must be in 0..%d", spec.Expect, clustermesh.MaxClusterID)
			}
			return consume(cmd.Context(), spec, cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&spec.JoinFile, "join", "", "join bundle of the consumers' cluster")
	f.IntVar(&spec.Consumers, "consumers", 1, "consumers (Watchers, each with its own connection) in this process")
	f.IntVar(&spec.Expect, "expect", 0, "remote clusters to sync before reporting synced")
	f.StringVar(&spec.RawKey, "raw-key", "", "key the first consumer watches raw, for the baseline")
	f.StringVar(&spec.ProfileDir, "profile-dir", "", "write a CPU and a heap profile of this process here")
	return cmd
}

// lineWriter writes events as JSON lines, flushing at least every 50 ms.
type lineWriter struct {
	mu  sync.Mutex
	w   *bufio.Writer
	enc *json.Encoder
}

func newLineWriter(w io.Writer) *lineWriter {
	bw := bufio.NewWriterSize(w, 64<<10)
	return &lineWriter{w: bw, enc: json.NewEncoder(bw)}
}

func (l *lineWriter) write(ev event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	_ = l.enc.Encode(ev)
}

func (l *lineWriter) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	_ = l.w.Flush()
}

func consume(ctx context.Context, spec consumeSpec, stdin io.Reader, stdout, stderr io.Writer) error {
	// Measure with the agent's runtime setting (cmd/braid-agent: GOGC 50
	// unless the environment says otherwise).
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	creds, err := join.LoadCredentials(spec.JoinFile, log)
	if err != nil {
		return err
	}
	if spec.ProfileDir != "" {
		stop, err := benchkit.StartCPUProfile(fmt.Sprintf("%s/consumer-%s.cpu.pprof", spec.ProfileDir, creds.Cluster))
		if err != nil {
			return err
		}
		defer stop()
	}
	out := newLineWriter(stdout)
	defer out.flush()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				out.flush()
			}
		}
	})

	consumers := make([]*consumer, spec.Consumers)
	for i := range consumers {
		store, err := join.Connect(ctx, creds, log)
		if err != nil {
			return err
		}
		defer store.Close()
		w, err := remote.New(remote.Config{Self: creds.Cluster}, store, log, nil)
		if err != nil {
			return err
		}
		c := &consumer{idx: i, w: w, out: out, expect: spec.Expect}
		consumers[i] = c
		changes := w.Subscribe(ctx)
		wg.Go(func() { _ = w.Run(ctx) })
		wg.Go(func() { c.follow(changes) })
		if i == 0 && spec.RawKey != "" {
			raw := store.Client().Watch(ctx, spec.RawKey)
			wg.Go(func() {
				for resp := range raw {
					if err := resp.Err(); err != nil {
						out.write(event{E: evError, Msg: fmt.Sprintf("raw watch: %v", err)})
						continue
					}
					now := time.Now().UnixNano()
					for _, ev := range resp.Events {
						out.write(event{E: evRaw, C: 0, T: now, Raw: string(ev.Kv.Value)})
					}
				}
			})
		}
	}

	// Commands: "counts" asks every consumer for its snapshot's counts;
	// end of input ends the process.
	sc := bufio.NewScanner(stdin)
	for sc.Scan() {
		switch strings.TrimSpace(sc.Text()) {
		case "counts":
			for _, c := range consumers {
				n, by := countSnapshot(c.w.Snapshot())
				out.write(event{E: evCounts, C: c.idx, Counts: &n, ByCluster: by})
			}
			out.flush()
		}
	}
	if spec.ProfileDir != "" {
		if f, err := os.Create(fmt.Sprintf("%s/consumer-%s.heap.pprof", spec.ProfileDir, creds.Cluster)); err == nil {
			_ = pprof.WriteHeapProfile(f)
			f.Close()
		}
	}
	out.write(event{E: evFinal, CPUNanos: int64(benchkit.SelfCPU()), PeakRSS: benchkit.SelfPeakRSS()})
	if err := sc.Err(); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("read commands: %w", err)
	}
	return nil
}

// consumer is one Watcher and what it reports.
type consumer struct {
	idx    int
	w      *remote.Watcher
	out    *lineWriter
	expect int
}

// follow reports the Watcher's changes: nothing per entry until every
// expected cluster has synced (the cold sync), then every service whose
// backends changed and every cluster that syncs or leaves.
func (c *consumer) follow(changes <-chan remote.Change) {
	synced := map[clustermesh.ClusterName]bool{}
	done := c.expect == 0
	if done {
		c.reportSynced(time.Now())
	}
	for ch := range changes {
		switch ch.Type {
		case remote.ClusterSynced:
			if !done {
				synced[ch.Cluster] = true
				if len(synced) >= c.expect {
					done = true
					c.reportSynced(ch.Time)
				}
				continue
			}
			c.out.write(event{E: evJoined, C: c.idx, T: ch.Time.UnixNano(), Cluster: ch.Cluster})
		case remote.ClusterGone:
			delete(synced, ch.Cluster)
			if done {
				c.out.write(event{E: evGone, C: c.idx, T: ch.Time.UnixNano(), Cluster: ch.Cluster})
			}
		case remote.Upsert, remote.Delete:
			if !done || ch.Kind != clustermesh.KindServices {
				continue
			}
			var backends []clustermesh.Backend
			var name string
			switch s := ch.Record.(type) {
			case clustermesh.Service:
				backends, name = s.Backends, s.NamespacedName()
			case *clustermesh.Service:
				backends, name = s.Backends, s.NamespacedName()
			default:
				continue
			}
			if ch.Type == remote.Delete {
				backends = nil
			}
			c.out.write(event{E: evService, C: c.idx, T: ch.Time.UnixNano(), Cluster: ch.Cluster, Service: name, Digest: digest(backends)})
		}
	}
}

func (c *consumer) reportSynced(t time.Time) {
	n, _ := countSnapshot(c.w.Snapshot())
	c.out.write(event{E: evSynced, C: c.idx, T: t.UnixNano(), Counts: &n})
	c.out.flush()
}
