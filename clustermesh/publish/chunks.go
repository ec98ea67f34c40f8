package publish

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/kvstore"
)

// ServiceLayout says which key layouts a Publisher writes services in.
type ServiceLayout string

// Service layouts. A mesh migrates from LayoutSingle (what publishers
// before the chunked layout write) through LayoutBoth (the default: old and
// new consumers both read it) to LayoutChunked, once every consumer reads
// chunks.
const (
	// LayoutSingle writes each service as one value (KindServices).
	LayoutSingle ServiceLayout = "single"
	// LayoutBoth writes both layouts. A service with more backends than
	// LegacyMaxBackends is written chunked only: consumers of the single
	// layout reject it anyway.
	LayoutBoth ServiceLayout = "both"
	// LayoutChunked writes a header and chunks of at most
	// clustermesh.MaxChunkBackends backends (KindServicesV2), and removes
	// the single-value keys and marker.
	LayoutChunked ServiceLayout = "chunked"
)

// ParseServiceLayout accepts "single", "both" and "chunked"; "" is
// LayoutBoth.
func ParseServiceLayout(s string) (ServiceLayout, error) {
	switch ServiceLayout(s) {
	case "":
		return LayoutBoth, nil
	case LayoutSingle, LayoutBoth, LayoutChunked:
		return ServiceLayout(s), nil
	}
	return "", fmt.Errorf("service layout %q: must be one of single, both, chunked", s)
}

// LegacyMaxBackends is the largest service consumers from before the
// chunked layout accept (their MaxBackendsPerService).
const LegacyMaxBackends = 4096

func (l ServiceLayout) single() bool  { return l == LayoutSingle || l == LayoutBoth }
func (l ServiceLayout) chunked() bool { return l == LayoutBoth || l == LayoutChunked }

// chunker assigns a service's backends to chunks, stickily: a backend stays
// in its chunk while it exists, so a one-backend change rewrites one chunk.
// New backends fill the chunks with room, oldest first, then new chunks.
type chunker struct {
	of   map[netip.Addr]int // backend -> chunk number
	next int                // number of the next new chunk
	// enc holds each chunk's last encoding and the backends it encodes
	// (a private copy, sorted by IP): a change re-encodes only the chunks
	// it touches. An entry is updated in place, so last may point at it.
	enc map[int]*encodedChunk
	// last describes the backends of the last call by their position in
	// it: their IPs, and where each one is held in enc. A call with the
	// same IPs in the same order (a readiness or port change: the common
	// case) finds what changed by position, without a map lookup or a
	// sort over the whole service.
	last  []netip.Addr
	at    []chunkSlot
	order []int // chunk numbers of the last call, in order
}

type encodedChunk struct {
	backends []clustermesh.Backend
	val      []byte
}

// chunkSlot is where a backend is held: chunk c (number n), position i.
type chunkSlot struct {
	c *encodedChunk
	n int
	i int
}

// encodedRef is one chunk of a service as encodeChunks returns it.
type encodedRef struct {
	n   int
	val []byte
}

// encodeChunks returns the chunks of a service with these backends, in
// order, each encoded, encoding again only the chunks whose backends
// changed since the last call. backends is not modified.
func (ch *chunker) encodeChunks(backends []clustermesh.Backend) ([]encodedRef, error) {
	if ch.sameIPs(backends) {
		return ch.encodeChanged(backends)
	}
	byChunk, order := ch.assign(backends)
	ch.forget(order)
	refs := make([]encodedRef, 0, len(order))
	for _, n := range order {
		val, err := ch.encode(n, byChunk[n])
		if err != nil {
			return nil, err
		}
		refs = append(refs, encodedRef{n: n, val: val})
	}
	ch.index(backends, order)
	return refs, nil
}

// sameIPs reports whether backends has the IPs of the last call in the
// same order.
func (ch *chunker) sameIPs(backends []clustermesh.Backend) bool {
	if ch.at == nil || len(backends) != len(ch.last) {
		return false
	}
	for i := range backends {
		if backends[i].IP != ch.last[i] {
			return false
		}
	}
	return true
}

// encodeChanged is encodeChunks for backends with the IPs of the last
// call: each chunk keeps its backends, and a chunk is encoded again when
// one of them changed.
func (ch *chunker) encodeChanged(backends []clustermesh.Backend) ([]encodedRef, error) {
	var changed map[int][]clustermesh.Backend // by chunk number, copy-on-write
	for i := range backends {
		at := ch.at[i]
		if sameBackend(at.c.backends[at.i], backends[i]) {
			continue
		}
		if changed == nil {
			changed = map[int][]clustermesh.Backend{}
		}
		bs, ok := changed[at.n]
		if !ok {
			bs = slices.Clone(at.c.backends)
			changed[at.n] = bs
		}
		b := backends[i]
		b.Ports = slices.Clone(b.Ports)
		bs[at.i] = b
	}
	for n, bs := range changed {
		val, err := clustermesh.EncodeChunk(&clustermesh.EndpointChunk{Chunk: chunkName(n), Backends: bs})
		if err != nil {
			return nil, err
		}
		c := ch.enc[n]
		c.backends, c.val = bs, val
	}
	refs := make([]encodedRef, 0, len(ch.order))
	for _, n := range ch.order {
		refs = append(refs, encodedRef{n: n, val: ch.enc[n].val})
	}
	return refs, nil
}

// index records where each of backends is held, for the next call.
func (ch *chunker) index(backends []clustermesh.Backend, order []int) {
	slot := make(map[netip.Addr]chunkSlot, len(backends))
	for _, n := range order {
		c := ch.enc[n]
		for i, b := range c.backends {
			slot[b.IP] = chunkSlot{c: c, n: n, i: i}
		}
	}
	ch.last = make([]netip.Addr, len(backends))
	ch.at = make([]chunkSlot, len(backends))
	ch.order = order
	for i := range backends {
		s, ok := slot[backends[i].IP]
		if !ok || s.c.backends[s.i].IP != backends[i].IP {
			// Two backends with one IP: leave the fast path off.
			ch.last, ch.at, ch.order = nil, nil, nil
			return
		}
		ch.last[i], ch.at[i] = backends[i].IP, s
	}
}

// encode returns chunk n (backends sorted by IP) encoded, reusing its last
// encoding when its backends are the same.
func (ch *chunker) encode(n int, backends []clustermesh.Backend) ([]byte, error) {
	prev := ch.enc[n]
	if prev != nil && slices.EqualFunc(prev.backends, backends, sameBackend) {
		return prev.val, nil
	}
	val, err := clustermesh.EncodeChunk(&clustermesh.EndpointChunk{Chunk: chunkName(n), Backends: backends})
	if err != nil {
		return nil, err
	}
	kept := make([]clustermesh.Backend, len(backends))
	for i, b := range backends {
		b.Ports = slices.Clone(b.Ports)
		kept[i] = b
	}
	if prev == nil {
		if ch.enc == nil {
			ch.enc = map[int]*encodedChunk{}
		}
		prev = &encodedChunk{}
		ch.enc[n] = prev
	}
	prev.backends, prev.val = kept, val
	return val, nil
}

// forget drops the cached encodings of chunks not in order.
func (ch *chunker) forget(order []int) {
	if len(ch.enc) == 0 {
		return
	}
	keep := make(map[int]bool, len(order))
	for _, n := range order {
		keep[n] = true
	}
	for n := range ch.enc {
		if !keep[n] {
			delete(ch.enc, n)
		}
	}
}

func sameBackend(a, b clustermesh.Backend) bool {
	return a.IP == b.IP && a.Node == b.Node && a.Zone == b.Zone && a.Hostname == b.Hostname && a.Ready == b.Ready &&
		a.Serving == b.Serving && a.Terminating == b.Terminating && slices.Equal(a.Ports, b.Ports)
}

// assign returns the backends by chunk number, each chunk sorted by IP,
// and the chunk numbers in order. backends is not modified.
func (c *chunker) assign(backends []clustermesh.Backend) (map[int][]clustermesh.Backend, []int) {
	// Count first, so each chunk is allocated once: a one-backend change
	// in a large service should cost little more than that chunk.
	counts := make(map[int]int, len(c.enc)+1)
	nfresh := 0
	for i := range backends {
		if n, ok := c.of[backends[i].IP]; ok {
			counts[n]++
		} else {
			nfresh++
		}
	}
	// Many sparse chunks (after a large scale-down) cost a value each:
	// repack when there are more than twice as many as needed.
	need := (len(backends) + clustermesh.MaxChunkBackends - 1) / clustermesh.MaxChunkBackends
	repack := len(counts) > 2*need+1
	if repack {
		// The repacked chunks take new names (c.next goes on): consumers
		// switch from the old chunks to the new ones with the header, and
		// never see a backend in two chunks or in none.
		clear(counts)
		nfresh = len(backends)
	}
	byChunk := make(map[int][]clustermesh.Backend, len(counts)+nfresh/clustermesh.MaxChunkBackends+1)
	for n, k := range counts {
		byChunk[n] = make([]clustermesh.Backend, 0, min(k+nfresh, clustermesh.MaxChunkBackends))
	}
	fresh := make([]clustermesh.Backend, 0, nfresh)
	for _, b := range backends {
		if n, ok := c.of[b.IP]; ok && !repack {
			byChunk[n] = append(byChunk[n], b)
		} else {
			fresh = append(fresh, b)
		}
	}
	order := make([]int, 0, len(byChunk)+1)
	for n := range byChunk {
		order = append(order, n)
	}
	slices.Sort(order)
	for _, n := range order {
		for len(fresh) > 0 && len(byChunk[n]) < clustermesh.MaxChunkBackends {
			byChunk[n] = append(byChunk[n], fresh[0])
			fresh = fresh[1:]
		}
	}
	for len(fresh) > 0 {
		k := min(len(fresh), clustermesh.MaxChunkBackends)
		byChunk[c.next] = fresh[:k:k]
		order = append(order, c.next)
		c.next++
		fresh = fresh[k:]
	}
	for _, bs := range byChunk {
		slices.SortFunc(bs, func(a, b clustermesh.Backend) int { return a.IP.Compare(b.IP) })
	}
	// The assignment of IPs to chunks changed only if backends came or
	// went (or were repacked).
	if repack || nfresh > 0 || len(c.of) != len(backends) {
		c.of = make(map[netip.Addr]int, len(backends))
		for n, bs := range byChunk {
			for _, b := range bs {
				c.of[b.IP] = n
			}
		}
	}
	return byChunk, order
}

func chunkName(n int) string { return "c" + strconv.Itoa(n) }

// chunkNumber parses a name chunkName made.
func chunkNumber(name string) (int, bool) {
	digits, ok := strings.CutPrefix(name, "c")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(digits)
	return n, err == nil && n >= 0 && chunkName(n) == name
}

// adoptChunksLocked makes each desired service's chunk assignment start
// from the chunks a previous incarnation of this publisher left in the
// store (owned, listed at session start), once per Publisher: a fresh
// assignment would move backends between chunks that both stay, and a move
// is two writes, between which consumers would see the backend in two
// chunks and reject the service. p.mu must be held.
func (p *Publisher) adoptChunksLocked(owned []kvstore.KeyValue) {
	if p.chunksAdopted || !p.cfg.ServiceLayout.chunked() {
		return
	}
	p.chunksAdopted = true
	of := map[string]map[netip.Addr]int{} // service -> backend -> chunk number
	next := map[string]int{}
	anyIP := func(netip.Addr) bool { return true } // our own entries: only the IPs matter
	for _, kv := range owned {
		pk, err := clustermesh.ParseKey(kv.Key)
		if err != nil || pk.Kind != clustermesh.KindServicesV2 {
			continue
		}
		name, chunk, ok := clustermesh.SplitServicesV2Name(pk.Name)
		n, numbered := chunkNumber(chunk)
		if !ok || !numbered || p.chunkers[name] == nil {
			continue // a header, or a service no longer desired (its keys go)
		}
		c, err := clustermesh.DecodeEndpointChunk(&p.cfg.Cluster, anyIP, kv.Key, kv.Value)
		if err != nil {
			continue // rewritten anyway
		}
		if of[name] == nil {
			of[name] = make(map[netip.Addr]int)
		}
		for _, b := range c.Backends {
			of[name][b.IP] = n
		}
		next[name] = max(next[name], n+1)
	}
	for name, assigned := range of {
		svc, err := p.desiredServiceLocked(name)
		if err != nil {
			p.log.Warn("keeping a new chunk assignment", "service", name, "err", err)
			continue
		}
		p.chunkers[name] = &chunker{of: assigned, next: next[name]}
		enc, err := p.encodeServiceLocked(&svc)
		if err != nil {
			p.log.Warn("keeping a new chunk assignment", "service", name, "err", err)
			continue
		}
		p.setServiceLocked(name, enc)
	}
}

// desiredServiceLocked decodes service name back from its desired chunked
// layout. p.mu must be held.
func (p *Publisher) desiredServiceLocked(name string) (clustermesh.Service, error) {
	var header *clustermesh.ServiceHeader
	chunks := map[string]*clustermesh.EndpointChunk{}
	anyIP := func(netip.Addr) bool { return true }
	for _, key := range p.byService[name] {
		if p.kindOf[key] != clustermesh.KindServicesV2 {
			continue
		}
		pk, err := clustermesh.ParseKey(key)
		if err != nil {
			return clustermesh.Service{}, err
		}
		if _, chunk, _ := clustermesh.SplitServicesV2Name(pk.Name); chunk != "" {
			c, err := clustermesh.DecodeEndpointChunk(&p.cfg.Cluster, anyIP, key, p.desired[key])
			if err != nil {
				return clustermesh.Service{}, err
			}
			chunks[chunk] = &c
			continue
		}
		h, err := clustermesh.DecodeServiceHeader(&p.cfg.Cluster, key, p.desired[key])
		if err != nil {
			return clustermesh.Service{}, err
		}
		header = &h
	}
	if header == nil {
		return clustermesh.Service{}, fmt.Errorf("service %s has no desired header", name)
	}
	return clustermesh.AssembleService(header, func(chunk string) (*clustermesh.EndpointChunk, bool) {
		c, ok := chunks[chunk]
		return c, ok
	})
}

// encodedService is one service's keys and values in the layouts written.
type encodedService struct {
	vals  map[string][]byte
	kinds map[string]clustermesh.Kind
}

// encodeService encodes svc in the configured layouts; p.mu must be held
// (the chunker is updated).
func (p *Publisher) encodeServiceLocked(svc *clustermesh.Service) (encodedService, error) {
	out := encodedService{vals: map[string][]byte{}, kinds: map[string]clustermesh.Kind{}}
	add := func(kind clustermesh.Kind, rec Record, val []byte) {
		out.vals[rec.Key()] = val
		out.kinds[rec.Key()] = kind
	}
	layout := p.cfg.ServiceLayout
	if layout.single() && (layout == LayoutSingle || len(svc.Backends) <= LegacyMaxBackends) {
		key, val, err := p.encode(clustermesh.KindServices, svc)
		if err != nil {
			return out, err
		}
		out.vals[key], out.kinds[key] = val, clustermesh.KindServices
	}
	if !layout.chunked() {
		return out, nil
	}
	name := svc.NamespacedName()
	ch := p.chunkers[name]
	if ch == nil {
		ch = &chunker{}
		p.chunkers[name] = ch
	}
	refs, err := ch.encodeChunks(svc.Backends)
	if err != nil {
		return out, fmt.Errorf("publish service %s: %w", name, err)
	}
	h := clustermesh.ServiceHeader{Service: *svc}
	h.Backends = nil
	h.Chunks = make([]string, 0, len(refs))
	for _, r := range refs {
		c := clustermesh.EndpointChunk{Cluster: svc.Cluster, Namespace: svc.Namespace, Name: svc.Name, Chunk: chunkName(r.n)}
		add(clustermesh.KindServicesV2, &c, r.val)
		h.Chunks = append(h.Chunks, c.Chunk)
	}
	key, val, err := p.encode(clustermesh.KindServicesV2, &h)
	if err != nil {
		return out, err
	}
	out.vals[key], out.kinds[key] = val, clustermesh.KindServicesV2
	return out, nil
}

// opPhase orders a pass's writes so a consumer never sees a header naming
// a chunk not written yet: chunk puts first, then every other put, then
// deletes (a chunk is deleted after the header stopped naming it).
func opPhase(o op) int {
	switch {
	case o.delete:
		return 2
	case o.kind == clustermesh.KindServicesV2 && isChunkKey(o.key):
		return 0
	}
	return 1
}

func isChunkKey(key string) bool {
	pk, err := clustermesh.ParseKey(key)
	if err != nil {
		return false
	}
	_, chunk, ok := clustermesh.SplitServicesV2Name(pk.Name)
	return ok && chunk != ""
}

func sortOps(ops []op) {
	slices.SortStableFunc(ops, func(a, b op) int { return cmp.Compare(opPhase(a), opPhase(b)) })
}

// markerWanted says whether kind's sync marker is written: a service
// layout's only when it is written.
func (p *Publisher) markerWanted(kind clustermesh.Kind) bool {
	switch kind {
	case clustermesh.KindServices:
		return p.cfg.ServiceLayout.single()
	case clustermesh.KindServicesV2:
		return p.cfg.ServiceLayout.chunked()
	}
	return true
}
