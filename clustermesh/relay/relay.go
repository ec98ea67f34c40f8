package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"golang.org/x/crypto/bcrypt"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/kvstore/etcd"
)

// Defaults for zero Config fields.
const (
	// DefaultLeaseTTL is the TTL of each mirrored cluster's relay-local
	// lease; the relay renews it every third of it. Keys go away when the
	// relay revokes the lease (their cluster left), not by expiry: the
	// leases live in the relay's own etcd, which stops with it.
	DefaultLeaseTTL     = 2 * time.Minute
	DefaultStartTimeout = time.Minute
	// AgentUser is the etcd user agents read the mirror as: it may read
	// everything under clustermesh.Root and write nothing.
	AgentUser = "agent"
	rootUser  = "root"
	agentRole = "agent"
)

// Source is the validated view of the broker that a relay mirrors: a
// *remote.Watcher over the cluster's own broker connection. The relay
// calls Entries, then Run, and owns both until its own Run returns.
type Source interface {
	Entries(ctx context.Context) <-chan kvstore.Event
	Run(ctx context.Context) error
}

// Config configures a Relay.
type Config struct {
	// Cluster is the relay's own cluster, named in the agents' bundle.
	Cluster clustermesh.ClusterName
	// Upstream is the validated mesh to mirror. Required.
	Upstream Source
	// Listen are the client URLs the relay's etcd serves agents on
	// (https://host:port). Required.
	Listen []string
	// Advertise are the URLs written into the agents' bundle; zero means
	// Listen.
	Advertise []string
	// ExtraSANs are more names or IPs for the server certificate, besides
	// loopback and the hosts of Listen and Advertise.
	ExtraSANs []string
	// DataDir holds the relay's CA, server certificate, passwords, the
	// agents' bundle (AgentsFile) and the mirror's etcd data. Required;
	// keep it across restarts so that agents' watches resume.
	DataDir string
	// MetricsURL is where the mirror's etcd serves /metrics and /health
	// (http://host:port); zero means a free loopback port.
	MetricsURL string
	// LeaseTTL: zero means DefaultLeaseTTL.
	LeaseTTL time.Duration
	// HeartbeatInterval and ElectionTimeout tune the mirror's raft; zero
	// means etcd's defaults.
	HeartbeatInterval, ElectionTimeout time.Duration
	// StartTimeout bounds waiting for the mirror's etcd; zero means
	// DefaultStartTimeout.
	StartTimeout time.Duration
	// Logger receives the relay's logs; nil discards them.
	Logger *slog.Logger
	// Registerer receives the relay's metrics; nil registers none.
	Registerer prometheus.Registerer
}

// Relay mirrors the validated mesh into its own etcd. See the package doc.
type Relay struct {
	cfg       Config
	log       *slog.Logger
	listen    []url.URL
	metrics   *metrics
	ready     chan struct{}
	started   atomic.Bool
	stopping  atomic.Bool
	endpoints []string // what the relay's own client dials

	mu         sync.Mutex
	creds      join.Credentials
	metricsURL string
	status     Status
}

// Status is what a relay reports about its mirror.
type Status struct {
	// Clusters are the clusters mirrored now; Keys how many keys the
	// mirror holds.
	Clusters, Keys int
	// MeshListed says the upstream configs and grants were listed since
	// start: clusters no longer in the mesh have been removed.
	MeshListed bool
	// Relisted counts, per cluster, the kinds whose list the relay
	// mirrored completely since start (their sync markers arrived).
	Relisted map[clustermesh.ClusterName]int
	// LastError is the latest failure, empty while healthy.
	LastError string
}

// New checks cfg and returns a relay that has not started.
func New(cfg Config) (*Relay, error) {
	if cfg.Upstream == nil {
		return nil, errors.New("new relay: no upstream")
	}
	if cfg.DataDir == "" {
		return nil, errors.New("new relay: no data directory")
	}
	if len(cfg.Listen) == 0 {
		return nil, errors.New("new relay: no listen URL")
	}
	if len(cfg.Advertise) == 0 {
		cfg.Advertise = cfg.Listen
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = DefaultStartTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	r := &Relay{cfg: cfg, log: cfg.Logger.With("component", "relay"), ready: make(chan struct{})}
	for _, s := range cfg.Listen {
		u, err := url.Parse(s)
		if err != nil || u.Scheme != "https" || u.Hostname() == "" || u.Port() == "" {
			return nil, fmt.Errorf("new relay: listen URL %q: want https://host:port", s)
		}
		r.listen = append(r.listen, *u)
		own := *u
		if ip := net.ParseIP(u.Hostname()); ip != nil && ip.IsUnspecified() {
			own.Host = net.JoinHostPort("127.0.0.1", u.Port())
		}
		r.endpoints = append(r.endpoints, own.String())
	}
	for _, s := range cfg.Advertise {
		if u, err := url.Parse(s); err != nil || u.Scheme != "https" || u.Hostname() == "" {
			return nil, fmt.Errorf("new relay: advertise URL %q: want https://host:port", s)
		}
	}
	if cfg.MetricsURL != "" {
		if u, err := url.Parse(cfg.MetricsURL); err != nil || u.Scheme != "http" || u.Port() == "" {
			return nil, fmt.Errorf("new relay: metrics URL %q: want http://host:port", cfg.MetricsURL)
		}
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("new relay: %w", err)
	}
	r.metrics = m
	return r, nil
}

// Ready is closed once the mirror's etcd serves agents (with what it held
// before, if anything) and AgentCredentials is valid.
func (r *Relay) Ready() <-chan struct{} { return r.ready }

// AgentCredentials returns the bundle agents use to read the mirror (also
// saved as AgentsFile in the data directory), once Ready.
func (r *Relay) AgentCredentials() join.Credentials {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.creds
}

// MetricsURL is where the mirror's etcd serves /metrics, once Ready.
func (r *Relay) MetricsURL() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.metricsURL
}

// Status returns the mirror's state now.
func (r *Relay) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.status
	s.Relisted = maps.Clone(s.Relisted)
	return s
}

// sans are the names the server certificate carries besides loopback.
func (r *Relay) sans() []string {
	out := slices.Clone(r.cfg.ExtraSANs)
	for _, s := range slices.Concat(r.cfg.Listen, r.cfg.Advertise) {
		if u, err := url.Parse(s); err == nil {
			out = append(out, u.Hostname())
		}
	}
	return out
}

// Run starts the mirror's etcd, then the upstream Source, and mirrors it
// until ctx is done (it returns nil) or the mirror fails. It stops etcd
// and waits for everything it started before returning. Run may be called
// once.
func (r *Relay) Run(ctx context.Context) error {
	if !r.started.CompareAndSwap(false, true) {
		return errors.New("run relay: already started")
	}
	dir := r.cfg.DataDir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("run relay: data directory: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("run relay: data directory: %w", err)
	}
	caPEM, err := ensurePKI(dir, r.sans())
	if err != nil {
		return fmt.Errorf("run relay: %w", err)
	}
	sec, err := loadOrCreateSecrets(dir)
	if err != nil {
		return fmt.Errorf("run relay: %w", err)
	}
	e, err := r.startEtcd()
	if err != nil {
		return fmt.Errorf("run relay: %w", err)
	}
	var closeOnce sync.Once
	closeEtcd := func() {
		closeOnce.Do(func() {
			r.stopping.Store(true)
			e.Close()
		})
	}
	defer closeEtcd()
	timer := time.NewTimer(r.cfg.StartTimeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		return fmt.Errorf("run relay: etcd: %w", err)
	case <-timer.C:
		return fmt.Errorf("run relay: etcd not ready after %v", r.cfg.StartTimeout)
	case <-ctx.Done():
		return nil
	}
	tlsCfg, err := join.ClientTLSConfig(caPEM)
	if err != nil {
		return fmt.Errorf("run relay: %w", err)
	}
	cli, err := r.adminClient(ctx, tlsCfg, sec)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("run relay: %w", err)
	}
	defer cli.Close()

	creds := join.Credentials{Cluster: r.cfg.Cluster, Endpoints: slices.Clone(r.cfg.Advertise), CACertPEM: caPEM,
		Username: AgentUser, Password: sec.Agent}
	if err := creds.Save(filepath.Join(dir, AgentsFile)); err != nil {
		return fmt.Errorf("run relay: %w", err)
	}
	r.mu.Lock()
	r.creds = creds
	r.mu.Unlock()

	m, err := newMirror(ctx, cli, r)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("run relay: %w", err)
	}
	close(r.ready)
	r.log.Info("relay ready", "listen", r.cfg.Listen, "advertise", r.cfg.Advertise, "metrics", r.MetricsURL(),
		"mirroredClusters", len(m.leases), "mirroredKeys", len(m.have))

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel(nil)
	entries := r.cfg.Upstream.Entries(ctx)
	wg.Add(3)
	go func() {
		defer wg.Done()
		if err := r.cfg.Upstream.Run(ctx); err != nil && ctx.Err() == nil {
			cancel(fmt.Errorf("upstream: %w", err))
		}
	}()
	go func() {
		defer wg.Done()
		if err := m.keepAlive(ctx); err != nil && ctx.Err() == nil {
			cancel(err)
		}
	}()
	go func() {
		defer wg.Done()
		if err := m.run(ctx, entries); err != nil && ctx.Err() == nil {
			cancel(err)
		}
	}()
	select {
	case <-ctx.Done():
	case err := <-e.Err():
		cancel(fmt.Errorf("etcd: %w", err))
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		r.setError(err)
		return fmt.Errorf("run relay: %w", err)
	}
	return nil
}

func (r *Relay) setError(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status.LastError = err.Error()
}

// startEtcd starts the mirror's etcd: TLS on the client URLs, gRPC only
// there (metrics and the JSON gateway on the loopback metrics URL), a
// loopback peer URL nobody else dials.
func (r *Relay) startEtcd() (*embed.Etcd, error) {
	dir := r.cfg.DataDir
	metricsURL := r.cfg.MetricsURL
	if metricsURL == "" {
		port, err := freePort()
		if err != nil {
			return nil, fmt.Errorf("metrics listener: %w", err)
		}
		metricsURL = fmt.Sprintf("http://127.0.0.1:%d", port)
	}
	mu, _ := url.Parse(metricsURL)
	peerPort, err := freePort()
	if err != nil {
		return nil, fmt.Errorf("peer listener: %w", err)
	}
	peer := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", peerPort)}
	ec := embed.NewConfig()
	ec.Name = "relay"
	ec.Dir = filepath.Join(dir, etcdDir)
	ec.ListenClientUrls = r.listen
	ec.AdvertiseClientUrls = r.listen
	ec.ListenPeerUrls = []url.URL{peer}
	ec.AdvertisePeerUrls = []url.URL{peer}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	ec.ListenMetricsUrls = nil
	ec.ListenClientHttpUrls = []url.URL{*mu}
	ec.ClientTLSInfo = transport.TLSInfo{
		CertFile: filepath.Join(dir, serverCertFile),
		KeyFile:  filepath.Join(dir, serverKeyFile),
	}
	// Passwords are random (rand.Text), so a slow hash adds nothing.
	ec.BcryptCost = uint(bcrypt.MinCost)
	if d := r.cfg.HeartbeatInterval; d > 0 {
		ec.TickMs = uint(d.Milliseconds())
	}
	if d := r.cfg.ElectionTimeout; d > 0 {
		ec.ElectionMs = uint(d.Milliseconds())
	}
	ec.AutoCompactionMode = embed.CompactorModePeriodic
	ec.AutoCompactionRetention = time.Hour.String()
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(etcd.NewZapLogger(r.log.With("component", "relay-etcd").Handler(), &r.stopping))
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	r.mu.Lock()
	r.metricsURL = metricsURL
	r.mu.Unlock()
	return e, nil
}

// adminClient connects as root, turning authentication on first: root may
// do everything, the agent user may read clustermesh.Root and nothing else.
func (r *Relay) adminClient(ctx context.Context, tlsCfg *tls.Config, sec secrets) (*clientv3.Client, error) {
	dial := func(user, pass string) (*clientv3.Client, error) {
		return clientv3.New(clientv3.Config{Endpoints: r.endpoints, TLS: tlsCfg, Username: user, Password: pass,
			DialTimeout: 5 * time.Second, Context: ctx, Logger: etcd.NewZapLogger(slog.DiscardHandler, nil)})
	}
	cli, err := dial("", "")
	if err != nil {
		return nil, fmt.Errorf("connect to mirror: %w", err)
	}
	st, err := cli.AuthStatus(ctx)
	if err != nil {
		cli.Close()
		return nil, fmt.Errorf("mirror auth status: %w", err)
	}
	if !st.Enabled {
		err := enableAuth(ctx, cli, sec)
		cli.Close()
		if err != nil {
			return nil, fmt.Errorf("enable mirror auth: %w", err)
		}
	} else {
		cli.Close()
	}
	cli, err = dial(rootUser, sec.Root)
	if err != nil {
		return nil, fmt.Errorf("connect to mirror as root: %w", err)
	}
	return cli, nil
}

func enableAuth(ctx context.Context, c *clientv3.Client, sec secrets) error {
	ensureUser := func(user, pass string) error {
		if _, err := c.UserAdd(ctx, user, pass); errors.Is(err, rpctypes.ErrUserAlreadyExist) {
			_, err = c.UserChangePassword(ctx, user, pass)
			return err
		} else if err != nil {
			return err
		}
		return nil
	}
	if err := ensureUser(rootUser, sec.Root); err != nil {
		return fmt.Errorf("root user: %w", err)
	}
	if _, err := c.UserGrantRole(ctx, rootUser, "root"); err != nil {
		return fmt.Errorf("root role: %w", err)
	}
	if _, err := c.RoleAdd(ctx, agentRole); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
		return fmt.Errorf("agent role: %w", err)
	}
	if _, err := c.RoleGrantPermission(ctx, agentRole, clustermesh.Root, clientv3.GetPrefixRangeEnd(clustermesh.Root),
		clientv3.PermissionType(clientv3.PermRead)); err != nil {
		return fmt.Errorf("agent role: %w", err)
	}
	if err := ensureUser(AgentUser, sec.Agent); err != nil {
		return fmt.Errorf("agent user: %w", err)
	}
	if _, err := c.UserGrantRole(ctx, AgentUser, agentRole); err != nil {
		return fmt.Errorf("agent user: %w", err)
	}
	if _, err := c.AuthEnable(ctx); err != nil {
		return err
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
