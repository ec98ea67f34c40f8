package clustermesh_test

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/braidmesh/braid/clustermesh"
)

// The fixtures describe cluster "east" (ID 2) and its records. Each function
// returns a fresh value, so a test may mutate what it gets.

func eastConfig() clustermesh.ClusterConfig {
	return clustermesh.ClusterConfig{
		Name:         "east",
		ID:           2,
		PodCIDRs:     prefixes("10.2.0.0/16", "fd00:2::/48"),
		ServiceCIDRs: prefixes("10.102.0.0/16", "fd00:102::/108"),
		Capabilities: clustermesh.Capabilities{DefaultDeny: true, IPv6: true},
	}
}

// eastIdentity is an identity in east's range: (2<<16)+5.
const eastIdentity clustermesh.NumericIdentity = 2<<clustermesh.IdentityClusterShift + 5

// wgKey is a well-formed WireGuard public key.
var wgKey = base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))

func eastNode() clustermesh.Node {
	return clustermesh.Node{
		Name:         "node-1",
		Cluster:      "east",
		IPs:          addrs("192.168.10.1", "fd00:ffff::1"),
		PodCIDRs:     prefixes("10.2.1.0/24", "fd00:2:0:1::/64"),
		Zone:         "eu-west-1a",
		Region:       "eu-west-1",
		WireGuardKey: wgKey,
		BootID:       "5f0c3a1e-7b2d-4c8e-9f10-0a1b2c3d4e5f",
	}
}

func eastIdentityRecord() clustermesh.Identity {
	return clustermesh.Identity{
		ID:      eastIdentity,
		Cluster: "east",
		Labels:  map[string]string{"k8s:app": "web", "k8s:io.kubernetes.pod.namespace": "default"},
	}
}

func eastIPEntry() clustermesh.IPEntry {
	return clustermesh.IPEntry{
		Prefix:   netip.MustParsePrefix("10.2.1.7/32"),
		Cluster:  "east",
		Identity: eastIdentity,
		HostIP:   netip.MustParseAddr("192.168.10.1"),
	}
}

func eastService() clustermesh.Service {
	return clustermesh.Service{
		Cluster:   "east",
		Namespace: "default",
		Name:      "web",
		Global:    true,
		Shared:    true,
		Affinity:  clustermesh.AffinityLocal,
		Ports: []clustermesh.ServicePort{
			{Name: "http", Port: 80, Protocol: clustermesh.TCP},
			{Name: "dns", Port: 53, Protocol: clustermesh.UDP},
		},
		Backends: []clustermesh.Backend{
			{
				IP:      netip.MustParseAddr("10.2.1.7"),
				Ports:   []clustermesh.BackendPort{{Name: "http", Port: 8080}, {Name: "dns", Port: 5353}},
				Node:    "node-1",
				Zone:    "eu-west-1a",
				Ready:   true,
				Serving: true,
			},
			{
				IP:          netip.MustParseAddr("fd00:2:0:1::7"),
				Ports:       []clustermesh.BackendPort{{Name: "http", Port: 8080}},
				Node:        "node-1",
				Serving:     true,
				Terminating: true,
			},
		},
	}
}

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

// mustJSON marshals v or fails the test.
func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("marshal %T: %v", v, err)
	}
	return b
}

// oversized returns valid JSON for v padded with whitespace past the
// decoders' 1 MiB limit, so only the size check can reject it.
func oversized(t testing.TB, v any) []byte {
	t.Helper()
	b := mustJSON(t, v)
	return append(b, strings.Repeat(" ", 1<<20+1-len(b))...)
}

// withField adds "field": raw to the JSON object of v.
func withField(t testing.TB, v any, field, raw string) []byte {
	t.Helper()
	b := mustJSON(t, v)
	return append(b[:len(b)-1], []byte(`,"`+field+`":`+raw+`}`)...)
}

// cmpOpts compares decoded records: netip values by ==, and an empty slice
// or map equal to nil (omitempty drops empty slices when re-encoding).
var cmpOpts = cmp.Options{
	cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{}),
	cmpopts.EquateEmpty(),
}

// wantRejected checks that err is a *clustermesh.ValidationError for key
// matching clustermesh.ErrInvalid, and that its message names the key and
// contains reason.
func wantRejected(t testing.TB, err error, key, reason string) {
	t.Helper()
	if err == nil {
		t.Fatalf("decode %q: got nil error, want rejection containing %q", key, reason)
	}
	if !errors.Is(err, clustermesh.ErrInvalid) {
		t.Errorf("decode %q: errors.Is(%v, ErrInvalid) = false", key, err)
	}
	var ve *clustermesh.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("decode %q: error %T is not a *ValidationError: %v", key, err, err)
	}
	if ve.Key != key {
		t.Errorf("ValidationError.Key = %q, want %q", ve.Key, key)
	}
	msg := err.Error()
	if !strings.Contains(msg, key) && !strings.Contains(msg, strconv.Quote(key)) {
		t.Errorf("error %q does not name key %q", msg, key)
	}
	if !strings.Contains(msg, reason) {
		t.Errorf("error %q does not contain reason %q", msg, reason)
	}
}

// eastImportIP is a ClusterSetIP in east's service CIDRs.
var eastImportIP = netip.MustParseAddr("10.102.128.7")
