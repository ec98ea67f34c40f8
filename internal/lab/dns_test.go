package lab

import (
	"net/netip"
	"strings"
	"testing"
)

func TestHalves(t *testing.T) {
	lo, hi := halves(netip.MustParsePrefix("172.17.0.0/16"))
	if lo != netip.MustParsePrefix("172.17.0.0/17") || hi != netip.MustParsePrefix("172.17.128.0/17") {
		t.Fatalf("halves = %s, %s", lo, hi)
	}
	lo, hi = halves(netip.MustParsePrefix("10.0.0.0/7"))
	if lo != netip.MustParsePrefix("10.0.0.0/8") || hi != netip.MustParsePrefix("11.0.0.0/8") {
		t.Fatalf("halves = %s, %s", lo, hi)
	}
}

func TestCorefileServesClusterSet(t *testing.T) {
	c := corefile(netip.MustParseAddr("10.250.0.2"), "/k/config")
	for _, want := range []string{"bind 10.250.0.2", "kubernetes cluster.local clusterset.local", "multicluster clusterset.local", "kubeconfig /k/config", "ready 10.250.0.2:8181"} {
		if !strings.Contains(c, want) {
			t.Errorf("Corefile lacks %q:\n%s", want, c)
		}
	}
}
