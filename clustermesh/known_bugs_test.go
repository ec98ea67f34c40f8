package clustermesh_test

import (
	"net/netip"
	"testing"

	"github.com/braidmesh/braid/clustermesh"
)

// The tests in this file pin down decoder bugs found by review and
// fuzzing, now fixed: each fails if its bug comes back.

func knownBug(t *testing.T, format string, args ...any) {
	t.Helper()
	t.Fatalf("regression: "+format, args...)
}

// TestDecodeIPEntryRejectsNonCanonicalKey: DecodeIPEntry compares the parsed
// key name with the entry's prefix, so one prefix is accepted under many
// keys ("FD00:2::5/128", "fd00:0002::5/128", ...). Each decodes to an entry
// whose Key() is a different key, so a consumer indexing by key holds
// duplicates and a delete of the canonical key leaves the other behind.
func TestDecodeIPEntryRejectsNonCanonicalKey(t *testing.T) {
	owner := eastConfig()
	e := clustermesh.IPEntry{Prefix: netip.MustParsePrefix("fd00:2::5/128"), Cluster: "east", Identity: eastIdentity, HostIP: netip.MustParseAddr("10.0.0.1")}
	for _, name := range []string{"FD00:2::5/128", "fd00:0002::5/128", "fd00:2:0::5/128", "fd00:2:0:0:0:0:0:5/128"} {
		key := "braid/v1/ips/east/" + name
		t.Run(name, func(t *testing.T) {
			got, err := clustermesh.DecodeIPEntry(&owner, key, mustJSON(t, e))
			if err == nil {
				knownBug(t, "DecodeIPEntry accepts %q for the entry stored at %q", key, got.Key())
			}
			wantRejected(t, err, key, "key name")
		})
	}
}

// TestDecodeSyncMarkerRejectsNull: decodeStrict promises "exactly one JSON
// object" but json.Decoder.Decode accepts null and leaves the target zero,
// so a sync marker of null reads as {"entries":0}.
func TestDecodeSyncMarkerRejectsNull(t *testing.T) {
	owner := eastConfig()
	key := clustermesh.SyncedKey("east", clustermesh.KindNodes)
	kind, m, err := clustermesh.DecodeSyncMarker(&owner, key, []byte("null"))
	if err == nil {
		knownBug(t, "DecodeSyncMarker(%q, null) = %q, %+v, nil", key, kind, m)
	}
	wantRejected(t, err, key, "")
}

// TestDecodeNodeRejectsControlCharacters: validName's message says names
// must not contain control characters but it only checks \t, \n and NUL.
func TestDecodeNodeRejectsControlCharacters(t *testing.T) {
	owner := eastConfig()
	for _, name := range []string{"n\r1", "n\x1b[31m", "n\x7f", "n\u0085"} {
		n := clustermesh.Node{Name: name, Cluster: "east", IPs: addrs("10.0.0.1")}
		t.Run(name, func(t *testing.T) {
			_, err := clustermesh.DecodeNode(&owner, n.Key(), mustJSON(t, n))
			if err == nil {
				knownBug(t, "DecodeNode accepts node name %q", name)
			}
			wantRejected(t, err, n.Key(), "node name")
		})
	}
}

// TestDecodeNodeRejectsNonCanonicalWireGuardKey: base64.StdEncoding ignores
// \r and \n and accepts non-zero padding bits, so the same 32-byte key has
// many accepted spellings, some with line breaks.
func TestDecodeNodeRejectsNonCanonicalWireGuardKey(t *testing.T) {
	owner := eastConfig()
	for name, k := range map[string]string{
		"line break":  wgKey[:10] + "\r\n" + wgKey[10:],
		"padding bit": wgKey[:42] + "Z=", // wgKey ends "Y=": same 32 bytes
	} {
		n := eastNode()
		n.WireGuardKey = k
		t.Run(name, func(t *testing.T) {
			_, err := clustermesh.DecodeNode(&owner, n.Key(), mustJSON(t, n))
			if err == nil {
				knownBug(t, "DecodeNode accepts wireguardKey %q", k)
			}
			wantRejected(t, err, n.Key(), "wireguardKey")
		})
	}
}
