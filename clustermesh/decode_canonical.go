package clustermesh

import (
	"bytes"
	"math"
)

// decodeIPEntryCanonical parses value when it is written exactly as
// json.Marshal writes an IPEntry, which is how publishers write them:
//
//	{"prefix":"P","cluster":"C","identity":N,"hostIP":"H"}
//
// with no white space, each string made of printable ASCII other than `"`
// and `\`, and N a decimal without leading zeros that fits a uint32. It
// reports false for anything else, which then goes through decodeStrict.
// A cold start decodes hundreds of thousands of IP entries; this path
// skips encoding/json's reflection and allocations for them. Whatever it
// accepts, decodeStrict decodes to the same entry (FuzzIPEntryCanonical
// checks it); both paths are followed by the same validation.
//
// owner is the cluster the key is under: a value naming it shares its
// string, and IPv4 addresses are parsed without allocating.
func decodeIPEntryCanonical(value []byte, e *IPEntry, owner ClusterName) bool {
	if len(value) > maxValueSize {
		return false
	}
	rest, prefix, ok := canonicalString(value, `{"prefix":"`)
	if !ok {
		return false
	}
	rest, cluster, ok := canonicalString(rest, `,"cluster":"`)
	if !ok {
		return false
	}
	rest, ok = bytes.CutPrefix(rest, []byte(`,"identity":`))
	if !ok {
		return false
	}
	rest, id, ok := canonicalUint32(rest)
	if !ok {
		return false
	}
	rest, hostIP, ok := canonicalString(rest, `,"hostIP":"`)
	if !ok || len(rest) != 1 || rest[0] != '}' {
		return false
	}
	var out IPEntry
	var ok4 bool
	if out.Prefix, ok4 = canonicalPrefix4(prefix); !ok4 {
		// The method encoding/json calls for this field.
		if out.Prefix.UnmarshalText(prefix) != nil {
			return false // decodeStrict words the error
		}
	}
	if out.HostIP, ok4 = canonicalAddr4(hostIP); !ok4 {
		if out.HostIP.UnmarshalText(hostIP) != nil {
			return false
		}
	}
	out.Cluster = owner
	if string(cluster) != string(owner) {
		out.Cluster = ClusterName(cluster)
	}
	out.Identity = NumericIdentity(id)
	*e = out
	return true
}

// canonicalString cuts lead (ending in the string's opening quote) from b
// and then a string of printable ASCII other than `"` and `\` up to its
// closing quote; it returns what follows the quote and the string.
func canonicalString(b []byte, lead string) (rest, s []byte, ok bool) {
	b, ok = bytes.CutPrefix(b, []byte(lead))
	if !ok {
		return nil, nil, false
	}
	for i, c := range b {
		switch {
		case c == '"':
			return b[i+1:], b[:i], true
		case c < 0x20 || c > 0x7e || c == '\\':
			return nil, nil, false
		}
	}
	return nil, nil, false
}

// canonicalUint32 reads a decimal without sign, exponent, fraction or
// leading zeros that fits a uint32.
func canonicalUint32(b []byte) (rest []byte, n uint32, ok bool) {
	i := 0
	var v uint64
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		v = v*10 + uint64(b[i]-'0')
		i++
		if v > math.MaxUint32 {
			return nil, 0, false
		}
	}
	if i == 0 || i > 1 && b[0] == '0' {
		return nil, 0, false
	}
	return b[i:], uint32(v), true
}
