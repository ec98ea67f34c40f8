package broker

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/internal/atomicfile"
	"github.com/braidmesh/braid/kvstore/etcd"
)

// DefaultDialTimeout bounds connecting and authenticating a client.
const DefaultDialTimeout = 5 * time.Second

// Paths inside a broker's data directory.
const (
	pkiDir       = "pki"
	rootFile     = "root.json"
	etcdDir      = "etcd"
	dataDirPerm  = 0o700
	rootFilePerm = 0o600
)

// AdminConfig says how to reach an etcd cluster as its root user.
type AdminConfig struct {
	Endpoints []string
	TLS       *tls.Config // nil means plain gRPC (only for an external etcd without TLS)
	Username  string      // zero means RootUser
	Password  string
	// DialTimeout zero means DefaultDialTimeout.
	DialTimeout time.Duration
	// Logger receives the etcd client's logs; nil discards them.
	Logger *slog.Logger
}

// AdminClient connects to etcd as described by cfg and checks that it
// answers within ctx. It works whether or not authentication is enabled yet,
// so it also serves to call EnableAuth on a fresh external cluster. The
// caller closes the client.
func AdminClient(ctx context.Context, cfg AdminConfig) (*clientv3.Client, error) {
	if cfg.Username == "" {
		cfg.Username = RootUser
	}
	c, err := newClient(ctx, cfg.Endpoints, cfg.TLS, cfg.Username, cfg.Password, cfg.DialTimeout, cfg.Logger)
	if err != nil {
		return nil, fmt.Errorf("admin client: %w", err)
	}
	return c, nil
}

// LocalAdminConfig returns the AdminConfig of the broker whose data
// directory is dataDir, listening on endpoints: it trusts the broker's CA and
// uses the root password stored there.
func LocalAdminConfig(dataDir string, endpoints []string) (AdminConfig, error) {
	caPEM, err := os.ReadFile(filepath.Join(dataDir, pkiDir, caCertFile))
	if err != nil {
		return AdminConfig{}, fmt.Errorf("local admin config: %w", err)
	}
	tlsCfg, err := join.ClientTLSConfig(caPEM)
	if err != nil {
		return AdminConfig{}, fmt.Errorf("local admin config: %w", err)
	}
	root, err := loadRootCredentials(filepath.Join(dataDir, rootFile))
	if err != nil {
		return AdminConfig{}, fmt.Errorf("local admin config: %w", err)
	}
	return AdminConfig{Endpoints: endpoints, TLS: tlsCfg, Username: root.Username, Password: root.Password}, nil
}

// newClient builds a client and waits, within ctx, until one endpoint has
// answered an AuthStatus request. With a username the client has already
// authenticated (or found auth disabled) by then.
func newClient(ctx context.Context, endpoints []string, tlsCfg *tls.Config, user, password string, dialTimeout time.Duration, log *slog.Logger) (*clientv3.Client, error) {
	if len(endpoints) == 0 {
		return nil, errors.New("no endpoints")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if dialTimeout == 0 {
		dialTimeout = DefaultDialTimeout
	}
	zl := zap.NewNop()
	if log != nil {
		zl = etcd.NewZapLogger(log.Handler(), nil)
	}
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		TLS:         tlsCfg,
		Username:    user,
		Password:    password,
		DialTimeout: dialTimeout,
		Logger:      zl,
		// The client outlives ctx, which only bounds this call; keep its
		// values, drop its cancellation.
		Context: context.WithoutCancel(ctx),
	})
	if err != nil {
		return nil, etcd.ExplainDial(ctx, err, endpoints, tlsCfg)
	}
	if _, err := c.AuthStatus(ctx); err != nil {
		c.Close()
		return nil, etcd.ExplainDial(ctx, err, endpoints, tlsCfg)
	}
	return c, nil
}

// rootCredentials is the content of <datadir>/root.json.
type rootCredentials struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

func loadRootCredentials(path string) (rootCredentials, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return rootCredentials{}, fmt.Errorf("load root credentials: %w", err)
	}
	var r rootCredentials
	if err := json.Unmarshal(b, &r); err != nil {
		return rootCredentials{}, fmt.Errorf("load root credentials %s: %w", path, err)
	}
	if r.Username == "" || r.Password == "" {
		return rootCredentials{}, fmt.Errorf("load root credentials %s: no username or password", path)
	}
	return r, nil
}

// loadOrCreateRootCredentials returns the root credentials at path, first
// writing new ones (mode 0600) if there are none. They are written before
// etcd learns them, so a crash in between never loses the password.
func loadOrCreateRootCredentials(path string) (rootCredentials, error) {
	r, err := loadRootCredentials(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return r, err
	}
	r = rootCredentials{Username: RootUser, Password: newPassword()}
	b, err := json.Marshal(r)
	if err != nil {
		return rootCredentials{}, fmt.Errorf("create root credentials: %w", err)
	}
	if err := atomicfile.WriteFile(path, append(b, '\n'), rootFilePerm); err != nil {
		return rootCredentials{}, fmt.Errorf("create root credentials: %w", err)
	}
	return r, nil
}

// ensureDataDir creates dir with mode 0700, or tightens an existing one
// that group or others may access to 0700, logging a warning: it holds the
// root password and the CA key. It fails if dir cannot be tightened.
func ensureDataDir(dir string, log *slog.Logger) error {
	if err := os.MkdirAll(dir, dataDirPerm); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("data directory %s is not a directory", dir)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		if err := os.Chmod(dir, dataDirPerm); err != nil {
			return fmt.Errorf("data directory %s has mode %04o, open to group or others, and holds the root password; tightening it failed (%w): run chmod 700 %s", dir, perm, err, dir)
		}
		log.Warn("data directory was open to group or others; set its mode to 0700", "dir", dir, "was", fmt.Sprintf("%04o", perm))
	}
	return nil
}
