package meshsim

import (
	"cmp"
	"encoding/binary"
	"hash/fnv"
	"slices"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/remote"
)

// event is one line a consumer process writes to stdout.
type event struct {
	// E is what happened: evSynced, evService, evJoined, evGone, evRaw,
	// evCounts, evFinal, evReady (relay processes) or evError.
	E string `json:"e"`
	// C is the consumer's index in its process.
	C int `json:"c,omitempty"`
	// T is when the consumer's Watcher applied it (Change.Time), or when
	// the raw watch delivered it, in Unix nanoseconds.
	T       int64                   `json:"t,omitempty"`
	Cluster clustermesh.ClusterName `json:"cl,omitempty"`
	Service string                  `json:"s,omitempty"`
	Digest  uint64                  `json:"d,omitempty"`
	Raw     string                  `json:"v,omitempty"`
	Counts  *Counts                 `json:"n,omitempty"`
	// ByCluster is Counts per cluster, with evCounts: where a consumer's
	// view differs from what is published, the clusters it differs in.
	ByCluster map[clustermesh.ClusterName]Counts `json:"by,omitempty"`
	// Final figures of the process.
	CPUNanos int64  `json:"cpu,omitempty"`
	PeakRSS  int64  `json:"rss,omitempty"`
	Msg      string `json:"msg,omitempty"`
}

const (
	evSynced  = "synced" // the consumer synced every cluster it was told to expect
	evService = "svc"    // a service's backends changed
	evJoined  = "joined" // a cluster synced after the consumer's own initial sync
	evGone    = "gone"   // a cluster left
	evRaw     = "raw"    // the raw baseline's watch delivered a value
	evCounts  = "counts" // what the consumer's snapshot holds, on request
	evFinal   = "final"  // the process's CPU and peak RSS, at exit
	evReady   = "ready"  // a relay serves its agents; Msg is its etcd's metrics URL
	evError   = "error"  // the consumer failed
)

// Counts is what a snapshot holds, summed over its clusters.
type Counts struct {
	Clusters   int `json:"clusters"`
	Nodes      int `json:"nodes"`
	Identities int `json:"identities"`
	IPs        int `json:"ips"`
	Services   int `json:"services"`
	Backends   int `json:"backends"`
}

// countSnapshot counts what snap holds, in all and per cluster.
func countSnapshot(snap *remote.Snapshot) (Counts, map[clustermesh.ClusterName]Counts) {
	var n Counts
	by := make(map[clustermesh.ClusterName]Counts, len(snap.Clusters))
	for name, cs := range snap.Clusters {
		c := Counts{Clusters: 1, Nodes: len(cs.Nodes), Identities: len(cs.Identities), IPs: len(cs.IPs), Services: len(cs.Services)}
		for _, s := range cs.Services {
			c.Backends += len(s.Backends)
		}
		by[name] = c
		n.add(c)
	}
	return n, by
}

// digest identifies a set of backends whatever their order (the chunked
// layout may reorder them): their IPs, ports and conditions.
func digest(backends []clustermesh.Backend) uint64 {
	bs := slices.Clone(backends)
	slices.SortFunc(bs, func(a, b clustermesh.Backend) int { return a.IP.Compare(b.IP) })
	h := fnv.New64a()
	var buf []byte
	for _, b := range bs {
		buf = b.IP.AppendTo(buf[:0])
		flags := byte(0)
		for i, f := range []bool{b.Ready, b.Serving, b.Terminating} {
			if f {
				flags |= 1 << i
			}
		}
		buf = append(buf, flags)
		ports := slices.Clone(b.Ports)
		slices.SortFunc(ports, func(x, y clustermesh.BackendPort) int { return cmp.Compare(x.Name, y.Name) })
		for _, p := range ports {
			buf = append(buf, p.Name...)
			buf = binary.BigEndian.AppendUint16(buf, p.Port)
		}
		h.Write(buf)
	}
	return h.Sum64()
}
