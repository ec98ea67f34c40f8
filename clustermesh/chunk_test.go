package clustermesh_test

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/braidmesh/braid/clustermesh"
)

func eastChunk(name string, backends ...clustermesh.Backend) clustermesh.EndpointChunk {
	return clustermesh.EndpointChunk{Cluster: "east", Namespace: "default", Name: "web", Chunk: name, Backends: backends}
}

func eastHeader(chunks ...string) clustermesh.ServiceHeader {
	h := clustermesh.ServiceHeader{Service: eastService(), Chunks: chunks}
	h.Backends = nil
	return h
}

func mustChunk(t testing.TB, c clustermesh.EndpointChunk) []byte {
	t.Helper()
	b, err := clustermesh.EncodeChunk(&c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// deflate compresses raw as EncodeChunk does, so tests can hand-craft
// protobuf payloads.
func deflate(t testing.TB, raw []byte) []byte {
	t.Helper()
	return clustermesh.DeflateForTest(raw)
}

func TestChunkRoundTrip(t *testing.T) {
	owner := eastConfig()
	c := eastChunk("c0", eastService().Backends...)
	c.Backends[0].Terminating = true
	c.Backends[0].Hostname = "web-0"
	got, err := clustermesh.DecodeEndpointChunk(&owner, nil, c.Key(), mustChunk(t, c))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(c, got, cmpOpts); diff != "" {
		t.Fatalf("chunk changed in a round trip:\n%s", diff)
	}
	h := eastHeader("c0")
	gotH, err := clustermesh.DecodeServiceHeader(&owner, h.Key(), mustJSON(t, h))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(h, gotH, cmpOpts); diff != "" {
		t.Fatalf("header changed in a round trip:\n%s", diff)
	}
}

func TestChunkRejects(t *testing.T) {
	owner := eastConfig()
	c0 := eastChunk("c0")
	key := c0.Key()
	full := make([]clustermesh.Backend, clustermesh.MaxChunkBackends+1)
	for i := range full {
		full[i] = clustermesh.Backend{IP: netip.AddrFrom4([4]byte{10, 2, byte(i / 250), byte(i%250 + 1)})}
	}
	var tooMany []byte
	for _, b := range full {
		var m []byte
		m = protowire.AppendTag(m, 1, protowire.BytesType)
		m = protowire.AppendBytes(m, b.IP.AsSlice())
		tooMany = protowire.AppendTag(tooMany, 1, protowire.BytesType)
		tooMany = protowire.AppendBytes(tooMany, m)
	}
	backend := func(fields ...[]byte) []byte {
		var m []byte
		for _, f := range fields {
			m = append(m, f...)
		}
		out := protowire.AppendTag(nil, 1, protowire.BytesType)
		return protowire.AppendBytes(out, m)
	}
	ip := func(a string) []byte {
		b := protowire.AppendTag(nil, 1, protowire.BytesType)
		return protowire.AppendBytes(b, netip.MustParseAddr(a).AsSlice())
	}
	field := func(n protowire.Number, v uint64) []byte {
		b := protowire.AppendTag(nil, n, protowire.VarintType)
		return protowire.AppendVarint(b, v)
	}
	tests := []struct {
		name, key string
		value     []byte
		reason    string
	}{
		{"not deflate", key, []byte{0xff, 0xff, 0xff}, "inflate"},
		{"too many backends", key, deflate(t, tooMany), "more than 100 backends"},
		{"bomb", key, deflate(t, make([]byte, 300<<10)), "inflates to more than"},
		{"unknown field", key, deflate(t, backend(ip("10.2.0.1"), field(9, 1))), "unknown field 9"},
		{"field twice", key, deflate(t, backend(ip("10.2.0.1"), ip("10.2.0.2"))), "appears twice"},
		{"bool not 0 or 1", key, deflate(t, backend(ip("10.2.0.1"), field(5, 2))), "not a bool"},
		{"no ip", key, deflate(t, backend(field(5, 1))), "no ip"},
		{"outside pod CIDRs", key, mustChunk(t, eastChunk("c0", clustermesh.Backend{IP: netip.MustParseAddr("10.3.0.1")})), "outside cluster"},
		{"duplicate", key, mustChunk(t, eastChunk("c0", clustermesh.Backend{IP: netip.MustParseAddr("10.2.0.1")}, clustermesh.Backend{IP: netip.MustParseAddr("10.2.0.1")})), "appears twice"},
		{"port 0", key, mustChunk(t, eastChunk("c0", clustermesh.Backend{IP: netip.MustParseAddr("10.2.0.1"), Ports: []clustermesh.BackendPort{{Name: "http"}}})), "is 0"},
		{"header key", "braid/v1/services.v2/east/default/web", mustChunk(t, eastChunk("c0")), "not a chunk key"},
		{"other cluster", "braid/v1/services.v2/west/default/web/c0", mustChunk(t, eastChunk("c0")), "expected \"east\""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := clustermesh.DecodeEndpointChunk(&owner, nil, tc.key, tc.value)
			wantRejected(t, err, tc.key, tc.reason)
			if got.Backends != nil {
				t.Fatal("rejected chunk returned backends")
			}
		})
	}
}

func TestHeaderRejects(t *testing.T) {
	owner := eastConfig()
	h := eastHeader("c0")
	withBackends := h
	withBackends.Backends = eastService().Backends
	unshared := eastHeader("c0")
	unshared.Shared = false
	many := eastHeader()
	for i := range clustermesh.MaxChunksPerService + 1 {
		many.Chunks = append(many.Chunks, fmt.Sprintf("c%d", i))
	}
	tests := []struct {
		name, key string
		value     []byte
		reason    string
	}{
		{"backends in header", h.Key(), mustJSON(t, withBackends), "belong in its chunks"},
		{"unshared with chunks", h.Key(), mustJSON(t, unshared), "not shared"},
		{"chunk twice", h.Key(), mustJSON(t, eastHeader("c0", "c0")), "named twice"},
		{"chunk with slash", h.Key(), mustJSON(t, eastHeader("a/b")), "must not contain '/'"},
		{"too many chunks", h.Key(), mustJSON(t, many), "more than the limit"},
		{"unknown field", h.Key(), []byte(strings.Replace(string(mustJSON(t, h)), `"chunks"`, `"x":1,"chunks"`, 1)), "unknown field"},
		{"chunk key", h.Key() + "/c0", mustJSON(t, h), "not a service header key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := clustermesh.DecodeServiceHeader(&owner, tc.key, tc.value)
			wantRejected(t, err, tc.key, tc.reason)
		})
	}
}

func TestAssembleService(t *testing.T) {
	b := func(ip, port string) clustermesh.Backend {
		return clustermesh.Backend{IP: netip.MustParseAddr(ip), Ports: []clustermesh.BackendPort{{Name: port, Port: 8080}}}
	}
	chunks := map[string]*clustermesh.EndpointChunk{}
	add := func(c clustermesh.EndpointChunk) { chunks[c.Chunk] = &c }
	lookup := func(n string) (*clustermesh.EndpointChunk, bool) { c, ok := chunks[n]; return c, ok }
	add(eastChunk("c0", b("10.2.0.1", "http"), b("10.2.0.2", "http")))
	add(eastChunk("c1", b("10.2.0.3", "dns")))
	add(eastChunk("unnamed", b("10.2.0.9", "http")))
	h := eastHeader("c0", "c1")
	s, err := clustermesh.AssembleService(&h, lookup)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Backends) != 3 || s.Backends[2].IP != netip.MustParseAddr("10.2.0.3") {
		t.Fatalf("assembled %v, want c0's two backends then c1's one (and not the unnamed chunk's)", s.Backends)
	}
	missing := eastHeader("c0", "c2")
	if _, err := clustermesh.AssembleService(&missing, lookup); !errors.Is(err, clustermesh.ErrChunkMissing) {
		t.Fatalf("missing chunk: got %v, want ErrChunkMissing", err)
	}
	add(eastChunk("dup", b("10.2.0.1", "http")))
	dup := eastHeader("c0", "dup")
	_, err = clustermesh.AssembleService(&dup, lookup)
	wantRejected(t, err, h.Key(), "appears in two chunks")
	// Chunks whose IP ranges interleave (a publisher's sticky assignment
	// after backends came and went) are checked as carefully.
	add(eastChunk("lo", b("10.2.1.1", "http"), b("10.2.1.5", "http")))
	add(eastChunk("mid", b("10.2.1.3", "http")))
	add(eastChunk("mid-dup", b("10.2.1.3", "http"), b("10.2.1.4", "http")))
	add(eastChunk("unsorted", b("10.2.1.9", "http"), b("10.2.1.5", "http")))
	interleaved := eastHeader("lo", "mid")
	if s, err := clustermesh.AssembleService(&interleaved, lookup); err != nil || len(s.Backends) != 3 {
		t.Fatalf("interleaved chunks without a duplicate: got %d backends, %v; want 3, nil", len(s.Backends), err)
	}
	for _, names := range [][]string{{"lo", "mid", "mid-dup"}, {"unsorted", "lo"}, {"lo", "unsorted"}} {
		h := eastHeader(names...)
		_, err = clustermesh.AssembleService(&h, lookup)
		wantRejected(t, err, h.Key(), "appears in two chunks")
	}
	add(eastChunk("badport", b("10.2.0.7", "grpc")))
	bad := eastHeader("badport")
	_, err = clustermesh.AssembleService(&bad, lookup)
	wantRejected(t, err, h.Key(), "unknown port")
}

// TestAssembleFiftyThousandBackends: a 50,000-backend service fits the
// chunked layout's bounds, as 500 chunks of 100.
func TestAssembleFiftyThousandBackends(t *testing.T) {
	owner := eastConfig()
	chunks := map[string]*clustermesh.EndpointChunk{}
	h := eastHeader()
	for c := range 500 {
		ch := eastChunk(fmt.Sprintf("c%d", c))
		for i := range clustermesh.MaxChunkBackends {
			n := c*clustermesh.MaxChunkBackends + i
			ch.Backends = append(ch.Backends, clustermesh.Backend{IP: netip.AddrFrom4([4]byte{10, 2, byte(n >> 8), byte(n)}),
				Ports: []clustermesh.BackendPort{{Name: "http", Port: 8080}}, Ready: true, Serving: true})
		}
		got, err := clustermesh.DecodeEndpointChunk(&owner, nil, ch.Key(), mustChunk(t, ch))
		if err != nil {
			t.Fatal(err)
		}
		chunks[ch.Chunk] = &got
		h.Chunks = append(h.Chunks, ch.Chunk)
	}
	if _, err := clustermesh.DecodeServiceHeader(&owner, h.Key(), mustJSON(t, h)); err != nil {
		t.Fatal(err)
	}
	s, err := clustermesh.AssembleService(&h, func(n string) (*clustermesh.EndpointChunk, bool) { c, ok := chunks[n]; return c, ok })
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Backends) != 50_000 {
		t.Fatalf("assembled %d backends, want 50000", len(s.Backends))
	}
}

func FuzzDecodeEndpointChunk(f *testing.F) {
	c := eastChunk("c0", eastService().Backends...)
	f.Add(c.Key(), mustChunk(f, c))
	f.Add(c.Key(), []byte{})
	f.Add(c.Key(), clustermesh.DeflateForTest([]byte{0x0a, 0x02, 0x0a, 0x00}))
	f.Add(c.Key(), clustermesh.DeflateForTest([]byte{0x0a, 0x06, 0x0a, 0x04, 10, 2, 0, 1}))
	f.Add("braid/v1/services.v2/east/default/web", mustChunk(f, c))
	owner := eastConfig()
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		defer checkOwner(t, &owner)
		got, err := clustermesh.DecodeEndpointChunk(&owner, nil, key, value)
		if err != nil {
			checkRejection(t, key, err, cmp.Equal(got, clustermesh.EndpointChunk{}, cmpOpts))
			return
		}
		if got.Key() != key {
			t.Fatalf("decoded at %q, but Key() = %q", key, got.Key())
		}
		again, err := clustermesh.DecodeEndpointChunk(&owner, nil, key, mustChunk(t, got))
		if err != nil {
			t.Fatalf("re-encoded chunk rejected: %v", err)
		}
		if diff := cmp.Diff(got, again, cmpOpts); diff != "" {
			t.Fatalf("chunk changed in a round trip:\n%s", diff)
		}
	})
}

func FuzzDecodeServiceHeader(f *testing.F) {
	h := eastHeader("c0", "c1")
	addSeeds(f, h.Key(), mustJSON(f, h),
		fuzzSeed{"braid/v1/services.v2/east/default/web", `{"cluster":"east","namespace":"default","name":"web","shared":true,"affinity":"none","ports":[],"chunks":["a","a"]}`},
		fuzzSeed{"braid/v1/services.v2/east/default/web/c0", `{"cluster":"east","namespace":"default","name":"web","affinity":"none","chunks":[]}`},
		fuzzSeed{"braid/v1/services.v2/east/default/web", `{"cluster":"east","namespace":"default","name":"web","affinity":"none","chunks":["c0"]}`},
	)
	owner := eastConfig()
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		defer checkOwner(t, &owner)
		got, err := clustermesh.DecodeServiceHeader(&owner, key, value)
		if err != nil {
			checkRejection(t, key, err, cmp.Equal(got, clustermesh.ServiceHeader{}, cmpOpts))
			return
		}
		if len(got.Backends) > 0 || (!got.Shared && len(got.Chunks) > 0) {
			t.Fatalf("accepted a header with backends or an unshared one with chunks: %+v", got)
		}
		checkRoundTrip(t, key, got, got.Key(), func(key string, b []byte) (clustermesh.ServiceHeader, error) {
			return clustermesh.DecodeServiceHeader(&owner, key, b)
		})
	})
}

// A publisher of a large service collects garbage often; encoding a chunk
// after a collection must reuse a DEFLATE writer, not allocate a new one
// (about 800 KB, eight times the cost of compressing the chunk).
func TestEncodeChunkKeepsItsWriterAcrossCollections(t *testing.T) {
	backends := make([]clustermesh.Backend, clustermesh.MaxChunkBackends)
	for i := range backends {
		backends[i] = clustermesh.Backend{IP: netip.AddrFrom4([4]byte{10, 1, byte(i / 250), byte(i%250 + 1)}), Node: fmt.Sprintf("node-%d", i%20), Ready: true}
	}
	c := eastChunk("0", backends...)
	if _, err := clustermesh.EncodeChunk(&c); err != nil {
		t.Fatal(err)
	}
	// Two collections empty a sync.Pool (its victim cache included).
	runtime.GC()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if _, err := clustermesh.EncodeChunk(&c); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if got := after.TotalAlloc - before.TotalAlloc; got > 128<<10 {
		t.Errorf("encoding a chunk after two collections allocated %d bytes; want < 128 KiB (a new DEFLATE writer is ~800 KB)", got)
	}
}
