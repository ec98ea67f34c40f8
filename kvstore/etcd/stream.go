package etcd

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// streamMetadataKey tags a watch's context with its stream generation. The
// etcd client shares one gRPC watch stream among watches whose contexts
// carry the same outgoing metadata, so a new generation opens a new stream.
const streamMetadataKey = "braid-watch-stream"

// watchStreams hands out watch stream generations.
//
// etcd checks a new watch against the token its stream was opened with, not
// the client's current one. A JWT expires, and any change to users or roles
// makes every JWT's auth revision old: a new watch on a stream opened before
// then is refused (rpctypes.ErrInvalidAuthToken, ErrAuthOldRevision) though
// the client's unary calls refresh their token by themselves. Such a refusal
// retires the stream's generation: later watches open a new stream, for
// which the client authenticates again. Watches already on the old stream
// keep it, and it closes with the last of them.
//
// A stream whose connection was lost is not reopened by the etcd client
// either (see refuseReopen): its generation is retired and marked lost, and
// its watches resume on a new stream from what they delivered.
type watchStreams struct {
	mu   sync.Mutex
	gen  uint64
	live map[uint64]int // watches by generation
	// lost holds the generations whose stream was refused reopening, while
	// they have watches.
	lost map[uint64]bool
}

// acquire returns the current generation and counts a watch on it; the
// watch calls release with it when it ends.
func (ws *watchStreams) acquire() uint64 {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.live == nil {
		ws.live = make(map[uint64]int)
	}
	ws.live[ws.gen]++
	return ws.gen
}

func (ws *watchStreams) release(gen uint64) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.live[gen]--; ws.live[gen] <= 0 {
		delete(ws.live, gen)
		delete(ws.lost, gen)
	}
}

// lose retires generation gen and marks it lost.
func (ws *watchStreams) lose(gen uint64) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	ws.retireLocked(gen)
	if ws.live[gen] == 0 {
		return // no watch to tell; release forgets lost generations
	}
	if ws.lost == nil {
		ws.lost = make(map[uint64]bool)
	}
	ws.lost[gen] = true
}

// wasLost says whether generation gen's stream was refused reopening.
func (ws *watchStreams) wasLost(gen uint64) bool {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return ws.lost[gen]
}

// retire moves on from generation gen, unless that happened already.
func (ws *watchStreams) retire(gen uint64) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	ws.retireLocked(gen)
}

func (ws *watchStreams) retireLocked(gen uint64) {
	if ws.gen == gen {
		ws.gen++
	}
}

// active returns the generations that have watches and whose stream was not
// lost: a lost one's watches are ending.
func (ws *watchStreams) active() []uint64 {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	gens := make([]uint64, 0, len(ws.live))
	for g := range ws.live {
		if !ws.lost[g] {
			gens = append(gens, g)
		}
	}
	return gens
}

// streamContext is ctx with a leader required and tagged with generation
// gen, which selects the gRPC stream the etcd client puts a watch on.
func streamContext(ctx context.Context, gen uint64) context.Context {
	return metadata.AppendToOutgoingContext(clientv3.WithRequireLeader(ctx), streamMetadataKey, strconv.FormatUint(gen, 10))
}

// streamOpening is carried in the context of every watch and progress
// request (see withStreamOpening). The etcd client opens a gRPC watch
// stream, and reopens it after a lost connection, with the context of the
// call that made it need the stream, so refuseReopen sees the same
// streamOpening for a stream and its reopenings, and a new one for a new
// stream of the same generation.
type streamOpening struct {
	gen    uint64
	opened atomic.Bool
}

type streamOpeningKey struct{}

func withStreamOpening(ctx context.Context, gen uint64) context.Context {
	return context.WithValue(ctx, streamOpeningKey{}, &streamOpening{gen: gen})
}

// errStreamLost is refuseReopen's answer to the etcd client.
var errStreamLost = status.Error(codes.Aborted, "braid: watch stream lost its connection; its watches resume from what they delivered")

// watchMethod is the gRPC method of etcd's watch streams.
const watchMethod = "/etcdserverpb.Watch/Watch"

// refuseReopen is a gRPC stream interceptor that lets the etcd client open
// each of a Store's watch streams once. After a lost connection the client
// would reopen the stream and resume each watch after the last response it
// received, progress notifications included, and etcd 3.7 was seen to send
// a progress notification before events at lower revisions (see follow):
// a connection lost between the two would lose those events inside the
// client. Refused, the client ends the stream's watches instead; refuseReopen
// marks the generation lost, and each watch resumes on a new stream from
// the last revision it delivered, which follow never moves on a progress
// notification.
func (ws *watchStreams) refuseReopen(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	op, _ := ctx.Value(streamOpeningKey{}).(*streamOpening)
	if op == nil || method != watchMethod {
		return streamer(ctx, desc, cc, method, opts...)
	}
	if op.opened.Load() {
		ws.lose(op.gen)
		return nil, errStreamLost
	}
	cs, err := streamer(ctx, desc, cc, method, opts...)
	if err == nil {
		op.opened.Store(true)
	}
	return cs, err
}

// staleToken says err is etcd refusing a watch for its stream's token alone:
// expired, or issued before the latest change to users and roles.
func staleToken(err error) bool {
	if errors.Is(err, rpctypes.ErrInvalidAuthToken) || errors.Is(err, rpctypes.ErrAuthOldRevision) {
		return true
	}
	// A refused watch reaches the client as a cancel reason: the text of
	// etcd's whole gRPC error, which the client does not map back.
	desc := rpctypes.ErrorDesc(err)
	return strings.Contains(desc, rpctypes.ErrInvalidAuthToken.Error()) || strings.Contains(desc, rpctypes.ErrAuthOldRevision.Error())
}
