package remote

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/braidmesh/braid/clustermesh"
)

// TestIPTableKeepsNamedPorts: the compact IP table gives back an entry's
// named ports (policies resolve them), and a change of named ports alone
// is a change.
func TestIPTableKeepsNamedPorts(t *testing.T) {
	tab := newIPTable("east")
	e := clustermesh.IPEntry{Prefix: netip.MustParsePrefix("10.1.0.5/32"), Cluster: "east", Identity: 1<<16 | 3, HostIP: netip.MustParseAddr("192.0.2.1"),
		NamedPorts: []clustermesh.NamedPort{{Name: "dns", Port: 53, Protocol: clustermesh.UDP}, {Name: "http-alt-backend", Port: 65535, Protocol: clustermesh.SCTP}}}
	if !tab.put("k", 0, e) {
		t.Fatal("first put: no change")
	}
	if got := tab.unpack(tab.m["k"]); !reflect.DeepEqual(got, e) {
		t.Fatalf("unpacked %+v, want %+v", got, e)
	}
	if tab.put("k", 0, e) {
		t.Error("the same entry again counts as a change")
	}
	e2 := e
	e2.NamedPorts = []clustermesh.NamedPort{{Name: "dns", Port: 5353, Protocol: clustermesh.UDP}}
	if !tab.put("k", 0, e2) {
		t.Error("a named port change is not a change")
	}
	e3 := e2
	e3.NamedPorts = nil
	if !tab.put("k", 0, e3) {
		t.Error("dropping the named ports is not a change")
	}
	if got := tab.unpack(tab.m["k"]); !reflect.DeepEqual(got, e3) {
		t.Fatalf("unpacked %+v, want %+v", got, e3)
	}
}
