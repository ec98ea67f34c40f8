package clustermesh

import (
	"bytes"
	"compress/flate"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"google.golang.org/protobuf/encoding/protowire"
)

// The chunked service layout (key schema "services.v2").
//
// A service's header (the service without backends, and the names of its
// chunks) is stored at
//
//	braid/v1/services.v2/<cluster>/<namespace>/<name>
//
// and its backends in chunks of at most MaxChunkBackends at
//
//	braid/v1/services.v2/<cluster>/<namespace>/<name>/<chunk>
//
// so that a one-backend change rewrites one small value. A consumer uses a
// service's chunked form once every chunk its header names is present, and
// the single-value layout (KindServices) otherwise: a mesh migrates with old
// and new publishers and consumers side by side (see docs/architecture.md).
//
// Chunk values are a protobuf message compressed with DEFLATE (raw, RFC
// 1951); docs/benchmarks.md has the measurement that chose it:
//
//	message Chunk   { repeated Backend backends = 1; }
//	message Backend { bytes ip = 1; repeated Port ports = 2; string node = 3;
//	                  string zone = 4; bool ready = 5; bool serving = 6;
//	                  bool terminating = 7; }
//	message Port    { string name = 1; uint32 port = 2; }
//
// The decoder is strict: every field at most once (ports excepted), no
// unknown field, no trailing data, bounded sizes.

// KindServicesV2 holds services in the chunked layout: headers and chunks.
const KindServicesV2 Kind = "services.v2"

// Bounds of the chunked layout.
const (
	// MaxChunkBackends bounds the backends of one chunk.
	MaxChunkBackends = 100
	// MaxChunksPerService bounds the chunks a header may name.
	MaxChunksPerService = 2048
	// MaxChunkedBackends bounds a chunked service's backends, all chunks
	// together: a 50,000-backend service fits with room for chunks the
	// publisher has not refilled yet.
	MaxChunkedBackends = 100_000
	// maxChunkValue bounds a stored (compressed) chunk, maxChunkRaw the
	// chunk once inflated: a hostile writer gets no decompression bomb.
	maxChunkValue = 64 << 10
	maxChunkRaw   = 256 << 10
)

// ServiceHeader is a service in the chunked layout: the service without
// backends (Service.Backends is always empty) and the names of the chunks
// holding them, in order. It is stored at Key, JSON-encoded.
type ServiceHeader struct {
	Service
	Chunks []string `json:"chunks"`
}

// Key returns where the header is stored.
func (h *ServiceHeader) Key() string {
	return KindPrefix(KindServicesV2, h.Cluster) + h.Namespace + "/" + h.Name
}

// EndpointChunk is one chunk of a chunked service's backends. Only
// Backends is encoded in the value; the rest comes from the key.
type EndpointChunk struct {
	Cluster   ClusterName
	Namespace string
	Name      string
	// Chunk names the chunk within the service.
	Chunk    string
	Backends []Backend
}

// Key returns where the chunk is stored.
func (c *EndpointChunk) Key() string {
	return KindPrefix(KindServicesV2, c.Cluster) + c.Namespace + "/" + c.Name + "/" + c.Chunk
}

// ServiceName is "namespace/name" of the service the chunk belongs to.
func (c *EndpointChunk) ServiceName() string { return c.Namespace + "/" + c.Name }

// SplitServicesV2Name splits the name part of a services.v2 key (after the
// cluster segment): "ns/name" is a header (chunk ""), "ns/name/chunk" a
// chunk.
func SplitServicesV2Name(name string) (service, chunk string, ok bool) {
	parts := strings.Split(name, "/")
	switch len(parts) {
	case 2:
		return name, "", parts[0] != "" && parts[1] != ""
	case 3:
		return parts[0] + "/" + parts[1], parts[2], parts[0] != "" && parts[1] != "" && parts[2] != ""
	}
	return "", "", false
}

// idleFlateWriters keeps DEFLATE writers between chunks. A new writer
// allocates about 800 KB and costs about 0.25 ms, eight times compressing a
// full chunk, and a sync.Pool is emptied by garbage collection, which a
// publisher of a large service runs often: the writers are kept here
// instead, at most cap of them.
var idleFlateWriters = make(chan *flate.Writer, 4)

func getFlateWriter() *flate.Writer {
	select {
	case w := <-idleFlateWriters:
		return w
	default:
		w, _ := flate.NewWriter(nil, flate.DefaultCompression) // fails only for a bad level
		return w
	}
}

func putFlateWriter(w *flate.Writer) {
	select {
	case idleFlateWriters <- w:
	default:
	}
}

var flateReaders = sync.Pool{New: func() any { return flate.NewReader(bytes.NewReader(nil)) }}

// EncodeChunk encodes the chunk's backends as stored. It fails if there are
// more than MaxChunkBackends.
func EncodeChunk(c *EndpointChunk) ([]byte, error) {
	if len(c.Backends) > MaxChunkBackends {
		return nil, fmt.Errorf("encode chunk %s: %d backends, more than %d", c.Key(), len(c.Backends), MaxChunkBackends)
	}
	var raw []byte
	var m, pm []byte
	for _, b := range c.Backends {
		m = m[:0]
		m = protowire.AppendTag(m, 1, protowire.BytesType)
		m = protowire.AppendBytes(m, b.IP.AsSlice())
		for _, p := range b.Ports {
			pm = pm[:0]
			if p.Name != "" {
				pm = protowire.AppendTag(pm, 1, protowire.BytesType)
				pm = protowire.AppendString(pm, p.Name)
			}
			pm = protowire.AppendTag(pm, 2, protowire.VarintType)
			pm = protowire.AppendVarint(pm, uint64(p.Port))
			m = protowire.AppendTag(m, 2, protowire.BytesType)
			m = protowire.AppendBytes(m, pm)
		}
		if b.Node != "" {
			m = protowire.AppendTag(m, 3, protowire.BytesType)
			m = protowire.AppendString(m, b.Node)
		}
		if b.Zone != "" {
			m = protowire.AppendTag(m, 4, protowire.BytesType)
			m = protowire.AppendString(m, b.Zone)
		}
		if b.Hostname != "" {
			m = protowire.AppendTag(m, 8, protowire.BytesType)
			m = protowire.AppendString(m, b.Hostname)
		}
		for f, v := range [3]bool{b.Ready, b.Serving, b.Terminating} {
			if v {
				m = protowire.AppendTag(m, protowire.Number(5+f), protowire.VarintType)
				m = protowire.AppendVarint(m, 1)
			}
		}
		raw = protowire.AppendTag(raw, 1, protowire.BytesType)
		raw = protowire.AppendBytes(raw, m)
	}
	var buf bytes.Buffer
	w := getFlateWriter()
	defer putFlateWriter(w)
	w.Reset(&buf)
	if _, err := w.Write(raw); err != nil {
		return nil, fmt.Errorf("encode chunk %s: %w", c.Key(), err)
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("encode chunk %s: %w", c.Key(), err)
	}
	return buf.Bytes(), nil
}

// inflate decompresses a chunk value, refusing more than maxChunkRaw bytes.
func inflate(value []byte) ([]byte, error) {
	if len(value) > maxChunkValue {
		return nil, fmt.Errorf("value is %d bytes, more than %d", len(value), maxChunkValue)
	}
	r := flateReaders.Get().(io.ReadCloser)
	defer flateReaders.Put(r)
	if err := r.(flate.Resetter).Reset(bytes.NewReader(value), nil); err != nil {
		return nil, fmt.Errorf("inflate: %w", err)
	}
	raw, err := io.ReadAll(io.LimitReader(r, maxChunkRaw+1))
	if err != nil {
		return nil, fmt.Errorf("inflate: %w", err)
	}
	if len(raw) > maxChunkRaw {
		return nil, fmt.Errorf("inflates to more than %d bytes", maxChunkRaw)
	}
	return raw, nil
}

// parseChunk decodes the protobuf message strictly.
func parseChunk(raw []byte) ([]Backend, error) {
	var out []Backend
	for len(raw) > 0 {
		num, typ, n := protowire.ConsumeTag(raw)
		if n < 0 || num != 1 || typ != protowire.BytesType {
			return nil, errors.New("chunk: want only field 1 (backends)")
		}
		raw = raw[n:]
		m, n := protowire.ConsumeBytes(raw)
		if n < 0 {
			return nil, errors.New("chunk: truncated backend")
		}
		raw = raw[n:]
		if len(out) == MaxChunkBackends {
			return nil, fmt.Errorf("chunk has more than %d backends", MaxChunkBackends)
		}
		b, err := parseBackend(m)
		if err != nil {
			return nil, fmt.Errorf("chunk backend %d: %w", len(out), err)
		}
		out = append(out, b)
	}
	return out, nil
}

func parseBackend(m []byte) (Backend, error) {
	var b Backend
	var seen [9]bool
	for len(m) > 0 {
		num, typ, n := protowire.ConsumeTag(m)
		if n < 0 {
			return Backend{}, errors.New("truncated field tag")
		}
		m = m[n:]
		if num < 1 || num > 8 {
			return Backend{}, fmt.Errorf("unknown field %d", num)
		}
		if num != 2 && seen[num] {
			return Backend{}, fmt.Errorf("field %d appears twice", num)
		}
		seen[num] = true
		switch num {
		case 1, 2, 3, 4, 8:
			if typ != protowire.BytesType {
				return Backend{}, fmt.Errorf("field %d: wrong wire type", num)
			}
			v, n := protowire.ConsumeBytes(m)
			if n < 0 {
				return Backend{}, fmt.Errorf("field %d: truncated", num)
			}
			m = m[n:]
			switch num {
			case 1:
				ip, ok := netip.AddrFromSlice(v)
				if !ok {
					return Backend{}, fmt.Errorf("ip: %d bytes, want 4 or 16", len(v))
				}
				b.IP = ip
			case 2:
				p, err := parsePort(v)
				if err != nil {
					return Backend{}, err
				}
				b.Ports = append(b.Ports, p)
			case 3:
				b.Node = string(v)
			case 4:
				b.Zone = string(v)
			case 8:
				b.Hostname = string(v)
			}
		default:
			if typ != protowire.VarintType {
				return Backend{}, fmt.Errorf("field %d: wrong wire type", num)
			}
			x, n := protowire.ConsumeVarint(m)
			if n < 0 || x > 1 {
				return Backend{}, fmt.Errorf("field %d: not a bool", num)
			}
			m = m[n:]
			*[...]*bool{&b.Ready, &b.Serving, &b.Terminating}[num-5] = x == 1
		}
	}
	if !seen[1] {
		return Backend{}, errors.New("no ip")
	}
	return b, nil
}

func parsePort(v []byte) (BackendPort, error) {
	var p BackendPort
	var seen [3]bool
	for len(v) > 0 {
		num, typ, n := protowire.ConsumeTag(v)
		if n < 0 {
			return p, errors.New("port: truncated field tag")
		}
		v = v[n:]
		switch {
		case num == 1 && typ == protowire.BytesType && !seen[1]:
			s, n := protowire.ConsumeBytes(v)
			if n < 0 {
				return p, errors.New("port name: truncated")
			}
			p.Name, v = string(s), v[n:]
		case num == 2 && typ == protowire.VarintType && !seen[2]:
			x, n := protowire.ConsumeVarint(v)
			if n < 0 || x > 65535 {
				return p, errors.New("port: not a port number")
			}
			p.Port, v = uint16(x), v[n:]
		default:
			return p, fmt.Errorf("port: unknown, repeated or mistyped field %d", num)
		}
		seen[num] = true
	}
	return p, nil
}

// DecodeServiceHeader parses and validates a chunked service's header owned
// by owner.
func DecodeServiceHeader(owner *ClusterConfig, key string, value []byte) (ServiceHeader, error) {
	name, err := parseOwned(owner, KindServicesV2, key)
	if err != nil {
		return ServiceHeader{}, err
	}
	if _, chunk, ok := SplitServicesV2Name(name); !ok || chunk != "" {
		return ServiceHeader{}, invalid(key, KindServicesV2, "not a service header key (want %s<cluster>/<namespace>/<name>)", KindPrefix(KindServicesV2, ""))
	}
	var h ServiceHeader
	if err := decodeStrict(value, &h); err != nil {
		return ServiceHeader{}, invalid(key, KindServicesV2, "%v", err)
	}
	if len(h.Backends) > 0 {
		return ServiceHeader{}, invalid(key, KindServicesV2, "header holds %d backends; they belong in its chunks", len(h.Backends))
	}
	h.Backends = nil
	if _, err := validateService(owner, KindServicesV2, key, name, &h.Service); err != nil {
		return ServiceHeader{}, err
	}
	if err := h.Export.Validate(); err != nil {
		return ServiceHeader{}, invalid(key, KindServicesV2, "export: %v", err)
	}
	if err := validImport(owner, h.Import); err != nil {
		return ServiceHeader{}, invalid(key, KindServicesV2, "import: %v", err)
	}
	if !h.Shared && len(h.Chunks) > 0 {
		return ServiceHeader{}, invalid(key, KindServicesV2, "service is not shared but names %d chunks", len(h.Chunks))
	}
	if len(h.Chunks) > MaxChunksPerService {
		return ServiceHeader{}, invalid(key, KindServicesV2, "header names %d chunks, more than the limit of %d", len(h.Chunks), MaxChunksPerService)
	}
	for i, c := range h.Chunks {
		if err := validName("chunk name", c, 253); err != nil {
			return ServiceHeader{}, invalid(key, KindServicesV2, "%v", err)
		}
		if slices.Contains(h.Chunks[:i], c) {
			return ServiceHeader{}, invalid(key, KindServicesV2, "chunk %q named twice", c)
		}
	}
	return h, nil
}

// DecodeEndpointChunk parses and validates a chunk owned by owner: at most
// MaxChunkBackends backends, each in owner's pod CIDRs or (isNodeIP not
// nil) on one of its nodes, none twice, ports non-zero and named once.
// Whether the port names exist is checked by AssembleService, which has the
// header.
func DecodeEndpointChunk(owner *ClusterConfig, isNodeIP func(netip.Addr) bool, key string, value []byte) (EndpointChunk, error) {
	name, err := parseOwned(owner, KindServicesV2, key)
	if err != nil {
		return EndpointChunk{}, err
	}
	svc, chunk, ok := SplitServicesV2Name(name)
	if !ok || chunk == "" {
		return EndpointChunk{}, invalid(key, KindServicesV2, "not a chunk key (want %s<cluster>/<namespace>/<name>/<chunk>)", KindPrefix(KindServicesV2, ""))
	}
	ns, sname, _ := strings.Cut(svc, "/")
	for _, f := range [][3]string{{"namespace", ns, "63"}, {"service name", sname, "63"}, {"chunk name", chunk, "253"}} {
		max := 63
		if f[2] == "253" {
			max = 253
		}
		if err := validName(f[0], f[1], max); err != nil {
			return EndpointChunk{}, invalid(key, KindServicesV2, "%v", err)
		}
	}
	raw, err := inflate(value)
	if err != nil {
		return EndpointChunk{}, invalid(key, KindServicesV2, "%v", err)
	}
	backends, err := parseChunk(raw)
	if err != nil {
		return EndpointChunk{}, invalid(key, KindServicesV2, "%v", err)
	}
	seen := make(map[netip.Addr]bool, len(backends))
	if err := validateBackends(owner, isNodeIP, KindServicesV2, key, nil, backends, seen); err != nil {
		return EndpointChunk{}, err
	}
	return EndpointChunk{Cluster: owner.Name, Namespace: ns, Name: sname, Chunk: chunk, Backends: backends}, nil
}

// portNameSet returns whether a name is one of ports' names: a linear
// search for the few ports most services have, a set beyond.
func portNameSet(ports []ServicePort) func(string) bool {
	if len(ports) <= 8 {
		return func(name string) bool {
			for i := range ports {
				if ports[i].Name == name {
					return true
				}
			}
			return false
		}
	}
	set := make(map[string]bool, len(ports))
	for _, p := range ports {
		set[p.Name] = true
	}
	return func(name string) bool { return set[name] }
}

// duplicateAcrossChunks returns a backend IP that is in two of parts (each
// of which has no IP twice, as DecodeEndpointChunk checks) and the chunk
// it was found in second; n is how many backends parts hold. Chunks
// sorted by IP whose ranges do not overlap (what a publisher writes for a
// service until backends come and go) are checked without a set.
func duplicateAcrossChunks(parts []*EndpointChunk, n int) (netip.Addr, string, bool) {
	type span struct{ lo, hi netip.Addr }
	spans := make([]span, 0, len(parts))
	disjoint := true
	for _, c := range parts {
		if len(c.Backends) == 0 {
			continue
		}
		if !slices.IsSortedFunc(c.Backends, func(a, b Backend) int { return a.IP.Compare(b.IP) }) {
			disjoint = false
			break
		}
		spans = append(spans, span{c.Backends[0].IP, c.Backends[len(c.Backends)-1].IP})
	}
	if disjoint {
		slices.SortFunc(spans, func(a, b span) int { return a.lo.Compare(b.lo) })
		for i := 1; i < len(spans) && disjoint; i++ {
			disjoint = spans[i-1].hi.Less(spans[i].lo)
		}
		if disjoint {
			return netip.Addr{}, "", false
		}
	}
	seen := make(map[netip.Addr]struct{}, n)
	for _, c := range parts {
		for _, b := range c.Backends {
			if _, dup := seen[b.IP]; dup {
				return b.IP, c.Chunk, true
			}
			seen[b.IP] = struct{}{}
		}
	}
	return netip.Addr{}, "", false
}

// ErrChunkMissing is returned by AssembleService when a chunk the header
// names is not there (yet): the publisher writes chunks before the header
// naming them, so a consumer sees this only while a list or a write is
// under way, and keeps what it had.
var ErrChunkMissing = errors.New("chunk missing")

// AssembleService joins a header and its chunks into one Service. It
// returns an error wrapping ErrChunkMissing if a named chunk is not in
// chunks, and a *ValidationError if a backend names a port the header does
// not have, a backend appears in two chunks, or there are more than
// MaxChunkedBackends. Chunks the header does not name are ignored. The
// returned backends are a new slice.
func AssembleService(h *ServiceHeader, chunks func(name string) (*EndpointChunk, bool)) (Service, error) {
	s := h.Service
	key := h.Key()
	n := 0
	parts := make([]*EndpointChunk, 0, len(h.Chunks))
	for _, name := range h.Chunks {
		c, ok := chunks(name)
		if !ok {
			return Service{}, fmt.Errorf("service %s: chunk %q: %w", h.NamespacedName(), name, ErrChunkMissing)
		}
		parts = append(parts, c)
		n += len(c.Backends)
	}
	if n > MaxChunkedBackends {
		return Service{}, invalid(key, KindServicesV2, "service exports %d backends, more than the limit of %d", n, MaxChunkedBackends)
	}
	knownPort := portNameSet(s.Ports)
	s.Backends = make([]Backend, 0, n)
	for _, c := range parts {
		for _, b := range c.Backends {
			for _, bp := range b.Ports {
				if !knownPort(bp.Name) {
					return Service{}, invalid(key, KindServicesV2, "backend %s in chunk %q names unknown port %q", b.IP, c.Chunk, bp.Name)
				}
			}
		}
		s.Backends = append(s.Backends, c.Backends...)
	}
	if ip, chunk, dup := duplicateAcrossChunks(parts, n); dup {
		return Service{}, invalid(key, KindServicesV2, "backend %s appears in two chunks (second: %q)", ip, chunk)
	}
	return s, nil
}
