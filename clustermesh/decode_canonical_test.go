package clustermesh

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"testing"
)

// FuzzIPEntryCanonical checks the fast path of DecodeIPEntry against the
// strict JSON decoder: whatever decodeIPEntryCanonical accepts, decodeStrict
// accepts too and decodes to the same entry.
func FuzzIPEntryCanonical(f *testing.F) {
	for _, s := range []string{
		`{"prefix":"10.2.0.5/32","cluster":"east","identity":131077,"hostIP":"10.0.0.1"}`,
		`{"prefix":"fd00:2::/64","cluster":"east","identity":0,"hostIP":"fd00:ffff::1"}`,
		`{"prefix":"","cluster":"","identity":4294967295,"hostIP":""}`,
		`{"prefix":"10.2.0.5/32","cluster":"east","identity":4294967296,"hostIP":"10.0.0.1"}`,
		`{"prefix":"10.2.0.5/32","cluster":"east","identity":0131077,"hostIP":"10.0.0.1"}`,
		`{"prefix":"10.2.0.5/32","cluster":"e\u0061st","identity":1,"hostIP":"10.0.0.1"}`,
		`{"prefix":"10.2.0.5/32","cluster":"east","identity":1,"hostIP":"10.0.0.1"} `,
		`{"prefix":"10.2.0.5/32","cluster":"east","identity":1,"hostIP":"10.0.0.1","x":1}`,
		`{"prefix":"10.2.0.5/33","cluster":"east","identity":1,"hostIP":"10.0.0.1"}`,
		`{"prefix":"10.2.0.5/32","cluster":"<&>","identity":1e3,"hostIP":"10.0.0.1%eth0"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, value []byte) {
		var fast IPEntry
		if !decodeIPEntryCanonical(value, &fast, "east") {
			return
		}
		var strict IPEntry
		if err := decodeStrict(value, &strict); err != nil {
			t.Fatalf("fast path accepted %q, the strict decoder rejects it: %v", value, err)
		}
		if !reflect.DeepEqual(fast, strict) {
			t.Fatalf("fast path decoded %q as %+v, the strict decoder as %+v", value, fast, strict)
		}
	})
}

// TestIPEntryCanonicalTakesPublishedValues checks that what a publisher
// writes (json.Marshal of an IPEntry) takes the fast path, so a cold start
// does not silently fall back to the slow decoder.
func TestIPEntryCanonicalTakesPublishedValues(t *testing.T) {
	for _, e := range []IPEntry{
		{Prefix: netip.MustParsePrefix("10.2.0.5/32"), Cluster: "east", Identity: 131077, HostIP: netip.MustParseAddr("10.0.0.1")},
		{Prefix: netip.MustParsePrefix("fd00:2::5/128"), Cluster: "cluster-with-a-long-name", Identity: 0, HostIP: netip.MustParseAddr("fd00:ffff::1")},
	} {
		b, err := json.Marshal(&e)
		if err != nil {
			t.Fatal(err)
		}
		var got IPEntry
		if !decodeIPEntryCanonical(b, &got, e.Cluster) {
			t.Fatalf("published value %s does not take the fast path", b)
		}
		if !reflect.DeepEqual(got, e) {
			t.Fatalf("fast path decoded %s as %+v, want %+v", b, got, e)
		}
	}
}

// BenchmarkDecodeIPEntry decodes a published IP entry with DecodeIPEntry
// (fast path and validation) beside encoding/json's strict decoding alone.
func BenchmarkDecodeIPEntry(b *testing.B) {
	owner := ClusterConfig{Name: "east", ID: 2, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16")}}
	first, _ := owner.IdentityRange()
	e := IPEntry{Prefix: netip.MustParsePrefix("10.2.0.5/32"), Cluster: "east", Identity: first + 5, HostIP: netip.MustParseAddr("10.0.0.1")}
	value, err := json.Marshal(&e)
	if err != nil {
		b.Fatal(err)
	}
	key := e.Key()
	b.Run("DecodeIPEntry", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := DecodeIPEntry(&owner, key, value); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("json-strict-only", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var got IPEntry
			if err := decodeStrict(value, &got); err != nil {
				b.Fatal(err)
			}
		}
	})
}
