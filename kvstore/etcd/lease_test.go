package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/kvstore/etcd"
	"github.com/braidmesh/braid/kvstore/etcd/etcdtest"
)

// rpcCounter counts, through gRPC interceptors on an etcd client, the lease
// keep-alive streams it opens, the renewals sent on them, and its
// authentications (one per stream it opens, with a password).
type rpcCounter struct {
	leaseStreams, renewals, authentications atomic.Int32
}

func (c *rpcCounter) dialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			if method == "/etcdserverpb.Auth/Authenticate" {
				c.authentications.Add(1)
			}
			return invoker(ctx, method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			cs, err := streamer(ctx, desc, cc, method, opts...)
			if err != nil || method != "/etcdserverpb.Lease/LeaseKeepAlive" {
				return cs, err
			}
			c.leaseStreams.Add(1)
			return &countingStream{ClientStream: cs, sent: &c.renewals}, nil
		}),
	}
}

type countingStream struct {
	grpc.ClientStream
	sent *atomic.Int32
}

func (s *countingStream) SendMsg(m any) error {
	s.sent.Add(1)
	return s.ClientStream.SendMsg(m)
}

// TestRenewalsShareOneStream checks that renewing a lease many times opens
// one lease stream and authenticates at most once for it: the etcd client
// authenticates again for every stream it opens, and a renewal on a
// stream of its own (KeepAliveOnce) cost the broker a password check each
// time. A lease revoked by someone else is then reported as
// kvstore.ErrLeaseNotFound.
func TestRenewalsShareOneStream(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	enableAuth(t, ctx, newStore(t, srv.Endpoints()).Client(), "c1", "pw1")

	var count rpcCounter
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: srv.Endpoints(), Username: "c1", Password: "pw1",
		DialTimeout: 5 * time.Second, DialOptions: count.dialOptions(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	s := etcd.NewFromClient(cli)
	defer s.Close()

	const ttl = 3 * time.Second
	id, err := s.GrantLease(ctx, ttl)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, "c1/k", []byte("v"), id); err != nil {
		t.Fatal(err)
	}
	auths := count.authentications.Load()
	// Ask for a renewal every eighth of the TTL for three TTLs, as a slow
	// caller would and faster than any does.
	calls := 0
	tick := time.NewTicker(ttl / 8)
	defer tick.Stop()
	for end := time.Now().Add(3 * ttl); time.Now().Before(end); <-tick.C {
		if err := s.KeepAlive(ctx, id); err != nil {
			t.Fatalf("KeepAlive call %d: %v", calls+1, err)
		}
		calls++
	}
	if _, err := s.Get(ctx, "c1/k"); err != nil {
		t.Fatalf("key on the lease after three TTLs of renewals: %v", err)
	}
	streams, renewals := count.leaseStreams.Load(), count.renewals.Load()
	t.Logf("%d KeepAlive calls: %d lease streams, %d renewals sent, %d authentications", calls, streams, renewals, count.authentications.Load()-auths)
	if streams != 1 {
		t.Errorf("%d KeepAlive calls opened %d lease streams, want 1", calls, streams)
	}
	if renewals < 3 {
		t.Errorf("%d renewals sent in three TTLs, want at least 3", renewals)
	}
	if n := count.authentications.Load() - auths; n > 1 {
		t.Errorf("%d authentications while renewing, want at most 1 (the lease stream's)", n)
	}

	other, err := etcd.New(ctx, etcd.Config{Endpoints: srv.Endpoints(), Username: "c1", Password: "pw1"})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := other.RevokeLease(ctx, id); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, func() error {
		if err := s.KeepAlive(ctx, id); !errors.Is(err, kvstore.ErrLeaseNotFound) {
			return fmt.Errorf("KeepAlive of a lease revoked elsewhere: %v, want ErrLeaseNotFound", err)
		}
		return nil
	})
	if streams := count.leaseStreams.Load(); streams != 1 {
		t.Errorf("%d lease streams after the revocation, want 1", streams)
	}
}
