package clustermesh

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"regexp"
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
		{Cluster: "east", Namespace: "default", Name: "db", Global: true, Shared: true, Affinity: AffinityNone, Headless: true,
			Ports: []ServicePort{{Name: "pg", Port: 5432, Protocol: TCP}},
			Backends: []Backend{
				{IP: netip.MustParseAddr("10.2.0.7"), Ports: []BackendPort{{Name: "pg", Port: 5432}}, Node: "n1", Zone: "za", Hostname: "db-0", Ready: true, Serving: true},
			},
			ExportedAt: time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC),
			Export:     &ExportSpec{SessionAffinity: "None", IPFamilies: []string{"IPv4"}, Labels: map[string]string{"tier": "db"}},
			Import: &ImportSpec{IPs: []netip.Addr{netip.MustParseAddr("172.21.128.7")}, Ports: []ServicePort{{Name: "pg", Port: 5432, Protocol: TCP}},
				Clusters: map[string][]ClusterName{"pg": {"east"}}}},
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

// FuzzNodeCanonical checks decodeNodeCanonical against the strict decoder.
func FuzzNodeCanonical(f *testing.F) {
	for _, s := range []string{
		`{"name":"n1","cluster":"east","ips":["192.168.2.1","fd00::1"],"podCIDRs":["10.2.1.0/24","fd00:2::/64"],"zone":"za","region":"r1","wireguardKey":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","bootID":"b"}`,
		`{"name":"n1","cluster":"west","ips":null}`,
		`{"name":"n1","cluster":"east","ips":[],"podCIDRs":[]}`,
		`{"name":"n1","cluster":"east","ips":["192.168.2.01"]}`,
		`{"name":"n1","cluster":"east","ips":["192.168.2.1"],"podCIDRs":["10.2.1.0/033"]}`,
		`{"name":"n1","cluster":"east","ips":["192.168.2.1"],"x":1}`,
		`{"Name":"n1","cluster":"east","ips":["192.168.2.1"]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, value []byte) {
		var fast Node
		if !decodeNodeCanonical(value, &fast, "east") {
			return
		}
		var strict Node
		if err := decodeStrict(value, &strict); err != nil {
			t.Fatalf("fast path accepted %q, the strict decoder rejects it: %v", value, err)
		}
		if !reflect.DeepEqual(fast, strict) {
			t.Fatalf("fast path decoded %q as %+v, the strict decoder as %+v", value, fast, strict)
		}
	})
}

// FuzzIdentityCanonical checks decodeIdentityCanonical against the strict
// decoder.
func FuzzIdentityCanonical(f *testing.F) {
	for _, s := range []string{
		`{"id":131077,"cluster":"east","labels":{"app":"web","io.kubernetes.pod.namespace":"default"}}`,
		`{"id":0,"cluster":"west","labels":null}`,
		`{"id":1,"cluster":"east","labels":{}}`,
		`{"id":1,"cluster":"east","labels":{"b":"1","a":"2"}}`,
		`{"id":1,"cluster":"east","labels":{"a":"1","a":"2"}}`,
		`{"id":1,"cluster":"east","labels":{"":""}}`,
		`{"id":01,"cluster":"east","labels":{}}`,
		`{"id":4294967296,"cluster":"east","labels":{}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, value []byte) {
		var fast Identity
		if !decodeIdentityCanonical(value, &fast, "east") {
			return
		}
		var strict Identity
		if err := decodeStrict(value, &strict); err != nil {
			t.Fatalf("fast path accepted %q, the strict decoder rejects it: %v", value, err)
		}
		if !reflect.DeepEqual(fast, strict) {
			t.Fatalf("fast path decoded %q as %+v, the strict decoder as %+v", value, fast, strict)
		}
	})
}

// TestNodeAndIdentityCanonicalTakePublishedValues checks that published
// nodes and identities take the fast path.
func TestNodeAndIdentityCanonicalTakePublishedValues(t *testing.T) {
	for _, n := range []Node{
		{Name: "n1", Cluster: "east", IPs: []netip.Addr{netip.MustParseAddr("192.168.2.1"), netip.MustParseAddr("fd00::1")},
			PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.1.0/24")}, Zone: "za", Region: "r1",
			WireGuardKey: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", BootID: "boot-1"},
		{Name: "n2", Cluster: "east", IPs: []netip.Addr{netip.MustParseAddr("192.168.2.2")}},
	} {
		b, err := json.Marshal(&n)
		if err != nil {
			t.Fatal(err)
		}
		var got Node
		if !decodeNodeCanonical(b, &got, n.Cluster) || !reflect.DeepEqual(got, n) {
			t.Fatalf("published node %s: fast path gave %+v, want %+v", b, got, n)
		}
	}
	for _, id := range []Identity{
		{ID: 131077, Cluster: "east", Labels: map[string]string{"app": "web", "io.kubernetes.pod.namespace": "default", "a": ""}},
		{ID: 1, Cluster: "east", Labels: map[string]string{}},
	} {
		b, err := json.Marshal(&id)
		if err != nil {
			t.Fatal(err)
		}
		var got Identity
		if !decodeIdentityCanonical(b, &got, id.Cluster) || !reflect.DeepEqual(got, id) {
			t.Fatalf("published identity %s: fast path gave %+v, want %+v", b, got, id)
		}
	}
}

// TestIsDNSLabelMatchesTheRegexp checks the loop that replaced the
// regular expression cluster names were checked with.
func TestIsDNSLabelMatchesTheRegexp(t *testing.T) {
	re := regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)
	for _, s := range []string{"", "a", "-", "a-", "-a", "a-b", "a--b", "A", "east", "cluster-250", "0", "a.b", "a_b", "a\n", "é", "a b", "abc-"} {
		if got, want := isDNSLabel(s), re.MatchString(s); got != want {
			t.Errorf("isDNSLabel(%q) = %v, the regexp says %v", s, got, want)
		}
	}
}
