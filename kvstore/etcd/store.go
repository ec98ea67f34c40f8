package etcd

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/braidmesh/braid/kvstore"
)

var _ kvstore.Store = (*Store)(nil)

// gRPC keepalive pings on the client's connection.
const (
	keepAliveTime = 10 * time.Second
	// DefaultKeepAliveTimeout is how long a ping may go unanswered before
	// the client closes the connection (Config.KeepAliveTimeout). It is
	// longer than the default lease TTL (15 s): a broker starved of CPU
	// answers pings late, and closing its connections then makes every
	// client reconnect and authenticate again (a bcrypt verification and
	// a raft entry each on the broker), which starves it further until
	// leases expire; with 5 s this is what stopped issue #15's 511-cluster
	// sim. The operator's health does not wait for it: a lease renewal
	// fails on its own deadline (see publish's keepAlive), and a stopped
	// broker resets its connections. The cost: a member that vanished
	// without a reset is left after 30 s instead of 15 s.
	DefaultKeepAliveTimeout = 20 * time.Second
)

// DefaultDialTimeout bounds New's connection check when Config.DialTimeout is
// zero.
const DefaultDialTimeout = 5 * time.Second

// Config says how to reach an etcd cluster.
type Config struct {
	// Endpoints are the client URLs of the cluster's members, such as
	// "https://10.0.0.1:2379".
	Endpoints []string
	// TLS is used for https endpoints; nil means plain connections.
	TLS *tls.Config
	// Username and Password authenticate to etcd; empty means no auth.
	Username, Password string
	// DialTimeout bounds New's connection and reachability check; zero means
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// KeepAliveTimeout is how long a gRPC keepalive ping may go unanswered
	// before the connection is closed; zero means DefaultKeepAliveTimeout.
	KeepAliveTimeout time.Duration
	// Logger receives the store's and the etcd client's logs; nil discards
	// them.
	Logger *slog.Logger
	// ProgressInterval is how often the store asks etcd to confirm its
	// watches are live, which each watch reports as kvstore.EventProgress;
	// zero asks never (etcd then sends them only at its server-side
	// interval, 10 minutes by default). With it, a watch that hears
	// nothing for 12 intervals reports EventError and is watched again.
	ProgressInterval time.Duration
}

// Store is a kvstore.Store over an etcd cluster. Create it with New or
// NewFromClient.
type Store struct {
	client     *clientv3.Client
	ownsClient bool
	// progressInterval is Config.ProgressInterval; zero for NewFromClient.
	progressInterval time.Duration
	log              *slog.Logger

	ctx    context.Context // canceled by Close; parent of every watch
	cancel context.CancelFunc

	// streams picks the gRPC stream each watch goes on.
	streams watchStreams

	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup // watch and lease keeper goroutines
	// keepers keep the leases KeepAlive was asked for, by lease.
	keepers map[clientv3.LeaseID]*keeper

	closeOnce sync.Once
	closeErr  error
}

// New connects to the cluster in cfg and checks that it answers within
// cfg.DialTimeout (an AuthStatus call, which needs no permission on any key;
// the credentials are checked while dialing). The store owns the client and
// closes it in Close. Errors wrap kvstore.ErrPermissionDenied when the
// credentials are refused.
func New(ctx context.Context, cfg Config) (*Store, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("connect to etcd: no endpoints")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	timeout := cfg.DialTimeout
	if timeout <= 0 {
		timeout = DefaultDialTimeout
	}
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		TLS:         cfg.TLS,
		Username:    cfg.Username,
		Password:    cfg.Password,
		DialTimeout: timeout,
		// Keepalives notice a dead member behind a silent network (in
		// keepAliveTime + keepAliveTimeout) and let the client move to
		// another endpoint.
		DialKeepAliveTime:    keepAliveTime,
		DialKeepAliveTimeout: cmp.Or(cfg.KeepAliveTimeout, DefaultKeepAliveTimeout),
		Logger:               NewZapLogger(log.With("component", "etcd-client").Handler(), nil),
		DialOptions: []grpc.DialOption{
			// gRPC's default reconnect backoff starts at 1 s; reconnect
			// faster after a short outage, but not more often than every 5 s
			// while it lasts.
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff: backoff.Config{
					BaseDelay:  100 * time.Millisecond,
					Multiplier: 1.6,
					Jitter:     0.2,
					MaxDelay:   5 * time.Second,
				},
				MinConnectTimeout: timeout,
			}),
		},
	})
	if err != nil {
		return nil, fmt.Errorf("connect to etcd %v: %w", cfg.Endpoints, ExplainDial(ctx, translateErr("dial", err), cfg.Endpoints, cfg.TLS))
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// AuthStatus needs no permission on any key, so a user limited to a
	// prefix can connect; the client authenticated while dialing.
	_, err = client.AuthStatus(cctx)
	if err != nil {
		client.Close()
		return nil, fmt.Errorf("connect to etcd %v: %w", cfg.Endpoints, ExplainDial(ctx, translateErr("read", err), cfg.Endpoints, cfg.TLS))
	}
	s := NewFromClient(client)
	s.ownsClient = true
	s.log = log
	if cfg.ProgressInterval > 0 {
		s.progressInterval = cfg.ProgressInterval
		s.wg.Add(1)
		go s.requestProgress(cfg.ProgressInterval)
	}
	return s, nil
}

// NewFromClient returns a store over an existing client. Close ends the
// store's watches but does not close client, which stays the caller's.
func NewFromClient(client *clientv3.Client) *Store {
	ctx, cancel := context.WithCancel(context.Background())
	return &Store{
		client: client,
		log:    slog.New(slog.DiscardHandler),
		ctx:    ctx,
		cancel: cancel,
	}
}

// Client returns the underlying etcd client, for administration (users,
// roles, compaction) that the Store interface does not cover. Callers must
// not close it.
func (s *Store) Client() *clientv3.Client { return s.client }

func (s *Store) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// check returns ErrClosed after Close, else ctx's error if it is done.
func (s *Store) check(ctx context.Context) error {
	if s.isClosed() {
		return kvstore.ErrClosed
	}
	return ctx.Err()
}

// Get implements kvstore.Store.
func (s *Store) Get(ctx context.Context, key string) (kvstore.KeyValue, error) {
	op := "get " + key
	if err := s.check(ctx); err != nil {
		return kvstore.KeyValue{}, fmt.Errorf("%s: %w", op, err)
	}
	resp, err := s.client.Get(ctx, key)
	if err != nil {
		return kvstore.KeyValue{}, s.translate(op, err)
	}
	if len(resp.Kvs) == 0 {
		return kvstore.KeyValue{}, fmt.Errorf("%s: %w", op, kvstore.ErrNotFound)
	}
	return fromKV(resp.Kvs[0]), nil
}

// listPageSize is the number of keys read per range request. Big pages keep
// large lists fast: etcd counts the rest of the range on every page.
const listPageSize = 10_000

// List implements kvstore.Store. A prefix of more than listPageSize keys is
// read in pages, all at the revision of the first.
func (s *Store) List(ctx context.Context, prefix string) ([]kvstore.KeyValue, int64, error) {
	op := "list " + prefix
	if err := s.check(ctx); err != nil {
		return nil, 0, fmt.Errorf("%s: %w", op, err)
	}
	var out []kvstore.KeyValue
	rev, err := s.list(ctx, prefix, func(kv *mvccpb.KeyValue) bool {
		out = append(out, fromKV(kv))
		return true
	}, func() bool {
		out = out[:0]
		return true
	})
	if err != nil {
		return nil, 0, s.translate(op, err)
	}
	return out, rev, nil
}

// list calls fn for every key under prefix in key order, reading pages at one
// revision, which it returns. If a compaction between pages forces it to start
// over at a new revision, it calls reset first. It stops early, returning
// ctx's error, if fn or reset returns false.
func (s *Store) list(ctx context.Context, prefix string, fn func(*mvccpb.KeyValue) bool, reset func() bool) (int64, error) {
	end := clientv3.GetPrefixRangeEnd(prefix)
	for {
		var rev int64
		from := prefix
		for {
			opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(listPageSize)}
			if rev != 0 {
				opts = append(opts, clientv3.WithRev(rev))
			}
			resp, err := s.client.Get(ctx, from, opts...)
			if errors.Is(err, rpctypes.ErrCompacted) && rev != 0 {
				break // start over at a new revision
			}
			if err != nil {
				return 0, err
			}
			if rev == 0 {
				rev = resp.Header.Revision
			}
			for _, kv := range resp.Kvs {
				if !fn(kv) {
					return 0, ctx.Err()
				}
			}
			if !resp.More || len(resp.Kvs) == 0 {
				return rev, nil
			}
			from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
		if !reset() {
			return 0, ctx.Err()
		}
	}
}

// Put implements kvstore.Store.
func (s *Store) Put(ctx context.Context, key string, value []byte, lease kvstore.LeaseID) error {
	op := "put " + key
	if err := s.check(ctx); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	_, err := s.client.Put(ctx, key, string(value), leaseOpts(lease)...)
	return s.translate(op, err)
}

// CreateIfAbsent implements kvstore.Store with a transaction comparing the
// key's create revision with zero.
func (s *Store) CreateIfAbsent(ctx context.Context, key string, value []byte, lease kvstore.LeaseID) (bool, error) {
	op := "create " + key
	if err := s.check(ctx); err != nil {
		return false, fmt.Errorf("%s: %w", op, err)
	}
	resp, err := s.client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(value), leaseOpts(lease)...)).
		Commit()
	if err != nil {
		return false, s.translate(op, err)
	}
	return resp.Succeeded, nil
}

// Delete implements kvstore.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	op := "delete " + key
	if err := s.check(ctx); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	_, err := s.client.Delete(ctx, key)
	return s.translate(op, err)
}

// Close implements kvstore.Store: it ends every watch, waits for their
// goroutines and, if New created the client, closes it.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.cancel()
		s.wg.Wait()
		if s.ownsClient {
			if err := s.client.Close(); err != nil && !errors.Is(err, context.Canceled) {
				s.closeErr = fmt.Errorf("close etcd client: %w", err)
			}
		}
	})
	return s.closeErr
}

func leaseOpts(id kvstore.LeaseID) []clientv3.OpOption {
	if id == 0 {
		return nil
	}
	return []clientv3.OpOption{clientv3.WithLease(clientv3.LeaseID(id))}
}

func fromKV(kv *mvccpb.KeyValue) kvstore.KeyValue {
	return kvstore.KeyValue{
		Key:            string(kv.Key),
		Value:          kv.Value,
		CreateRevision: kv.CreateRevision,
		ModRevision:    kv.ModRevision,
		Lease:          kvstore.LeaseID(kv.Lease),
	}
}
