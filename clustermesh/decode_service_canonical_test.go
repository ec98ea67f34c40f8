package clustermesh

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"testing"
	"time"
)

// FuzzServiceCanonical checks the fast path of DecodeServiceOnNodes
// against the strict JSON decoder: whatever decodeServiceCanonical
// accepts, decodeStrict accepts too and decodes to the same service.
func FuzzServiceCanonical(f *testing.F) {
	for _, s := range []string{
		`{"cluster":"east","namespace":"default","name":"web","global":true,"shared":true,"affinity":"none","ports":[{"name":"http","port":80,"protocol":"TCP"}],"backends":[{"ip":"10.2.0.5","ports":[{"name":"http","port":8080}],"node":"n1","zone":"za","ready":true,"serving":true}]}`,
		`{"cluster":"east","namespace":"default","name":"web","global":true,"shared":false,"affinity":"local","topology":"zone","headless":true,"clusterIPs":["172.21.0.10","fd00::a"],"ports":[{"port":53,"protocol":"UDP"},{"name":"x","port":65535,"protocol":"SCTP"}],"backends":[{"ip":"fd00:2::5","ports":[],"ready":false,"serving":true,"terminating":true},{"ip":"10.2.0.6","ports":null,"ready":true,"serving":false}],"exportedAt":"2026-12-03T10:00:00.123456789Z"}`,
		`{"cluster":"east","namespace":"default","name":"web","global":false,"shared":false,"affinity":"none","clusterIPs":[],"ports":null,"backends":null}`,
		`{"cluster":"east","namespace":"default","name":"web","global":true,"shared":true,"affinity":"none","ports":[],"backends":[]}`,
		`{"cluster":"east","namespace":"default","name":"web","global":true,"shared":true,"affinity":"none","ports":[{"port":65536,"protocol":"TCP"}]}`,
		`{"cluster":"east","namespace":"default","name":"web","global":true,"shared":true,"affinity":"none","ports":[{"port":080,"protocol":"TCP"}]}`,
		`{"cluster":"east","namespace":"default","name":"web","global":true,"shared":true,"affinity":"none","ports":[],"backends":[{"ip":"10.2.0.05","ports":[],"ready":true,"serving":true}]}`,
		`{"cluster":"east","namespace":"default","name":"web","global":true,"shared":true,"affinity":"none","ports":[],"backends":[{"ip":"10.2.0.256","ports":[],"ready":true,"serving":true}]}`,
		`{"cluster":"east","namespace":"default","name":"web","global":true,"shared":true,"affinity":"none","ports":[],"exportedAt":"not a time"}`,
		`{"cluster":"east","namespace":"def\u0061ult","name":"web","global":true,"shared":true,"affinity":"none","ports":[]}`,
		`{"cluster":"east","namespace":"default","name":"web","global":true,"shared":true,"affinity":"none","ports":[]} `,
		`{"cluster":"east","namespace":"default","name":"web","global":true,"shared":true,"affinity":"none","ports":[],"x":1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, value []byte) {
		var fast Service
		if !decodeServiceCanonical(value, &fast, "east") {
			return
		}
		var strict Service
		if err := decodeStrict(value, &strict); err != nil {
			t.Fatalf("fast path accepted %q, the strict decoder rejects it: %v", value, err)
		}
		if !reflect.DeepEqual(fast, strict) {
			t.Fatalf("fast path decoded %q as %+v, the strict decoder as %+v", value, fast, strict)
		}
	})
}

// TestServiceCanonicalTakesPublishedValues checks that what a publisher
// writes (json.Marshal of a Service) takes the fast path, so a cold start
// does not silently fall back to the slow decoder.
func TestServiceCanonicalTakesPublishedValues(t *testing.T) {
	for _, s := range []Service{
		{Cluster: "east", Namespace: "default", Name: "web", Global: true, Shared: true, Affinity: AffinityNone,
			Ports: []ServicePort{{Name: "http", Port: 80, Protocol: TCP}},
			Backends: []Backend{
				{IP: netip.MustParseAddr("10.2.0.5"), Ports: []BackendPort{{Name: "http", Port: 8080}}, Node: "n1", Zone: "za", Ready: true, Serving: true},
				{IP: netip.MustParseAddr("10.2.0.6"), Ports: []BackendPort{{Name: "http", Port: 8081}}, Node: "n2", Zone: "za", Serving: true, Terminating: true},
			}},
		{Cluster: "cluster-with-a-long-name", Namespace: "ns", Name: "dns", Global: true, Affinity: AffinityLocal, Topology: TopologyZone, Headless: true,
			ClusterIPs: []netip.Addr{netip.MustParseAddr("172.21.0.10"), netip.MustParseAddr("fd00::a")},
			Ports:      []ServicePort{{Port: 53, Protocol: UDP}, {Name: "tcp", Port: 53, Protocol: TCP}},
			ExportedAt: time.Date(2026, 12, 3, 10, 0, 0, 123, time.UTC)},
		{Cluster: "east", Namespace: "default", Name: "empty", Affinity: AffinityRemote},
	} {
		b, err := json.Marshal(&s)
		if err != nil {
			t.Fatal(err)
		}
		var got Service
		if !decodeServiceCanonical(b, &got, s.Cluster) {
			t.Fatalf("published value %s does not take the fast path", b)
		}
		var strict Service
		if err := decodeStrict(b, &strict); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, strict) {
			t.Fatalf("fast path decoded %s as %+v, the strict decoder as %+v", b, got, strict)
		}
	}
}

// BenchmarkDecodeService decodes a published service of 100 backends with
// DecodeService (fast path and validation) beside encoding/json's strict
// decoding alone.
func BenchmarkDecodeService(b *testing.B) {
	owner := ClusterConfig{Name: "east", ID: 2, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16")}}
	s := Service{Cluster: "east", Namespace: "default", Name: "web", Global: true, Shared: true, Affinity: AffinityNone,
		Ports: []ServicePort{{Name: "http", Port: 80, Protocol: TCP}}}
	for i := range 100 {
		s.Backends = append(s.Backends, Backend{IP: netip.AddrFrom4([4]byte{10, 2, byte(i), 1}), Ports: []BackendPort{{Name: "http", Port: 8080}},
			Node: "east-node-" + string(rune('a'+i%26)) + string(rune('a'+i/26)), Zone: "zone-" + string(rune('a'+i%3)), Ready: true, Serving: true})
	}
	value, err := json.Marshal(&s)
	if err != nil {
		b.Fatal(err)
	}
	key := s.Key()
	b.Run("DecodeService", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := DecodeService(&owner, key, value); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("json-strict-only", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var got Service
			if err := decodeStrict(value, &got); err != nil {
				b.Fatal(err)
			}
		}
	})
}
