package clustermesh

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Root is the prefix of every key Braid writes; the version segment changes
// when the schema does.
const Root = "braid/v1/"

// Kind is a kind of record a cluster publishes.
type Kind string

// The published kinds. Each lives under Root + kind + "/" + cluster + "/".
const (
	KindNodes      Kind = "nodes"
	KindIdentities Kind = "identities"
	KindIPs        Kind = "ips"
	KindServices   Kind = "services"
)

// Kinds lists every published kind, in publish order. A cluster publishes
// its services as KindServices, KindServicesV2 (chunk.go) or both; a
// consumer needs the sync marker of one of them (see SyncedKinds).
var Kinds = []Kind{KindNodes, KindIdentities, KindIPs, KindServices, KindServicesV2}

// RequiredKinds are the kinds whose sync markers every publisher writes.
var RequiredKinds = []Kind{KindNodes, KindIdentities, KindIPs}

// ServiceKinds are the two layouts of services; a publisher writes at
// least one of them.
var ServiceKinds = []Kind{KindServices, KindServicesV2}

// SyncedKinds reports whether a cluster is fully synced, given which kinds
// have a sync marker (marked) and were listed (listed): every required
// kind, at least one service layout, and every kind with a marker listed.
func SyncedKinds(marked, listed map[Kind]bool) bool {
	for _, k := range RequiredKinds {
		if !marked[k] || !listed[k] {
			return false
		}
	}
	any := false
	for _, k := range ServiceKinds {
		if marked[k] && !listed[k] {
			return false
		}
		any = any || marked[k]
	}
	return any
}

// ClustersPrefix is where cluster configs live, one key per cluster.
const ClustersPrefix = Root + "clusters/"

// syncedSegment holds the per-kind sync markers.
const syncedSegment = "synced"

// ClusterKey is where cluster name's config is stored.
func ClusterKey(name ClusterName) string { return ClustersPrefix + string(name) }

// KindPrefix is the prefix under which cluster publishes records of kind.
func KindPrefix(kind Kind, cluster ClusterName) string {
	return Root + string(kind) + "/" + string(cluster) + "/"
}

// SyncedPrefix is where cluster writes its per-kind sync markers.
func SyncedPrefix(cluster ClusterName) string {
	return Root + syncedSegment + "/" + string(cluster) + "/"
}

// SyncedKey is the marker cluster writes once kind is fully published.
func SyncedKey(cluster ClusterName, kind Kind) string { return SyncedPrefix(cluster) + string(kind) }

// OwnedPrefixes lists the key prefixes cluster may write (besides its
// ClusterKey). Each ends in "/", so cluster "a" never owns "ab"'s keys.
func OwnedPrefixes(cluster ClusterName) []string {
	out := make([]string, 0, len(Kinds)+1)
	for _, k := range Kinds {
		out = append(out, KindPrefix(k, cluster))
	}
	return append(out, SyncedPrefix(cluster))
}

// Record is a record one cluster publishes under its own prefix: *Node,
// *Identity, *IPEntry and *Service. Key is where it is stored.
type Record interface {
	Key() string
}

// Key returns where the node is stored.
func (n *Node) Key() string { return KindPrefix(KindNodes, n.Cluster) + n.Name }

// Key returns where the identity is stored.
func (i *Identity) Key() string {
	return KindPrefix(KindIdentities, i.Cluster) + strconv.FormatUint(uint64(i.ID), 10)
}

// Key returns where the IP entry is stored. The prefix keeps its slash.
func (e *IPEntry) Key() string { return KindPrefix(KindIPs, e.Cluster) + e.Prefix.String() }

// Key returns where the service is stored.
func (s *Service) Key() string {
	return KindPrefix(KindServices, s.Cluster) + s.Namespace + "/" + s.Name
}

// Key returns where the cluster config is stored.
func (c *ClusterConfig) Key() string { return ClusterKey(c.Name) }

// ParsedKey is a key split into its schema parts.
type ParsedKey struct {
	// Kind is empty for cluster config keys and sync markers.
	Kind    Kind
	Cluster ClusterName
	// Name is the rest of the key after the cluster segment: node name,
	// identity number, prefix, "namespace/name", or the kind a sync marker
	// is for.
	Name string
	// Config, Grant and Synced mark cluster config keys, grants and sync
	// markers.
	Config, Grant, Synced bool
}

// ParseKey splits key by the schema. It does not validate Name beyond being
// non-empty.
func ParseKey(key string) (ParsedKey, error) {
	rest, ok := strings.CutPrefix(key, Root)
	if !ok {
		return ParsedKey{}, fmt.Errorf("key %q: not under %s", key, Root)
	}
	seg, rest, _ := strings.Cut(rest, "/")
	if seg == "clusters" || seg == "grants" {
		name := ClusterName(rest)
		if err := name.Validate(); err != nil {
			return ParsedKey{}, fmt.Errorf("key %q: %w", key, err)
		}
		return ParsedKey{Cluster: name, Config: seg == "clusters", Grant: seg == "grants"}, nil
	}
	cluster, name, ok := strings.Cut(rest, "/")
	if !ok || name == "" {
		return ParsedKey{}, fmt.Errorf("key %q: want %s<kind>/<cluster>/<name>", key, Root)
	}
	cn := ClusterName(cluster)
	if err := cn.Validate(); err != nil {
		return ParsedKey{}, fmt.Errorf("key %q: %w", key, err)
	}
	if seg == syncedSegment {
		if !isKind(Kind(name)) {
			return ParsedKey{}, fmt.Errorf("key %q: unknown kind %q", key, name)
		}
		return ParsedKey{Cluster: cn, Name: name, Synced: true}, nil
	}
	if !isKind(Kind(seg)) {
		return ParsedKey{}, fmt.Errorf("key %q: unknown kind %q", key, seg)
	}
	return ParsedKey{Kind: Kind(seg), Cluster: cn, Name: name}, nil
}

func isKind(k Kind) bool {
	for _, x := range Kinds {
		if x == k {
			return true
		}
	}
	return false
}

// parseIPKeyName turns the name part of an IP key back into a prefix.
func parseIPKeyName(name string) (netip.Prefix, error) { return netip.ParsePrefix(name) }
