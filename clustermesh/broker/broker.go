package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/kvstore/etcd"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"golang.org/x/crypto/bcrypt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// Defaults for zero Config fields.
const (
	DefaultClientURL    = "https://127.0.0.1:2379"
	DefaultPeerURL      = "https://127.0.0.1:2380"
	DefaultName         = "broker"
	DefaultStartTimeout = time.Minute
	// DefaultCompactionRetention is how much history etcd keeps; watchers
	// that fall further behind must list again.
	DefaultCompactionRetention = time.Hour
)

// ErrNotRunning is returned by Broker methods that need a running, ready
// broker when it is not.
var ErrNotRunning = errors.New("broker not running")

// Config configures a Broker.
type Config struct {
	// DataDir holds the PKI, root credentials and etcd data. Required.
	DataDir string
	// Name is the etcd member name; zero means DefaultName.
	Name string
	// ClientURLs are listened on and advertised to clients; each must be
	// https. Zero means DefaultClientURL.
	ClientURLs []string
	// PeerURL is the etcd peer URL (https); zero means DefaultPeerURL.
	PeerURL string
	// ExtraSANs are more IP addresses or DNS names for the server
	// certificate, besides 127.0.0.1, ::1, localhost and the hosts in ClientURLs and
	// PeerURL: the names clusters use to reach the broker.
	ExtraSANs []string
	// HeartbeatInterval and ElectionTimeout tune etcd's raft; zero means
	// etcd's defaults (100 ms, 1 s).
	HeartbeatInterval, ElectionTimeout time.Duration
	// StartTimeout bounds waiting for etcd to be ready; zero means
	// DefaultStartTimeout.
	StartTimeout time.Duration
	// MetricsURL is where etcd serves /metrics, /health and /version
	// (http, loopback by default); the client URLs serve only gRPC. Zero
	// means http://127.0.0.1 on a free port.
	MetricsURL string
	// JoinURL, if set, is where the join endpoint listens (https://host:port,
	// port 0 picks one): `braid join` redeems tokens there, operators renew
	// certificates and `braid leave` leaves. Its host must be in the server
	// certificate (a listen host or ExtraSANs).
	JoinURL string
	// ClientCertValidity is how long certificates issued to clusters are
	// valid; zero means DefaultClientCertValidity.
	ClientCertValidity time.Duration
	// StatusAddr, if set, is where the whole mesh's live status page,
	// its JSON API, /metrics, /healthz and /readyz are served (host:port,
	// port 0 picks one). A non-loopback address needs StatusClientCerts
	// or StatusToken.
	StatusAddr string
	// StatusClientCerts serves the page over TLS (the broker's server
	// certificate) and requires client certificates signed by its CA.
	StatusClientCerts bool
	// StatusToken, if set, is a read-only bearer token every request needs.
	StatusToken string
	// Logger receives the broker's and etcd's logs; nil discards them.
	// Authentication requests, tokens and password hashes are never
	// logged, at any level.
	Logger *slog.Logger
}

// Broker runs an embedded etcd with TLS and authentication: the place where
// clusters meet. Create it with New, then call Run once.
type Broker struct {
	cfg        Config
	log        *slog.Logger
	clientURLs []url.URL
	peerURL    url.URL
	ready      chan struct{}
	started    atomic.Bool
	// etcdStopping demotes etcd's logs to debug while it shuts down.
	etcdStopping atomic.Bool

	guard *guard

	// joinMu serializes joins: the clash checks and the reservation of a
	// name and ID must not interleave.
	joinMu sync.Mutex

	mu         sync.Mutex
	admin      *clientv3.Client // root client while ready; nil otherwise
	pki        *PKI
	metricsURL url.URL
	joinAddr   string
	statusAddr string
}

// New checks cfg and returns a broker that has not started.
func New(cfg Config) (*Broker, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("new broker: no data directory")
	}
	if cfg.Name == "" {
		cfg.Name = DefaultName
	}
	if len(cfg.ClientURLs) == 0 {
		cfg.ClientURLs = []string{DefaultClientURL}
	}
	if cfg.PeerURL == "" {
		cfg.PeerURL = DefaultPeerURL
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = DefaultStartTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Broker{cfg: cfg, log: log, ready: make(chan struct{}), guard: newGuard()}
	for _, s := range cfg.ClientURLs {
		u, err := parseHTTPSURL(s)
		if err != nil {
			return nil, fmt.Errorf("new broker: client URL: %w", err)
		}
		b.clientURLs = append(b.clientURLs, *u)
	}
	u, err := parseHTTPSURL(cfg.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("new broker: peer URL: %w", err)
	}
	b.peerURL = *u
	if cfg.MetricsURL != "" {
		m, err := url.Parse(cfg.MetricsURL)
		if err != nil || (m.Scheme != "http" && m.Scheme != "https") || m.Port() == "" {
			return nil, fmt.Errorf("new broker: metrics URL %q: want http://host:port", cfg.MetricsURL)
		}
		b.metricsURL = *m
	}
	return b, nil
}

// MetricsURL is where etcd serves /metrics, /health and /version, once
// Run has started it.
func (b *Broker) MetricsURL() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.metricsURL.Host == "" {
		return ""
	}
	return b.metricsURL.String()
}

// freeLoopbackURL returns http://127.0.0.1:PORT for a port free just now.
func freeLoopbackURL() (url.URL, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return url.URL{}, err
	}
	defer ln.Close()
	return url.URL{Scheme: "http", Host: ln.Addr().String()}, nil
}

func parseHTTPSURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "https" || u.Hostname() == "" || u.Port() == "" {
		return nil, fmt.Errorf("%q: want https://host:port", s)
	}
	return u, nil
}

// Ready is closed once Run has etcd serving with authentication on.
func (b *Broker) Ready() <-chan struct{} { return b.ready }

// Endpoints are the broker's client URLs.
func (b *Broker) Endpoints() []string { return slices.Clone(b.cfg.ClientURLs) }

// sans are the names the server certificate must carry: the configured extra
// ones and the concrete hosts of the listen URLs.
func (b *Broker) sans() []string {
	out := slices.Clone(b.cfg.ExtraSANs)
	for _, u := range append(slices.Clone(b.clientURLs), b.peerURL) {
		h := u.Hostname()
		if ip := net.ParseIP(h); ip != nil && ip.IsUnspecified() {
			continue // listening on all addresses: names come from ExtraSANs
		}
		out = append(out, h)
	}
	return out
}

// Run prepares the data directory (PKI, root credentials), starts etcd,
// enables authentication on first start, closes Ready, and serves until ctx
// is done (then it returns nil) or etcd fails. It stops etcd before
// returning. Run may be called only once.
func (b *Broker) Run(ctx context.Context) error {
	if !b.started.CompareAndSwap(false, true) {
		return errors.New("run broker: already started")
	}
	if err := ensureDataDir(b.cfg.DataDir, b.log); err != nil {
		return fmt.Errorf("run broker: %w", err)
	}
	pki, err := EnsurePKI(filepath.Join(b.cfg.DataDir, pkiDir), b.sans())
	if err != nil {
		return fmt.Errorf("run broker: %w", err)
	}
	tokenKey, err := EnsureTokenKey(filepath.Join(b.cfg.DataDir, pkiDir))
	if err != nil {
		return fmt.Errorf("run broker: %w", err)
	}
	root, err := loadOrCreateRootCredentials(filepath.Join(b.cfg.DataDir, rootFile))
	if err != nil {
		return fmt.Errorf("run broker: %w", err)
	}

	b.mu.Lock()
	if b.metricsURL.Host == "" {
		if b.metricsURL, err = freeLoopbackURL(); err != nil {
			b.mu.Unlock()
			return fmt.Errorf("run broker: metrics listener: %w", err)
		}
	}
	metricsURL := b.metricsURL
	b.mu.Unlock()
	clientTLS, err := clientServerTLS(pki)
	if err != nil {
		return fmt.Errorf("run broker: %w", err)
	}
	e, err := embed.StartEtcd(b.etcdConfig(pki, clientTLS, tokenKey, metricsURL))
	if err != nil {
		return fmt.Errorf("run broker: start etcd: %w", err)
	}
	// The server, not its auth store: it also resolves users who
	// authenticate with a client certificate.
	var users authInfoer = e.Server
	b.guard.users.Store(&users)
	var closeOnce sync.Once
	closeEtcd := func() {
		closeOnce.Do(func() {
			// etcd reports its listeners closing as errors; they are not.
			b.etcdStopping.Store(true)
			e.Close()
		})
	}
	defer closeEtcd()

	timer := time.NewTimer(b.cfg.StartTimeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		return fmt.Errorf("run broker: etcd: %w", err)
	case <-timer.C:
		return fmt.Errorf("run broker: etcd not ready after %v", b.cfg.StartTimeout)
	case <-ctx.Done():
		return nil
	}

	tlsCfg, err := pki.TLSConfig()
	if err != nil {
		return fmt.Errorf("run broker: %w", err)
	}
	admin, err := AdminClient(ctx, AdminConfig{
		Endpoints: b.cfg.ClientURLs,
		TLS:       tlsCfg,
		Username:  root.Username,
		Password:  root.Password,
		// No logger: the client warns on every retry, including the
		// expected ones around enabling auth; errors are returned anyway.
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("run broker: %w", err)
	}
	defer admin.Close()
	if err := EnableAuth(ctx, admin, root.Password); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("run broker: %w", err)
	}

	// Clusters registered by an older broker have roles for the key schema
	// of then; without this, a prefix added since (services.v2, the
	// agents' node status) would be refused to the cluster that owns it.
	changed, err := SyncClusterRoles(ctx, admin)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("run broker: %w", err)
	}
	if len(changed) > 0 {
		b.log.Info("cluster roles brought to the current key schema", "clusters", changed)
	}

	b.mu.Lock()
	b.admin, b.pki = admin, pki
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		b.admin = nil
		b.mu.Unlock()
	}()
	joinErr := make(chan error, 2)
	joinBound := make(chan struct{})
	jctx, stopJoin := context.WithCancel(ctx)
	joinDone := make(chan struct{})
	go func() {
		defer close(joinDone)
		if b.cfg.JoinURL == "" {
			close(joinBound)
			return
		}
		if err := b.serveJoin(jctx, admin, pki, joinBound); err != nil {
			joinErr <- err
		}
	}()
	defer func() { stopJoin(); <-joinDone }()
	if b.cfg.StatusAddr != "" {
		ln, ps, err := b.listenStatus(pki)
		if err != nil {
			return fmt.Errorf("run broker: %w", err)
		}
		b.mu.Lock()
		b.statusAddr = ln.Addr().String()
		b.mu.Unlock()
		statusDone := make(chan struct{})
		go func() {
			defer close(statusDone)
			if err := b.serveStatus(jctx, ln, ps, admin); err != nil {
				joinErr <- err
			}
		}()
		defer func() { stopJoin(); <-statusDone }()
	}
	// Ready once the join endpoint is bound and published, so that JoinURL
	// and tokens work as soon as Ready is closed.
	select {
	case <-joinBound:
	case err := <-joinErr:
		return fmt.Errorf("run broker: %w", err)
	case <-ctx.Done():
		return nil
	}
	// The removal watch starts at a revision read before Ready: a watch
	// opens lazily, and a grant deleted between Ready and the watch's
	// creation would otherwise never end the removed cluster's streams.
	from, err := b.kickUngranted(ctx, admin)
	if err != nil {
		return fmt.Errorf("run broker: %w", err)
	}
	go b.kickRemoved(ctx, admin, from)
	close(b.ready)
	b.log.Info("broker ready", "endpoints", b.cfg.ClientURLs, "metrics", metricsURL.String(), "join", b.JoinURL(), "dataDir", b.cfg.DataDir)

	select {
	case <-ctx.Done():
		b.log.Info("broker stopping")
		return nil
	case err := <-e.Err():
		return fmt.Errorf("run broker: etcd: %w", err)
	case err := <-joinErr:
		return fmt.Errorf("run broker: %w", err)
	}
}

func (b *Broker) etcdConfig(pki *PKI, clientTLS *tls.Config, tokenKey *TokenKey, metricsURL url.URL) *embed.Config {
	ec := embed.NewConfig()
	ec.Name = b.cfg.Name
	ec.Dir = filepath.Join(b.cfg.DataDir, etcdDir)
	ec.ListenClientUrls = b.clientURLs
	ec.AdvertiseClientUrls = b.clientURLs
	ec.ListenPeerUrls = []url.URL{b.peerURL}
	ec.AdvertisePeerUrls = []url.URL{b.peerURL}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	ec.ListenMetricsUrls = nil
	// /metrics, /health, /version and the JSON gateway answer without
	// credentials: serve them apart, on loopback unless configured.
	ec.ListenClientHttpUrls = []url.URL{metricsURL}
	ec.GRPCAdditionalServerOptions = append(b.guard.serverOptions(), grpc.Creds(credentials.NewTLS(clientTLS)))
	// Clients authenticate in one of two ways over TLS: with a password (the
	// root client, bundles from `braid broker add-cluster`) or with a client
	// certificate signed by the CA and not revoked in the CRL (clusters that
	// joined with a token), whose common name etcd takes as the user.
	// ClientCertAuth turns on that common-name authentication; the
	// handshake itself is clientTLS's (see clientServerTLS), which lets a
	// client present no certificate. Peers use certificates. Password
	// logins get JWTs signed with the broker's own key: unlike etcd's
	// simple tokens they survive a restart, and they name no secret.
	ec.AuthToken = tokenKey.authTokenOption()
	ec.ClientTLSInfo = transport.TLSInfo{
		CertFile:       pki.CertFile,
		KeyFile:        pki.KeyFile,
		TrustedCAFile:  pki.CAFile,
		ClientCertAuth: true,
		CRLFile:        pki.CRLFile,
	}
	// Passwords are random (rand.Text: 130 bits), so a slow hash adds no
	// strength; at etcd's default cost every Authenticate burns ~70 ms of
	// CPU, and on a loaded host clients whose short renewal deadlines
	// expire while re-authenticating never get a token.
	ec.BcryptCost = uint(bcrypt.MinCost)
	ec.PeerTLSInfo = transport.TLSInfo{
		CertFile:       pki.CertFile,
		KeyFile:        pki.KeyFile,
		TrustedCAFile:  pki.CAFile,
		ClientCertAuth: true,
	}
	if d := b.cfg.HeartbeatInterval; d > 0 {
		ec.TickMs = uint(d.Milliseconds())
	}
	if d := b.cfg.ElectionTimeout; d > 0 {
		ec.ElectionMs = uint(d.Milliseconds())
	}
	ec.AutoCompactionMode = embed.CompactorModePeriodic
	ec.AutoCompactionRetention = DefaultCompactionRetention.String()
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(etcd.NewZapLogger(b.log.With("component", "etcd").Handler(), &b.etcdStopping))
	return ec
}

func (b *Broker) running() (*clientv3.Client, *PKI, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.admin == nil {
		return nil, nil, ErrNotRunning
	}
	return b.admin, b.pki, nil
}

// AddCluster is AddCluster on this broker, with the credentials' Endpoints
// set to the broker's client URLs and CACertPEM to its CA. It returns
// ErrNotRunning unless the broker is ready. Safe for concurrent use.
func (b *Broker) AddCluster(ctx context.Context, g clustermesh.Grant) (join.Credentials, error) {
	admin, pki, err := b.running()
	if err != nil {
		return join.Credentials{}, fmt.Errorf("add cluster %s: %w", g.Name, err)
	}
	c, err := AddCluster(ctx, admin, g)
	if err != nil {
		return join.Credentials{}, err
	}
	c.Endpoints = b.Endpoints()
	c.CACertPEM = slices.Clone(pki.CACertPEM)
	return c, nil
}

// RemoveCluster is RemoveCluster on this broker. It returns ErrNotRunning
// unless the broker is ready. Safe for concurrent use.
func (b *Broker) RemoveCluster(ctx context.Context, name clustermesh.ClusterName) error {
	admin, _, err := b.running()
	if err != nil {
		return fmt.Errorf("remove cluster %s: %w", name, err)
	}
	if err := RemoveCluster(ctx, admin, name); err != nil {
		return err
	}
	b.guard.kick(ClusterUser(name))
	return nil
}

// kickRemoved ends the open streams of every cluster whose grant is
// deleted at or after revision from, whoever deleted it (RemoveCluster here
// or `braid broker remove-cluster` from another process): the cluster's
// user is gone by then, so its client cannot open them again. etcd ends the
// watch whenever the auth store moves past the revision of the token that
// opened it (every user or role change does) and a compaction can skip
// deletes, so each time the watch ends kickRemoved lists the grants, ends
// the streams of every cluster user without one, and watches again from
// there. It returns when ctx is done.
func (b *Broker) kickRemoved(ctx context.Context, admin *clientv3.Client, from int64) {
	for {
		err := b.followGrantDeletes(ctx, admin, from)
		for {
			if ctx.Err() != nil {
				return
			}
			b.log.Debug("grant watch ended; listing the grants again", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
			if from, err = b.kickUngranted(ctx, admin); err == nil {
				break
			}
		}
	}
}

// followGrantDeletes ends the streams of each cluster whose grant a watch
// from revision from sees deleted, until the watch ends.
func (b *Broker) followGrantDeletes(ctx context.Context, admin *clientv3.Client, from int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for resp := range admin.Watch(wctx, clustermesh.GrantsPrefix, clientv3.WithPrefix(), clientv3.WithFilterPut(), clientv3.WithRev(from)) {
		if err := resp.Err(); err != nil {
			return fmt.Errorf("watch grants: %w", err)
		}
		for _, ev := range resp.Events {
			name := clustermesh.ClusterName(strings.TrimPrefix(string(ev.Kv.Key), clustermesh.GrantsPrefix))
			if n := b.guard.kick(ClusterUser(name)); n > 0 {
				b.log.Info("cluster removed; ended its open streams", "cluster", name, "streams", n)
			}
		}
	}
	return fmt.Errorf("watch grants: %w", ctx.Err())
}

// kickUngranted ends the open streams of every cluster user that has no
// grant and returns the revision after the one its list of grants was read
// at, from which a watch misses no delete.
func (b *Broker) kickUngranted(ctx context.Context, admin *clientv3.Client) (int64, error) {
	resp, err := admin.Get(ctx, clustermesh.GrantsPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return 0, fmt.Errorf("list grants: %w", err)
	}
	granted := make(map[string]bool, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		granted[ClusterUser(clustermesh.ClusterName(strings.TrimPrefix(string(kv.Key), clustermesh.GrantsPrefix)))] = true
	}
	for _, user := range b.guard.streamUsers() {
		if granted[user] || !strings.HasPrefix(user, ClusterUser("")) {
			continue
		}
		if n := b.guard.kick(user); n > 0 {
			b.log.Info("cluster user has no grant; ended its open streams", "user", user, "streams", n)
		}
	}
	return resp.Header.Revision + 1, nil
}

// clientServerTLS is the TLS configuration of the broker's client URLs. A
// client may present a certificate or not: one that does must present a
// certificate the CA signed and the CRL does not list (etcd then takes the
// user from its common name); one that does not authenticates with a
// password. etcd's own configuration would require a certificate from
// every client once ClientCertAuth is on, which would lock out every
// password bundle.
func clientServerTLS(pki *PKI) (*tls.Config, error) {
	info := transport.TLSInfo{
		CertFile:      pki.CertFile,
		KeyFile:       pki.KeyFile,
		TrustedCAFile: pki.CAFile,
		CRLFile:       pki.CRLFile,
		Logger:        zap.NewNop(),
	}
	cfg, err := info.ServerConfig()
	if err != nil {
		return nil, fmt.Errorf("client TLS: %w", err)
	}
	cfg.ClientAuth = tls.VerifyClientCertIfGiven
	info.ConfigureCRLVerification(cfg)
	return cfg, nil
}
