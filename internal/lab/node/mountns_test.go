package node

import (
	"net/netip"
	"testing"
)

func TestResolvConf(t *testing.T) {
	got := resolvConf(netip.MustParseAddr("10.250.0.2"), "mcs")
	want := "nameserver 10.250.0.2\nsearch mcs.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
	if got != want {
		t.Fatalf("resolvConf = %q, want %q", got, want)
	}
}
