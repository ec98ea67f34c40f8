package clustermesh_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/braidmesh/braid/clustermesh"
)

// The fuzz targets decode as cluster "east" (ID 2, pod CIDRs 10.2.0.0/16 and
// fd00:2::/48). Each checks that the decoder does not panic, that a
// rejection is a *ValidationError naming the key with a zero value, and that
// an accepted value lives at the key it was read from and survives
// json.Marshal and a second decode unchanged. Seeds are added here and in
// testdata/fuzz/<FuzzName>/.

// fuzzSeed is a key and value pair for f.Add.
type fuzzSeed struct {
	key   string
	value string
}

// commonSeeds are hostile or malformed values worth trying at any key.
var commonSeeds = []string{
	``,
	`null`,
	`{}`,
	`[]`,
	`"x"`,
	`{"cluster":"east"`,
	`{"cluster":"east"}{"cluster":"east"}`,
	`{"cluster":"west","cluster":"east"}`,
	`{"CLUSTER":"east"}`,
	"{\"cluster\":\"east\xff\"}",
	`{"cluster":"east","extra":{"a":[1,2,{"b":null}]}}`,
	strings.Repeat("[", 1000) + strings.Repeat("]", 1000),
}

func addSeeds(f *testing.F, key string, valid []byte, extra ...fuzzSeed) {
	f.Add(key, valid)
	for _, v := range commonSeeds {
		f.Add(key, []byte(v))
	}
	for _, s := range extra {
		f.Add(s.key, []byte(s.value))
	}
}

// checkRejection checks the contract of a failed decode.
func checkRejection(t *testing.T, key string, err error, zero bool) {
	t.Helper()
	if !errors.Is(err, clustermesh.ErrInvalid) {
		t.Fatalf("decode %q: error does not match ErrInvalid: %v", key, err)
	}
	var ve *clustermesh.ValidationError
	if !errors.As(err, &ve) || ve.Key != key {
		t.Fatalf("decode %q: error is not a ValidationError for the key: %#v", key, err)
	}
	if !zero {
		t.Fatalf("decode %q: returned a non-zero value with error %v", key, err)
	}
}

// checkRoundTrip checks that got, decoded at key, is stored at key and
// decodes to an equal value after json.Marshal.
func checkRoundTrip[T any](t *testing.T, key string, got T, gotKey string, decode func(string, []byte) (T, error)) {
	t.Helper()
	if gotKey != key {
		t.Fatalf("decoded at %q, but Key() = %q", key, gotKey)
	}
	b, err := json.Marshal(got)
	if err != nil {
		t.Fatalf("marshal decoded %T: %v", got, err)
	}
	again, err := decode(key, b)
	if err != nil {
		t.Fatalf("re-decode at %q of %s: %v", key, b, err)
	}
	if diff := cmp.Diff(got, again, cmpOpts); diff != "" {
		t.Fatalf("re-decode at %q changed the value (-first +second):\n%s", key, diff)
	}
}

// checkOwner fails if a decoder modified the owner it was given.
func checkOwner(t *testing.T, owner *clustermesh.ClusterConfig) {
	t.Helper()
	if diff := cmp.Diff(eastConfig(), *owner, cmpOpts); diff != "" {
		t.Fatalf("decoder modified its owner:\n%s", diff)
	}
}

func FuzzDecodeClusterConfig(f *testing.F) {
	east := eastConfig()
	addSeeds(f, east.Key(), mustJSON(f, east),
		fuzzSeed{"braid/v1/clusters/w", `{"name":"w","id":1,"capabilities":{}}`},
		fuzzSeed{"braid/v1/clusters/east", `{"name":"west","id":3}`},
		fuzzSeed{"braid/v1/clusters/east", `{"name":"east","id":0}`},
		fuzzSeed{"braid/v1/clusters/east", `{"name":"east","id":2,"podCIDRs":["10.2.0.1/16"]}`},
		fuzzSeed{"braid/v1/clusters/east", `{"name":"east","id":2,"podCIDRs":[],"serviceCIDRs":null}`},
		fuzzSeed{"braid/v1/nodes/east/east", `{"name":"east","id":2}`},
		fuzzSeed{"braid/v1/clusters/East", `{"name":"East","id":2}`},
	)
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		c, err := clustermesh.DecodeClusterConfig(key, value)
		if err != nil {
			checkRejection(t, key, err, cmp.Equal(c, clustermesh.ClusterConfig{}, cmpOpts))
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("accepted config fails Validate: %v", err)
		}
		checkRoundTrip(t, key, c, c.Key(), clustermesh.DecodeClusterConfig)
	})
}

func FuzzDecodeNode(f *testing.F) {
	n := eastNode()
	addSeeds(f, n.Key(), mustJSON(f, n),
		fuzzSeed{"braid/v1/nodes/east/n", `{"name":"n","cluster":"east","ips":["fe80::1%eth0"],"podCIDRs":[]}`},
		fuzzSeed{"braid/v1/nodes/east/n", `{"name":"n","cluster":"west","ips":["10.0.0.1"]}`},
		fuzzSeed{"braid/v1/nodes/west/n", `{"name":"n","cluster":"west","ips":["10.0.0.1"]}`},
		fuzzSeed{"braid/v1/nodes/east/n", `{"name":"n","cluster":"east","ips":["10.0.0.1"],"podCIDRs":["10.3.0.0/24"]}`},
		fuzzSeed{"braid/v1/nodes/east/n", `{"name":"n","cluster":"east","ips":["10.0.0.1"],"wireguardKey":"AAAA"}`},
		fuzzSeed{"braid/v1/nodes/east/a/b", `{"name":"a/b","cluster":"east","ips":["10.0.0.1"]}`},
		fuzzSeed{"braid/v1/nodes/east/n", `{"name":"n","cluster":"east","ips":[""]}`},
	)
	owner := eastConfig()
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		defer checkOwner(t, &owner)
		n, err := clustermesh.DecodeNode(&owner, key, value)
		if err != nil {
			checkRejection(t, key, err, cmp.Equal(n, clustermesh.Node{}, cmpOpts))
			return
		}
		checkRoundTrip(t, key, n, n.Key(), func(key string, b []byte) (clustermesh.Node, error) {
			return clustermesh.DecodeNode(&owner, key, b)
		})
	})
}

func FuzzDecodeIdentity(f *testing.F) {
	id := eastIdentityRecord()
	addSeeds(f, id.Key(), mustJSON(f, id),
		fuzzSeed{"braid/v1/identities/east/196613", `{"id":196613,"cluster":"east","labels":{"a":"b"}}`},
		fuzzSeed{"braid/v1/identities/east/131072", `{"id":131072,"cluster":"east","labels":{"a":"b"}}`},
		fuzzSeed{"braid/v1/identities/east/196607", `{"id":196607,"cluster":"east","labels":{"a":"b","":"c"}}`},
		fuzzSeed{"braid/v1/identities/east/0131077", `{"id":131077,"cluster":"east","labels":{"a":"b"}}`},
		fuzzSeed{"braid/v1/identities/east/131077", `{"id":131077,"cluster":"east","labels":{"a":"b","a":"c"}}`},
		fuzzSeed{"braid/v1/identities/east/131077", `{"id":1.31077e5,"cluster":"east","labels":{}}`},
	)
	owner := eastConfig()
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		defer checkOwner(t, &owner)
		id, err := clustermesh.DecodeIdentity(&owner, key, value)
		if err != nil {
			checkRejection(t, key, err, cmp.Equal(id, clustermesh.Identity{}, cmpOpts))
			return
		}
		if !owner.OwnsIdentity(id.ID) {
			t.Fatalf("accepted identity %d outside the owner's range", id.ID)
		}
		checkRoundTrip(t, key, id, id.Key(), func(key string, b []byte) (clustermesh.Identity, error) {
			return clustermesh.DecodeIdentity(&owner, key, b)
		})
	})
}

func FuzzDecodeIPEntry(f *testing.F) {
	e := eastIPEntry()
	addSeeds(f, e.Key(), mustJSON(f, e),
		fuzzSeed{"braid/v1/ips/east/fd00:2::/64", `{"prefix":"fd00:2::/64","cluster":"east","identity":131077,"hostIP":"fd00:ffff::1"}`},
		fuzzSeed{"braid/v1/ips/east/10.3.0.5/32", `{"prefix":"10.3.0.5/32","cluster":"east","identity":131077,"hostIP":"10.0.0.1"}`},
		fuzzSeed{"braid/v1/ips/east/10.2.1.7/32", `{"prefix":"10.2.1.7/32","cluster":"east","identity":196613,"hostIP":"10.0.0.1"}`},
		fuzzSeed{"braid/v1/ips/east/10.2.1.7/24", `{"prefix":"10.2.1.7/24","cluster":"east","identity":131077,"hostIP":"10.0.0.1"}`},
		fuzzSeed{"braid/v1/ips/east/10.2.1.7/32", `{"prefix":"10.2.1.7/32","cluster":"east","identity":131077,"hostIP":""}`},
		fuzzSeed{"braid/v1/ips/east/::ffff:10.2.1.7/128", `{"prefix":"::ffff:10.2.1.7/128","cluster":"east","identity":131077,"hostIP":"10.0.0.1"}`},
	)
	owner := eastConfig()
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		defer checkOwner(t, &owner)
		e, err := clustermesh.DecodeIPEntry(&owner, key, value)
		if err != nil {
			checkRejection(t, key, err, cmp.Equal(e, clustermesh.IPEntry{}, cmpOpts))
			return
		}
		if !owner.ContainsPodIP(e.Prefix) || !owner.OwnsIdentity(e.Identity) {
			t.Fatalf("accepted entry %+v outside the owner's pod CIDRs or identity range", e)
		}
		if e.Key() != key {
			t.Fatalf("DecodeIPEntry accepted non-canonical key %q for %s (canonical %q)", key, e.Prefix, e.Key())
		}
		checkRoundTrip(t, key, e, e.Key(), func(key string, b []byte) (clustermesh.IPEntry, error) {
			return clustermesh.DecodeIPEntry(&owner, key, b)
		})
	})
}

func FuzzDecodeService(f *testing.F) {
	s := eastService()
	addSeeds(f, s.Key(), mustJSON(f, s),
		fuzzSeed{"braid/v1/services/east/default/web", `{"cluster":"east","namespace":"default","name":"web","global":true,"shared":false,"affinity":"none","ports":[{"port":80,"protocol":"TCP"}],"backends":[]}`},
		fuzzSeed{"braid/v1/services/east/default/web", `{"cluster":"east","namespace":"default","name":"web","shared":false,"affinity":"none","ports":[{"port":80,"protocol":"TCP"}],"backends":[{"ip":"10.2.1.7","ports":[{"port":80}]}]}`},
		fuzzSeed{"braid/v1/services/east/default/web", `{"cluster":"east","namespace":"default","name":"web","shared":true,"affinity":"local","ports":[{"name":"a","port":80,"protocol":"TCP"}],"backends":[{"ip":"10.2.1.7","ports":[{"name":"b","port":80}]}]}`},
		fuzzSeed{"braid/v1/services/east/default/web", `{"cluster":"east","namespace":"default","name":"web","affinity":"remote","ports":[{"name":"a","port":80,"protocol":"TCP"},{"name":"a","port":81,"protocol":"UDP"}]}`},
		fuzzSeed{"braid/v1/services/east/default/web", `{"cluster":"east","namespace":"default","name":"web","affinity":"","ports":[{"port":80,"protocol":"tcp"}]}`},
		fuzzSeed{"braid/v1/services/east/default/api", `{"cluster":"east","namespace":"default","name":"web","affinity":"none","ports":null}`},
		fuzzSeed{"braid/v1/services/east//web", `{"cluster":"east","namespace":"","name":"web","affinity":"none","ports":[]}`},
	)
	owner := eastConfig()
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		defer checkOwner(t, &owner)
		s, err := clustermesh.DecodeService(&owner, key, value)
		if err != nil {
			checkRejection(t, key, err, cmp.Equal(s, clustermesh.Service{}, cmpOpts))
			return
		}
		if !s.Shared && len(s.Backends) > 0 {
			t.Fatalf("accepted unshared service with %d backends", len(s.Backends))
		}
		checkRoundTrip(t, key, s, s.Key(), func(key string, b []byte) (clustermesh.Service, error) {
			return clustermesh.DecodeService(&owner, key, b)
		})
	})
}

func FuzzDecodeSyncMarker(f *testing.F) {
	addSeeds(f, clustermesh.SyncedKey("east", clustermesh.KindNodes), []byte(`{"entries":42}`),
		fuzzSeed{"braid/v1/synced/east/services", `{"entries":0}`},
		fuzzSeed{"braid/v1/synced/west/ips", `{"entries":1}`},
		fuzzSeed{"braid/v1/synced/east/widgets", `{"entries":1}`},
		fuzzSeed{"braid/v1/synced/east/identities", `{"entries":-1}`},
		fuzzSeed{"braid/v1/synced/east/identities", `{"entries":9223372036854775808}`},
		fuzzSeed{"braid/v1/synced/east/nodes/x", `{"entries":1}`},
	)
	owner := eastConfig()
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		defer checkOwner(t, &owner)
		kind, m, err := clustermesh.DecodeSyncMarker(&owner, key, value)
		if err != nil {
			// DecodeSyncMarker may return the partly decoded marker with
			// its error; only the kind must be empty.
			checkRejection(t, key, err, kind == "")
			return
		}
		if m.Entries < 0 {
			t.Fatalf("accepted negative entry count %d", m.Entries)
		}
		if got := clustermesh.SyncedKey(owner.Name, kind); got != key {
			t.Fatalf("decoded at %q, but the marker for %q is at %q", key, kind, got)
		}
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatalf("marshal decoded marker: %v", err)
		}
		kind2, m2, err := clustermesh.DecodeSyncMarker(&owner, key, b)
		if err != nil {
			t.Fatalf("re-decode at %q of %s: %v", key, b, err)
		}
		if kind2 != kind || m2 != m {
			t.Fatalf("re-decode at %q = %q, %+v; first decode gave %q, %+v", key, kind2, m2, kind, m)
		}
	})
}

func FuzzParseKey(f *testing.F) {
	for _, k := range []string{
		"braid/v1/clusters/east",
		"braid/v1/nodes/east/node-1",
		"braid/v1/identities/east/131077",
		"braid/v1/ips/east/10.2.1.7/32",
		"braid/v1/ips/east/fd00:2::/64",
		"braid/v1/services/east/default/web",
		"braid/v1/synced/east/nodes",
		"braid/v1/synced/east/widgets",
		"braid/v1/clusters/east/x",
		"braid/v1/nodes//x",
		"braid/v1/nodes/east/",
		"braid/v1/",
		"braid/v2/nodes/east/x",
		"",
		"braid/v1/nodes/" + strings.Repeat("a", 33) + "/x",
		"braid/v1/nodes/east\x00/x",
	} {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, key string) {
		pk, err := clustermesh.ParseKey(key)
		if err != nil {
			if pk != (clustermesh.ParsedKey{}) {
				t.Fatalf("ParseKey(%q) returned %+v with error %v", key, pk, err)
			}
			if !strings.Contains(err.Error(), strconv.Quote(key)) {
				t.Fatalf("ParseKey(%q) error %q does not name the key", key, err)
			}
			return
		}
		if err := pk.Cluster.Validate(); err != nil {
			t.Fatalf("ParseKey(%q) accepted cluster: %v", key, err)
		}
		var rebuilt string
		switch {
		case pk.Config && !pk.Synced && pk.Kind == "" && pk.Name == "":
			rebuilt = clustermesh.ClusterKey(pk.Cluster)
		case pk.Synced && !pk.Config && pk.Kind == "" && pk.Name != "":
			rebuilt = clustermesh.SyncedKey(pk.Cluster, clustermesh.Kind(pk.Name))
		case !pk.Config && !pk.Synced && pk.Kind != "" && pk.Name != "":
			rebuilt = clustermesh.KindPrefix(pk.Kind, pk.Cluster) + pk.Name
		default:
			t.Fatalf("ParseKey(%q) = %+v: not exactly one key form", key, pk)
		}
		if rebuilt != key {
			t.Fatalf("ParseKey(%q) = %+v, which rebuilds as %q", key, pk, rebuilt)
		}
	})
}

// TestFuzzCorpusValidSeeds checks that the committed seeds named valid_* are
// accepted, so the corpus keeps exercising the round-trip checks and not
// only the rejections.
func TestFuzzCorpusValidSeeds(t *testing.T) {
	owner := eastConfig()
	decoders := map[string]func(key string, value []byte) error{
		"FuzzDecodeClusterConfig": func(k string, v []byte) error { _, err := clustermesh.DecodeClusterConfig(k, v); return err },
		"FuzzDecodeNode":          func(k string, v []byte) error { _, err := clustermesh.DecodeNode(&owner, k, v); return err },
		"FuzzDecodeIdentity":      func(k string, v []byte) error { _, err := clustermesh.DecodeIdentity(&owner, k, v); return err },
		"FuzzDecodeIPEntry":       func(k string, v []byte) error { _, err := clustermesh.DecodeIPEntry(&owner, k, v); return err },
		"FuzzDecodeService":       func(k string, v []byte) error { _, err := clustermesh.DecodeService(&owner, k, v); return err },
		"FuzzDecodeSyncMarker":    func(k string, v []byte) error { _, _, err := clustermesh.DecodeSyncMarker(&owner, k, v); return err },
		"FuzzParseKey":            func(k string, _ []byte) error { _, err := clustermesh.ParseKey(k); return err },
	}
	for target, decode := range decoders {
		files, err := filepath.Glob(filepath.Join("testdata", "fuzz", target, "*"))
		if err != nil {
			t.Fatal(err)
		}
		if len(files) < 3 {
			t.Errorf("%s has %d committed seeds, want at least 3", target, len(files))
		}
		for _, file := range files {
			if !strings.HasPrefix(filepath.Base(file), "valid_") {
				continue
			}
			args := readCorpusFile(t, file)
			key, value := args[0], ""
			if len(args) > 1 {
				value = args[1]
			}
			if err := decode(key, []byte(value)); err != nil {
				t.Errorf("%s: valid seed rejected: %v", file, err)
			}
		}
	}
}

// readCorpusFile returns the string and []byte arguments of a
// "go test fuzz v1" file.
func readCorpusFile(t *testing.T, file string) []string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if lines[0] != "go test fuzz v1" {
		t.Fatalf("%s: header %q", file, lines[0])
	}
	var args []string
	for _, l := range lines[1:] {
		lit, ok := strings.CutPrefix(l, "string(")
		if !ok {
			lit, ok = strings.CutPrefix(l, "[]byte(")
		}
		s, err := strconv.Unquote(strings.TrimSuffix(lit, ")"))
		if !ok || err != nil {
			t.Fatalf("%s: cannot parse %q", file, l)
		}
		args = append(args, s)
	}
	return args
}
