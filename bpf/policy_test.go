package bpf

import (
	"testing"
)

func TestPolicyAllowKeysCoverRangeExactly(t *testing.T) {
	for _, c := range []struct {
		lo, hi uint16
		blocks int
	}{
		{80, 80, 1},
		{8080, 8081, 1},
		{32000, 32768, 3}, // 32000/8 bits, 32256/7 bits, 32768/16 bits
		{1, 65535, 16},
		{1000, 1999, 7},
	} {
		keys := PolicyAllowKeys(PolicyIngress, 7, 9, 6, c.lo, c.hi)
		covered := map[uint32]int{}
		for _, k := range keys {
			if k.LocalIdentity != 7 || k.PeerIdentity != 9 || k.Proto != 6 || k.Dir != PolicyIngress {
				t.Fatalf("%d-%d: key %+v lost a field", c.lo, c.hi, k)
			}
			bits := int(k.Prefixlen) - policyPrefixPortBase
			start := uint32(Port(k.Port))
			size := uint32(1) << (16 - bits)
			if start%size != 0 {
				t.Errorf("%d-%d: block %d/%d is not aligned", c.lo, c.hi, start, bits)
			}
			for p := start; p < start+size; p++ {
				covered[p]++
			}
		}
		for p := uint32(0); p <= 0xffff; p++ {
			want := 0
			if p >= uint32(c.lo) && p <= uint32(c.hi) {
				want = 1
			}
			if covered[p] != want {
				t.Fatalf("%d-%d: port %d covered %d times, want %d", c.lo, c.hi, p, covered[p], want)
			}
		}
		if len(keys) != c.blocks {
			t.Errorf("%d-%d: %d blocks, want %d", c.lo, c.hi, len(keys), c.blocks)
		}
	}
	if k := PolicyAllowKeys(PolicyEgress, 7, 0, 0, 0, 0); len(k) != 1 || k[0].Prefixlen != policyPrefixPeer {
		t.Errorf("every protocol: %+v", k)
	}
	if k := PolicyAllowKeys(PolicyEgress, 7, 0, 17, 0, 0); len(k) != 1 || k[0].Prefixlen != policyPrefixProto {
		t.Errorf("every port: %+v", k)
	}
}
