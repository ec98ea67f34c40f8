package publish

import (
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/braidmesh/braid/clustermesh"
)

// TestSameBackendComparesEveryField: chunks are re-encoded only when
// sameBackend says a backend changed, so it must compare every field.
func TestSameBackendComparesEveryField(t *testing.T) {
	typ := reflect.TypeFor[clustermesh.Backend]()
	compared := map[string]bool{"IP": true, "Ports": true, "Node": true, "Zone": true, "Hostname": true, "Ready": true, "Serving": true, "Terminating": true}
	for i := range typ.NumField() {
		if f := typ.Field(i); !compared[f.Name] {
			t.Errorf("clustermesh.Backend.%s is not compared by sameBackend: a change to it alone would not be published", f.Name)
		}
	}
	base := clustermesh.Backend{Ports: []clustermesh.BackendPort{{Name: "http", Port: 80}}}
	for name, change := range map[string]func(*clustermesh.Backend){
		"Ports":       func(b *clustermesh.Backend) { b.Ports = []clustermesh.BackendPort{{Name: "http", Port: 81}} },
		"Node":        func(b *clustermesh.Backend) { b.Node = "n" },
		"Zone":        func(b *clustermesh.Backend) { b.Zone = "z" },
		"Hostname":    func(b *clustermesh.Backend) { b.Hostname = "h" },
		"Ready":       func(b *clustermesh.Backend) { b.Ready = true },
		"Serving":     func(b *clustermesh.Backend) { b.Serving = true },
		"Terminating": func(b *clustermesh.Backend) { b.Terminating = true },
	} {
		b := base
		change(&b)
		if sameBackend(base, b) {
			t.Errorf("sameBackend misses a change of %s", name)
		}
	}
}

// TestChunkerEncodesWhatItWasGiven: whatever the changes (flaps and port
// changes, which take the path that reuses the last call's positions, and
// backends coming and going, which assign again), the chunks encodeChunks
// returns hold exactly the backends given, each once, and a change of one
// backend's fields re-encodes one chunk.
func TestChunkerEncodesWhatItWasGiven(t *testing.T) {
	owner := clustermesh.ClusterConfig{Name: "east", ID: 2, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16")}}
	rng := rand.New(rand.NewPCG(1, 2))
	ipOf := func(n int) netip.Addr { return netip.AddrFrom4([4]byte{10, 2, byte(n >> 8), byte(n)}) }
	var backends []clustermesh.Backend
	for i := range 1000 {
		backends = append(backends, clustermesh.Backend{IP: ipOf(i), Ports: []clustermesh.BackendPort{{Name: "http", Port: 80}}, Ready: true})
	}
	rng.Shuffle(len(backends), func(i, j int) { backends[i], backends[j] = backends[j], backends[i] })
	next := 1000
	ch := &chunker{}
	var prev []encodedRef
	for round := range 400 {
		op := "flap"
		switch r := rng.IntN(10); {
		case r == 0:
			op = "add"
			backends = slices.Insert(backends, rng.IntN(len(backends)+1), clustermesh.Backend{IP: ipOf(next), Ports: []clustermesh.BackendPort{{Name: "http", Port: 80}}})
			next++
		case r == 1 && len(backends) > 1:
			op = "remove"
			i := rng.IntN(len(backends))
			backends = slices.Delete(backends, i, i+1)
		case r == 2:
			op = "port"
			backends[rng.IntN(len(backends))].Ports = []clustermesh.BackendPort{{Name: "http", Port: uint16(8000 + round)}}
		default:
			i := rng.IntN(len(backends))
			backends[i].Ready = !backends[i].Ready
		}
		given := slices.Clone(backends)
		refs, err := ch.encodeChunks(backends)
		if err != nil {
			t.Fatalf("round %d (%s): %v", round, op, err)
		}
		if !slices.EqualFunc(backends, given, sameBackend) {
			t.Fatalf("round %d (%s): encodeChunks modified its input", round, op)
		}
		got := map[netip.Addr]clustermesh.Backend{}
		for _, r := range refs {
			c := clustermesh.EndpointChunk{Cluster: "east", Namespace: "default", Name: "web", Chunk: chunkName(r.n)}
			dec, err := clustermesh.DecodeEndpointChunk(&owner, nil, c.Key(), r.val)
			if err != nil {
				t.Fatalf("round %d (%s): chunk %s: %v", round, op, c.Chunk, err)
			}
			for _, b := range dec.Backends {
				if _, twice := got[b.IP]; twice {
					t.Fatalf("round %d (%s): backend %s in two chunks", round, op, b.IP)
				}
				got[b.IP] = b
			}
		}
		if len(got) != len(backends) {
			t.Fatalf("round %d (%s): chunks hold %d backends, want %d", round, op, len(got), len(backends))
		}
		for _, b := range backends {
			if g, ok := got[b.IP]; !ok || !sameBackend(g, b) {
				t.Fatalf("round %d (%s): backend %s encoded as %+v, want %+v", round, op, b.IP, g, b)
			}
		}
		if (op == "flap" || op == "port") && prev != nil {
			if len(refs) != len(prev) {
				t.Fatalf("round %d (%s): %d chunks, had %d", round, op, len(refs), len(prev))
			}
			changed := 0
			for i := range refs {
				if refs[i].n != prev[i].n {
					t.Fatalf("round %d (%s): chunk order changed", round, op)
				}
				if string(refs[i].val) != string(prev[i].val) {
					changed++
				}
			}
			if changed != 1 {
				t.Fatalf("round %d (%s): %d chunks re-encoded, want 1", round, op, changed)
			}
		}
		prev = refs
	}
	if ch.at == nil {
		t.Fatal("the chunker kept no positions: the path for unchanged IPs was never taken")
	}
}
