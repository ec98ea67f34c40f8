package broker

import (
	"context"
	"fmt"
	"log/slog"
	"net"
)

// StartLocal runs a broker in this process on dir, listening on free
// loopback ports, and waits until it serves or ctx is done. Once started,
// the broker runs until stop, which ends it and waits. It is for the demo
// and the benchmarks.
func StartLocal(ctx context.Context, dir string, log *slog.Logger) (b *Broker, stop func(), err error) {
	cport, err := freePort()
	if err != nil {
		return nil, nil, err
	}
	pport, err := freePort()
	if err != nil {
		return nil, nil, err
	}
	b, err = New(Config{DataDir: dir, Logger: log,
		ClientURLs: []string{fmt.Sprintf("https://127.0.0.1:%d", cport)}, PeerURL: fmt.Sprintf("https://127.0.0.1:%d", pport)})
	if err != nil {
		return nil, nil, err
	}
	bctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- b.Run(bctx) }()
	stop = func() { cancel(); <-done }
	select {
	case <-b.Ready():
		return b, stop, nil
	case err := <-done:
		cancel()
		return nil, nil, fmt.Errorf("broker: %w", err)
	case <-ctx.Done():
		stop()
		return nil, nil, ctx.Err()
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
