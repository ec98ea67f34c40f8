package etcd

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"
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
type watchStreams struct {
	mu   sync.Mutex
	gen  uint64
	live map[uint64]int // watches by generation
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
	}
}

// retire moves on from generation gen, unless that happened already.
func (ws *watchStreams) retire(gen uint64) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.gen == gen {
		ws.gen++
	}
}

// active returns the generations that have watches.
func (ws *watchStreams) active() []uint64 {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	gens := make([]uint64, 0, len(ws.live))
	for g := range ws.live {
		gens = append(gens, g)
	}
	return gens
}

// streamContext is ctx with a leader required and tagged with generation
// gen, which selects the gRPC stream the etcd client puts a watch on.
func streamContext(ctx context.Context, gen uint64) context.Context {
	return metadata.AppendToOutgoingContext(clientv3.WithRequireLeader(ctx), streamMetadataKey, strconv.FormatUint(gen, 10))
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
