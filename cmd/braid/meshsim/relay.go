package meshsim

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/clustermesh/relay"
	"github.com/braidmesh/braid/clustermesh/remote"
	"github.com/braidmesh/braid/cmd/braid/benchkit"
)

// relaySpec is what one relay process runs.
type relaySpec struct {
	JoinFile string
	DataDir  string
	// RawKey, if set, is watched raw on the relay's broker connection, for
	// the baseline.
	RawKey     string
	ProfileDir string
}

func relayCommand() *cobra.Command {
	var spec relaySpec
	cmd := &cobra.Command{
		Use:    "relay",
		Short:  "One cluster's relay (run by braid sim --consumers-via relay); JSON lines on stdout, stops at the end of stdin",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if spec.JoinFile == "" || spec.DataDir == "" {
				return errors.New("--join and --data-dir are required")
			}
			return runRelay(cmd.Context(), spec, cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&spec.JoinFile, "join", "", "join bundle of the relay's cluster (its broker credentials)")
	f.StringVar(&spec.DataDir, "data-dir", "", "the relay's data directory; its agents' bundle is written there as "+relay.AgentsFile)
	f.StringVar(&spec.RawKey, "raw-key", "", "key to watch raw on the broker, for the baseline")
	f.StringVar(&spec.ProfileDir, "profile-dir", "", "write a CPU profile of this process here")
	return cmd
}

// runRelay runs a relay as the operator does (clustermesh/operator: a
// remote.Watcher of every cluster over the cluster's broker connection,
// mirrored into the relay's embedded etcd), reports evReady with the
// mirror's metrics URL once it serves, and stops at the end of stdin.
func runRelay(ctx context.Context, spec relaySpec, stdin io.Reader, stdout, stderr io.Writer) error {
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	creds, err := join.LoadCredentials(spec.JoinFile, log)
	if err != nil {
		return err
	}
	if spec.ProfileDir != "" {
		stop, err := benchkit.StartCPUProfile(fmt.Sprintf("%s/relay-%s.cpu.pprof", spec.ProfileDir, creds.Cluster))
		if err != nil {
			return err
		}
		defer stop()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	store, err := join.Connect(ctx, creds, log)
	if err != nil {
		return err
	}
	defer store.Close()
	up, err := remote.New(remote.Config{}, store, log.With("component", "relay-upstream"), nil)
	if err != nil {
		return err
	}
	// The relay's etcd binds a port picked here (and ports it picks
	// itself); another process may take one in between, so a start that
	// finds its address in use is tried again on new ports.
	var r *relay.Relay
	done := make(chan error, 1)
	for attempt := 1; ; attempt++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return fmt.Errorf("relay listener: %w", err)
		}
		listen := fmt.Sprintf("https://%s", l.Addr())
		l.Close()
		r, err = relay.New(relay.Config{Cluster: creds.Cluster, Upstream: up, Listen: []string{listen}, DataDir: spec.DataDir, Logger: log})
		if err != nil {
			return err
		}
		go func() { done <- r.Run(ctx) }()
		select {
		case <-r.Ready():
		case err := <-done:
			if err == nil {
				err = ctx.Err()
			}
			if errors.Is(err, syscall.EADDRINUSE) && attempt < 5 {
				log.Warn("relay's address taken before it bound it; starting again on other ports", "attempt", attempt, "err", err)
				continue
			}
			return fmt.Errorf("relay of %s stopped before serving: %w", creds.Cluster, err)
		}
		break
	}

	out := newLineWriter(stdout)
	defer out.flush()
	out.write(event{E: evReady, Msg: r.MetricsURL()})
	out.flush()
	rawDone := make(chan struct{})
	go func() {
		defer close(rawDone)
		if spec.RawKey == "" {
			return
		}
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		raw := store.Client().Watch(ctx, spec.RawKey)
		for {
			select {
			case resp, ok := <-raw:
				if !ok {
					return
				}
				if err := resp.Err(); err != nil {
					out.write(event{E: evError, Msg: fmt.Sprintf("raw watch: %v", err)})
					continue
				}
				now := time.Now().UnixNano()
				for _, ev := range resp.Events {
					out.write(event{E: evRaw, T: now, Raw: string(ev.Kv.Value)})
				}
			case <-t.C:
				out.flush()
			}
		}
	}()

	// End of input (or the relay failing) ends the process.
	input := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, bufio.NewReader(stdin))
		input <- err
	}()
	var runErr error
	select {
	case <-input:
		cancel()
		runErr = <-done
	case runErr = <-done:
		if runErr == nil {
			runErr = fmt.Errorf("relay of %s stopped", creds.Cluster)
		}
		out.write(event{E: evError, Msg: runErr.Error()})
		cancel()
	}
	<-rawDone
	return runErr
}
