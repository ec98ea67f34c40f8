package etcdtest

import (
	"fmt"
	"net/url"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/braidmesh/braid/internal/testenv"
)

// readyTimeout bounds how long Start and Restart wait for the server.
const readyTimeout = 20 * time.Second

// Option changes the embedded server's configuration.
type Option func(*embed.Config)

// WithConfig lets f adjust the embed.Config before every start, for settings
// this package has no option for.
func WithConfig(f func(*embed.Config)) Option { return Option(f) }

// WithoutFsync turns off fsync, for benchmarks that measure the client rather
// than the disk. Production etcd fsyncs, so latency baselines should not use it.
func WithoutFsync() Option { return func(c *embed.Config) { c.UnsafeNoFsync = true } }

// WithLogger sends the server's logs to lg; by default they are discarded.
func WithLogger(lg *zap.Logger) Option {
	return func(c *embed.Config) { c.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg) }
}

// Server is a running embedded etcd.
type Server struct {
	dir       string
	clientURL url.URL
	peerURL   url.URL
	opts      []Option

	mu sync.Mutex
	e  *embed.Etcd // nil while stopped
}

// Start starts an etcd server that stops when t ends.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	s := &Server{dir: t.TempDir(), opts: opts}
	var err error
	for range 3 { // a free port can be taken between finding and binding it
		ports := testenv.FreePorts(t, 2)
		s.clientURL = url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[0])}
		s.peerURL = url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[1])}
		if err = s.start(); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) config() *embed.Config {
	cfg := embed.NewConfig()
	cfg.Name = "etcdtest"
	cfg.Dir = s.dir
	cfg.TickMs = 10
	cfg.ElectionMs = 100
	cfg.ListenClientUrls = []url.URL{s.clientURL}
	cfg.AdvertiseClientUrls = []url.URL{s.clientURL}
	cfg.ListenPeerUrls = []url.URL{s.peerURL}
	cfg.AdvertisePeerUrls = []url.URL{s.peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	for _, o := range s.opts {
		o(cfg)
	}
	return cfg
}

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.e != nil {
		return nil
	}
	e, err := embed.StartEtcd(s.config())
	if err != nil {
		return err
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return fmt.Errorf("etcd failed before ready: %w", err)
	case <-time.After(readyTimeout):
		e.Close()
		return fmt.Errorf("etcd not ready after %v", readyTimeout)
	}
	s.e = e
	return nil
}

// Endpoints returns the server's client URLs, for clientv3.Config.Endpoints or
// kvstore/etcd.Config.Endpoints. They stay the same across Restart.
func (s *Server) Endpoints() []string { return []string{s.clientURL.String()} }

// Addr returns the host:port of the client listener.
func (s *Server) Addr() string { return s.clientURL.Host }

// Stop stops the server, closing its listeners and connections. Stopping a
// stopped server does nothing. etcd waits up to ~5 s for open watch streams
// to end before cutting them: close clients first, or connect them through a
// Proxy and Partition it, to stop at once.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.e == nil {
		return
	}
	s.e.Close()
	s.e = nil
}

// Restart stops the server if it runs and starts it again on the same ports
// with the same data. See Stop about open watch streams.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	var err error
	// The old listener's port may be briefly unavailable; retry.
	for deadline := time.Now().Add(readyTimeout); ; {
		if err = s.start(); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("restart etcd: %v", err)
	}
}
