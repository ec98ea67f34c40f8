package broker

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/server/v3/auth"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// MaxLeaseTTL is the longest lease a cluster may be granted. Entries of a
// cluster that vanished without revoking its lease are gone within it.
const MaxLeaseTTL = clustermesh.MaxLeaseTTL

// guard is the broker's gRPC interceptor in front of etcd. It limits what
// cluster users may do beyond etcd's key permissions (lease TTLs; listing
// leases and the keys bound to them, which would show other clusters'
// leases) and tracks every cluster user's open streams, so a removed
// cluster's watches and lease keep-alives can be ended at once.
type guard struct {
	// users resolves a request's token; nil until etcd has started.
	users atomic.Pointer[authInfoer]

	mu      sync.Mutex
	streams map[string]map[*guardedStream]struct{} // by user
}

// authInfoer is the part of etcd's auth store the guard uses.
type authInfoer interface {
	AuthInfoFromCtx(ctx context.Context) (*auth.AuthInfo, error)
}

func newGuard() *guard {
	return &guard{streams: make(map[string]map[*guardedStream]struct{})}
}

// user returns the etcd user of a request: "" when auth is off, the token
// is missing or invalid (etcd then refuses the request itself).
func (g *guard) user(ctx context.Context) string {
	a := g.users.Load()
	if a == nil {
		return ""
	}
	info, err := (*a).AuthInfoFromCtx(ctx)
	if err != nil || info == nil {
		return ""
	}
	return info.Username
}

func (g *guard) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	switch r := req.(type) {
	case *pb.LeaseGrantRequest:
		if u := g.user(ctx); u != RootUser && time.Duration(r.TTL)*time.Second > MaxLeaseTTL {
			return nil, status.Errorf(codes.OutOfRange, "etcdserver: lease TTL %ds is longer than the broker's limit of %v", r.TTL, MaxLeaseTTL)
		}
	case *pb.LeaseLeasesRequest:
		if u := g.user(ctx); u != RootUser {
			return nil, status.Error(codes.PermissionDenied, "etcdserver: permission denied: only root may list leases")
		}
	case *pb.LeaseTimeToLiveRequest:
		if u := g.user(ctx); r.Keys && u != RootUser {
			return nil, status.Error(codes.PermissionDenied, "etcdserver: permission denied: only root may list the keys of a lease")
		}
	}
	return handler(ctx, req)
}

// guardedStream is a stream whose context the guard can cancel.
type guardedStream struct {
	grpc.ServerStream
	ctx    context.Context
	cancel context.CancelFunc
}

func (s *guardedStream) Context() context.Context { return s.ctx }

func (g *guard) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	u := g.user(ss.Context())
	if u == "" || u == RootUser {
		return handler(srv, ss)
	}
	ctx, cancel := context.WithCancel(ss.Context())
	gs := &guardedStream{ServerStream: ss, ctx: ctx, cancel: cancel}
	g.mu.Lock()
	if g.streams[u] == nil {
		g.streams[u] = make(map[*guardedStream]struct{})
	}
	g.streams[u][gs] = struct{}{}
	g.mu.Unlock()
	defer func() {
		cancel()
		g.mu.Lock()
		delete(g.streams[u], gs)
		if len(g.streams[u]) == 0 {
			delete(g.streams, u)
		}
		g.mu.Unlock()
	}()
	err := handler(srv, gs)
	if ctx.Err() != nil && ss.Context().Err() == nil {
		return status.Error(codes.Unauthenticated, fmt.Sprintf("etcdserver: user %s was removed from the mesh", u))
	}
	return err
}

// streamUsers returns the users with open streams.
func (g *guard) streamUsers() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	users := make([]string, 0, len(g.streams))
	for u := range g.streams {
		users = append(users, u)
	}
	return users
}

// kick ends every open stream of user and returns how many there were.
func (g *guard) kick(user string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	for s := range g.streams[user] {
		s.cancel()
	}
	return len(g.streams[user])
}

func (g *guard) serverOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(g.unary), grpc.ChainStreamInterceptor(g.stream)}
}
