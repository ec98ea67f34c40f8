package diagnose

import (
	"cmp"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/status"
)

// Severity is how bad a finding is. Errors make `braid diagnose` exit 1.
type Severity string

// Severities, worst first.
const (
	SeverityError   Severity = "error"
	SeverityWarning Severity = "warning"
)

// Finding is one problem: what is wrong, where (the clusters and nodes
// involved, every one named), and how to fix it.
type Finding struct {
	Check    string   `json:"check"`
	Severity Severity `json:"severity"`
	What     string   `json:"what"`
	Where    []string `json:"where"`
	Fix      string   `json:"fix"`
}

// The checks, in the order they are reported.
const (
	CheckBroker       = "broker"         // the join bundle, TLS and etcd authentication
	CheckCertificates = "certificates"   // expiry of the CA and the broker's certificate
	CheckRanges       = "cluster-ranges" // pod/service CIDR overlaps, cluster ID clashes
	CheckValidation   = "validation"     // entries and clusters consumers reject
	CheckAgents       = "agents"         // every node's agent answers
	CheckMTU          = "mtu"            // tunnel MTU against the underlay at both ends
	CheckWireGuard    = "wireguard-port"
	CheckGossip       = "gossip-port"
	CheckClock        = "clock-skew"
	CheckMaps         = "bpf-maps"
	CheckStrict       = "strict-drops"
)

// Checks lists every check with what it verifies, in report order.
var Checks = []struct{ Name, Doc string }{
	{CheckBroker, "the join bundle is valid, the broker answers over TLS and accepts the cluster's credentials"},
	{CheckCertificates, "no certificate of the bundle or the broker has expired or expires within 30 days"},
	{CheckRanges, "no two clusters share a cluster ID or overlapping pod/service CIDRs (grants and configs)"},
	{CheckValidation, "no agent rejects another cluster's entries, config or grant"},
	{CheckAgents, "every node's agent serves its status"},
	{CheckMTU, "WireGuard packets fit the underlay MTU of both nodes of every tunnel"},
	{CheckWireGuard, "every node receives from each WireGuard peer (UDP to the WireGuard port passes)"},
	{CheckGossip, "every node's gossip reaches every other node (UDP and TCP to the gossip port pass)"},
	{CheckClock, "the nodes' clocks agree"},
	{CheckMaps, "no BPF map is nearly full"},
	{CheckStrict, "strict mode dropped no traffic that would have left a node unencrypted"},
}

// Thresholds of the checks.
const (
	// CertExpiryWarning: a certificate expiring sooner is a warning.
	CertExpiryWarning = 30 * 24 * time.Hour
	// ClockSkewWarning and ClockSkewError bound the difference between
	// two nodes' clocks, beyond the uncertainty of the measurement.
	ClockSkewWarning = 500 * time.Millisecond
	ClockSkewError   = 2 * time.Second
	// MapPressureWarning and MapPressureError are fractions of a map's
	// capacity (the agent reports Degraded above 90 %).
	MapPressureWarning = 0.75
	MapPressureError   = 0.9
	// SilenceWithoutKeepalive is how long a WireGuard peer may stay silent
	// when no persistent keepalive is set: WireGuard's reject-after time.
	SilenceWithoutKeepalive = 180 * time.Second
	// sampleSlack covers the agent's sampling interval.
	sampleSlack = 10 * time.Second
)

// Mesh is what diagnose read from the broker.
type Mesh struct {
	Grants []clustermesh.StoredGrant
	// Configs are the cluster configs as each cluster (or an older
	// layout) wrote them.
	Configs []clustermesh.ClusterConfig
	Nodes   []clustermesh.Node
}

// AgentView is one node's agent status as diagnose read it. Sent and
// Received bracket the request on diagnose's clock.
type AgentView struct {
	Cluster        clustermesh.ClusterName
	Node           string
	URL            string
	Status         status.Snapshot
	Sent, Received time.Time
	Err            error
}

func (v *AgentView) name() string { return nodeName(v.Cluster, v.Node) }

func nodeName(c clustermesh.ClusterName, n string) string { return "node " + string(c) + "/" + n }

// Cert is a certificate diagnose checks the expiry of.
type Cert struct {
	What     string // e.g. "broker CA (join bundle)"
	Where    string
	NotAfter time.Time
}

// ranges is one source's claim to an ID and CIDRs.
type ranges struct {
	cluster   clustermesh.ClusterName
	source    string // "grant" or "config"
	id        clustermesh.ClusterID
	pods, svc []netip.Prefix
	rev       int64 // create revision of a grant
}

func (r ranges) label() string {
	return fmt.Sprintf("cluster %s (%s)", r.cluster, r.source)
}

// CheckRangesOf finds clusters sharing an ID or overlapping CIDRs, in the
// grants and in configs that claim more than their grant (or have none: an
// older layout), and configs without a grant.
func CheckRangesOf(m Mesh) []Finding {
	var all []ranges
	granted := map[clustermesh.ClusterName]clustermesh.Grant{}
	for _, g := range m.Grants {
		granted[g.Name] = g.Grant
		all = append(all, ranges{g.Name, "grant", g.ID, g.PodCIDRs, g.ServiceCIDRs, g.CreateRevision})
	}
	var out []Finding
	for _, c := range m.Configs {
		g, ok := granted[c.Name]
		if ok && g.ID == c.ID && slices.Equal(g.PodCIDRs, c.PodCIDRs) && slices.Equal(g.ServiceCIDRs, c.ServiceCIDRs) {
			continue // the same claim as its grant
		}
		src := "config, no grant"
		if ok {
			src = "config, differs from its grant"
		} else {
			out = append(out, Finding{Check: CheckValidation, Severity: SeverityWarning,
				What:  fmt.Sprintf("cluster %s has a config (ID %d, pod CIDRs %v) but no grant from the broker: every consumer ignores it", c.Name, c.ID, c.PodCIDRs),
				Where: []string{"cluster " + string(c.Name)},
				Fix:   fmt.Sprintf("grant it: braid broker add-cluster %s with a free ID and ranges; or, if it left, delete its config key %s as root", c.Name, c.Key())})
		}
		all = append(all, ranges{c.Name, src, c.ID, c.PodCIDRs, c.ServiceCIDRs, math.MaxInt64})
	}
	used := func() []netip.Prefix {
		var ps []netip.Prefix
		for _, r := range all {
			ps = append(append(ps, r.pods...), r.svc...)
		}
		return ps
	}()
	ids := map[clustermesh.ClusterID]bool{}
	for _, r := range all {
		ids[r.id] = true
	}
	seen := map[string]bool{}
	for i, a := range all {
		for _, b := range all[i+1:] {
			if a.cluster == b.cluster {
				continue
			}
			// younger is the one to move: consumers honour the older grant.
			older, younger := a, b
			if b.rev < a.rev {
				older, younger = b, a
			}
			if a.id == b.id {
				key := fmt.Sprintf("id %d %s %s", a.id, min(a.cluster, b.cluster), max(a.cluster, b.cluster))
				if !seen[key] {
					seen[key] = true
					out = append(out, Finding{Check: CheckRanges, Severity: SeverityError,
						What:  fmt.Sprintf("cluster ID %d is held by both %s and %s", a.id, older.label(), younger.label()),
						Where: []string{"cluster " + string(older.cluster), "cluster " + string(younger.cluster)},
						Fix: fmt.Sprintf("cluster IDs must be unique: braid broker remove-cluster %s, then add it again with a free ID (e.g. --cluster-id %d); until then consumers honour the older grant and ignore the other",
							younger.cluster, freeID(ids))})
				}
			}
			for _, ov := range overlaps(a, b) {
				key := fmt.Sprintf("%s %s %s %s", min(a.cluster, b.cluster), max(a.cluster, b.cluster), ov.x, ov.y)
				if seen[key] {
					continue
				}
				seen[key] = true
				move, moveKind := ov.y, ov.yKind
				if younger.cluster == a.cluster {
					move, moveKind = ov.x, ov.xKind
				}
				fix := fmt.Sprintf("give cluster %s a %s CIDR no other cluster uses", younger.cluster, moveKind)
				if free, ok := freePrefix(move, used); ok {
					fix += fmt.Sprintf(" (e.g. %s)", free)
				}
				fix += fmt.Sprintf(": braid broker remove-cluster %s, then braid broker add-cluster %s --%s-cidr ...; until then consumers honour the older grant and reject %s's entries in the overlap",
					younger.cluster, younger.cluster, strings.ReplaceAll(moveKind, " ", "-"), younger.cluster)
				out = append(out, Finding{Check: CheckRanges, Severity: SeverityError,
					What: fmt.Sprintf("%s CIDR %s of %s overlaps %s CIDR %s of %s",
						ov.xKind, ov.x, a.label(), ov.yKind, ov.y, b.label()),
					Where: []string{"cluster " + string(a.cluster), "cluster " + string(b.cluster)},
					Fix:   fix})
			}
		}
	}
	return out
}

type overlap struct {
	x, y         netip.Prefix
	xKind, yKind string
}

func overlaps(a, b ranges) []overlap {
	type set struct {
		kind string
		ps   []netip.Prefix
	}
	var out []overlap
	for _, x := range []set{{"pod", a.pods}, {"service", a.svc}} {
		for _, y := range []set{{"pod", b.pods}, {"service", b.svc}} {
			for _, p := range clustermesh.Overlaps(x.ps, y.ps) {
				out = append(out, overlap{p[0], p[1], x.kind, y.kind})
			}
		}
	}
	return out
}

// freeID returns the lowest cluster ID not in used.
func freeID(used map[clustermesh.ClusterID]bool) clustermesh.ClusterID {
	for id := clustermesh.MinClusterID; id <= clustermesh.MaxClusterID; id++ {
		if !used[id] {
			return id
		}
	}
	return 0
}

// freePrefix suggests an IPv4 prefix of p's size in 10.0.0.0/8 that
// overlaps nothing in used.
func freePrefix(p netip.Prefix, used []netip.Prefix) (netip.Prefix, bool) {
	if !p.Addr().Is4() || p.Bits() < 8 || p.Bits() > 30 {
		return netip.Prefix{}, false
	}
	step := uint32(1) << (32 - p.Bits())
	for a := uint32(10) << 24; a < uint32(11)<<24; a += step {
		cand := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}), p.Bits())
		if !slices.ContainsFunc(used, cand.Overlaps) {
			return cand, true
		}
	}
	return netip.Prefix{}, false
}

// CheckCertificatesOf finds expired and soon expiring certificates.
func CheckCertificatesOf(certs []Cert, now time.Time) []Finding {
	var out []Finding
	for _, c := range certs {
		left := c.NotAfter.Sub(now)
		switch {
		case left <= 0:
			out = append(out, Finding{Check: CheckCertificates, Severity: SeverityError,
				What:  fmt.Sprintf("%s expired %s ago (%s)", c.What, (-left).Round(time.Minute), c.NotAfter.UTC().Format(time.RFC3339)),
				Where: []string{c.Where},
				Fix:   "renew it: restart the broker to reissue its certificate, or re-issue the cluster's bundle with braid broker add-cluster"})
		case left < CertExpiryWarning:
			out = append(out, Finding{Check: CheckCertificates, Severity: SeverityWarning,
				What:  fmt.Sprintf("%s expires in %s (%s)", c.What, left.Round(time.Hour), c.NotAfter.UTC().Format(time.RFC3339)),
				Where: []string{c.Where},
				Fix:   "renew it before then: restart the broker to reissue its certificate, or re-issue the cluster's bundle with braid broker add-cluster"})
		}
	}
	return out
}

// CheckAgentsOf reports agents whose status could not be read.
func CheckAgentsOf(views []AgentView) []Finding {
	var out []Finding
	for _, v := range views {
		if v.Err == nil {
			continue
		}
		out = append(out, Finding{Check: CheckAgents, Severity: SeverityError,
			What:  fmt.Sprintf("cannot read the agent status of %s at %s: %v", v.name(), v.URL, v.Err),
			Where: []string{v.name()},
			Fix:   "check braid-agent runs on the node, with --status-addr on an address diagnose reaches (e.g. the node IP and --agent-port), or pass its URL with --agent-url"})
	}
	return out
}

// CheckValidationOf reports what agents reject: clusters ignored for
// their grant, invalid entries and invalid cluster configs. Findings that
// several agents share are merged, naming each agent.
func CheckValidationOf(views []AgentView) []Finding {
	var out []Finding
	index := map[string]int{}
	add := func(f Finding, node string) {
		key := f.Severity.String() + f.What
		if i, ok := index[key]; ok {
			out[i].Where = append(out[i].Where, node)
			return
		}
		f.Where = append(f.Where, node)
		index[key] = len(out)
		out = append(out, f)
	}
	for _, v := range ok(views) {
		for _, r := range v.Status.Remotes {
			if r.Gone {
				continue
			}
			if r.Ungranted != "" {
				add(Finding{Check: CheckValidation, Severity: SeverityError,
					What:  fmt.Sprintf("cluster %s is ignored: %s", r.Name, r.Ungranted),
					Where: []string{"cluster " + string(r.Name)},
					Fix:   fmt.Sprintf("give cluster %s a grant that conflicts with no other (see %s), or remove it: braid broker remove-cluster %s", r.Name, CheckRanges, r.Name)}, v.name())
			}
			if r.Invalid > 0 {
				reasons := r.Rejected
				if len(reasons) > 3 {
					reasons = reasons[len(reasons)-3:]
				}
				add(Finding{Check: CheckValidation, Severity: SeverityWarning,
					What:  fmt.Sprintf("entries of cluster %s are rejected (latest: %s)", r.Name, strings.Join(reasons, "; ")),
					Where: []string{"cluster " + string(r.Name)},
					Fix:   fmt.Sprintf("cluster %s publishes entries outside its grant: check its operator's log and its pod/service CIDRs against `braid broker` grants; a newer operator may be needed", r.Name)}, v.name())
			}
		}
		if v.Status.InvalidClusterConfigs > 0 {
			add(Finding{Check: CheckValidation, Severity: SeverityWarning,
				What:  fmt.Sprintf("%d cluster configs in the broker are invalid", v.Status.InvalidClusterConfigs),
				Where: nil,
				Fix:   "find them with the agent's log (\"invalid cluster config\") and re-add those clusters with braid broker add-cluster"}, v.name())
		}
	}
	return out
}

func (s Severity) String() string { return string(s) }

// ok returns the views that were read.
func ok(views []AgentView) []AgentView {
	var out []AgentView
	for _, v := range views {
		if v.Err == nil {
			out = append(out, v)
		}
	}
	return out
}

// byName indexes views by "cluster/node".
func byName(views []AgentView) map[string]*AgentView {
	m := map[string]*AgentView{}
	for i := range views {
		if views[i].Err == nil {
			m[string(views[i].Cluster)+"/"+views[i].Node] = &views[i]
		}
	}
	return m
}

// nodeAddrs indexes the mesh's node addresses by "cluster/node".
func nodeAddrs(nodes []clustermesh.Node) map[string]netip.Addr {
	m := map[string]netip.Addr{}
	for _, n := range nodes {
		if len(n.IPs) > 0 {
			m[string(n.Cluster)+"/"+n.Name] = n.IPs[0]
		}
	}
	return m
}

// withAddr names a node with its address when known.
func withAddr(name string, addrs map[string]netip.Addr) string {
	if a, ok := addrs[name]; ok {
		return "node " + name + " (" + a.String() + ")"
	}
	return "node " + name
}

// CheckMTUOf checks each node's tunnel MTU plus WireGuard's overhead
// against its own underlay MTU, the path MTU its kernel learned towards
// each peer, and each peer's underlay MTU.
func CheckMTUOf(views []AgentView) []Finding {
	var out []Finding
	idx := byName(views)
	for _, v := range ok(views) {
		t := v.Status.Tunnel
		if t == nil || t.MTU == 0 {
			continue
		}
		outer := t.MTU + t.Overhead
		if t.UnderlayMTU > 0 && outer > t.UnderlayMTU {
			out = append(out, Finding{Check: CheckMTU, Severity: SeverityError,
				What: fmt.Sprintf("%s: WireGuard device %s has MTU %d; with %d bytes of WireGuard overhead its packets (%d bytes) exceed the MTU %d of its underlay %s",
					v.name(), t.Device, t.MTU, t.Overhead, outer, t.UnderlayMTU, t.UnderlayDevice),
				Where: []string{v.name()},
				Fix:   fmt.Sprintf("start braid-agent with --underlay-mtu %d on every node (the smallest underlay MTU of the mesh)", t.UnderlayMTU)})
		}
		for _, p := range t.Peers {
			if p.PathMTU > 0 && outer > p.PathMTU {
				out = append(out, Finding{Check: CheckMTU, Severity: SeverityError,
					What: fmt.Sprintf("the path from %s to node %s (%s) carries at most %d bytes (the kernel learned it from ICMP), less than the %d bytes of WireGuard packets (device MTU %d + %d overhead)",
						v.name(), p.Name, p.Endpoint, p.PathMTU, outer, t.MTU, t.Overhead),
					Where: []string{v.name(), "node " + p.Name},
					Fix:   fmt.Sprintf("start braid-agent with --underlay-mtu %d on every node (the smallest MTU along the tunnel)", p.PathMTU)})
			}
			pv := idx[p.Name]
			if pv == nil || pv.Status.Tunnel == nil {
				continue
			}
			pt := pv.Status.Tunnel
			if pt.UnderlayMTU > 0 && outer > pt.UnderlayMTU && pt.UnderlayMTU < t.UnderlayMTU {
				out = append(out, Finding{Check: CheckMTU, Severity: SeverityError,
					What: fmt.Sprintf("WireGuard packets from %s (device MTU %d + %d overhead = %d bytes) exceed the underlay MTU %d of %s (%s)",
						v.name(), t.MTU, t.Overhead, outer, pt.UnderlayMTU, pv.name(), pt.UnderlayDevice),
					Where: []string{v.name(), pv.name()},
					Fix:   fmt.Sprintf("start braid-agent with --underlay-mtu %d on every node (the smallest underlay MTU along the tunnel)", pt.UnderlayMTU)})
			}
		}
	}
	return out
}

// CheckWireGuardOf finds WireGuard peers a node has heard nothing from for
// longer than the peer's keepalive allows (the WireGuard port is blocked
// from that peer to this node), and mesh nodes missing as peers.
func CheckWireGuardOf(views []AgentView, nodes []clustermesh.Node) []Finding {
	var out []Finding
	addrs := nodeAddrs(nodes)
	for _, v := range ok(views) {
		t := v.Status.Tunnel
		if t == nil {
			continue
		}
		bound := SilenceWithoutKeepalive
		if t.KeepaliveSeconds > 0 {
			bound = 2*time.Duration(t.KeepaliveSeconds*float64(time.Second)) + sampleSlack
		}
		self := string(v.Cluster) + "/" + v.Node
		peers := map[string]bool{}
		for _, p := range t.Peers {
			peers[p.Name] = true
			silent := time.Duration(p.SilentSeconds * float64(time.Second))
			if silent <= bound {
				continue
			}
			hs := "no handshake ever completed"
			if p.HandshakeAgeSeconds >= 0 {
				hs = fmt.Sprintf("last handshake %s ago", (time.Duration(p.HandshakeAgeSeconds) * time.Second).String())
			}
			from, to := withAddr(p.Name, addrs), withAddr(self, addrs)
			port := t.ListenPort
			out = append(out, Finding{Check: CheckWireGuard, Severity: SeverityError,
				What: fmt.Sprintf("%s has received nothing over WireGuard from %s for %s (%s; peers send a keepalive every %gs): UDP to port %d does not pass from %s to %s",
					to, from, silent.Round(time.Second), hs, t.KeepaliveSeconds, port, p.Name, self),
				Where: []string{from, to},
				Fix: fmt.Sprintf("allow UDP from %s to %s port %d (WireGuard) on %s's firewall (nft list ruleset) and on the path between the nodes (security groups, firewalls)",
					addrOr(addrs, p.Name), addrOr(addrs, self), port, self)})
		}
		for _, n := range nodes {
			name := string(n.Cluster) + "/" + n.Name
			if n.Cluster == v.Cluster || n.WireGuardKey == "" || peers[name] {
				continue
			}
			out = append(out, Finding{Check: CheckWireGuard, Severity: SeverityError,
				What:  fmt.Sprintf("%s has no WireGuard peer for %s, which published a key", v.name(), withAddr(name, addrs)),
				Where: []string{v.name(), "node " + name},
				Fix:   fmt.Sprintf("see the tunnel_peers loop and \"tunnel peers\" problems in %s's agent status (braid status --url %s)", v.name(), v.URL)})
		}
	}
	return out
}

func addrOr(addrs map[string]netip.Addr, name string) string {
	if a, ok := addrs[name]; ok {
		return a.String()
	}
	return name
}

// CheckGossipOf reports nodes an agent's gossip finds suspect, dead or
// never saw.
func CheckGossipOf(views []AgentView, nodes []clustermesh.Node, port int) []Finding {
	var out []Finding
	addrs := nodeAddrs(nodes)
	for _, v := range ok(views) {
		self := string(v.Cluster) + "/" + v.Node
		for _, h := range v.Status.Nodes {
			other := string(h.Cluster) + "/" + h.Node
			if other == self {
				continue
			}
			sev := SeverityError
			switch {
			case h.Unreachable || h.State == "dead":
			case h.State == "suspect" || h.State == "unknown":
				sev = SeverityWarning
			default:
				continue
			}
			seen := "never seen"
			if h.LastSeenSeconds >= 0 {
				seen = fmt.Sprintf("last seen %s ago", (time.Duration(h.LastSeenSeconds) * time.Second).String())
			}
			out = append(out, Finding{Check: CheckGossip, Severity: sev,
				What:  fmt.Sprintf("%s's gossip finds %s %s (%s): its backends are out of rotation", withAddr(self, addrs), withAddr(other, addrs), h.State, seen),
				Where: []string{withAddr(self, addrs), withAddr(other, addrs)},
				Fix: fmt.Sprintf("if %s runs, allow UDP and TCP port %d (gossip) between %s and %s in both directions",
					other, port, addrOr(addrs, self), addrOr(addrs, other))})
		}
	}
	return out
}

// CheckClockOf compares the nodes' clocks: each status carries its
// agent's time, which diagnose brackets with its own clock.
func CheckClockOf(views []AgentView) []Finding {
	type off struct {
		v        AgentView
		off, unc time.Duration
	}
	var offs []off
	for _, v := range ok(views) {
		if v.Status.Time.IsZero() || v.Received.Before(v.Sent) {
			continue
		}
		half := v.Received.Sub(v.Sent) / 2
		offs = append(offs, off{v, v.Status.Time.Sub(v.Sent.Add(half)), half})
	}
	if len(offs) < 2 {
		return nil
	}
	slices.SortFunc(offs, func(a, b off) int { return cmp.Compare(a.off, b.off) })
	lo, hi := offs[0], offs[len(offs)-1]
	skew := hi.off - lo.off - hi.unc - lo.unc
	var sev Severity
	switch {
	case skew >= ClockSkewError:
		sev = SeverityError
	case skew >= ClockSkewWarning:
		sev = SeverityWarning
	default:
		return nil
	}
	return []Finding{{Check: CheckClock, Severity: sev,
		What: fmt.Sprintf("the clock of %s is %s ahead of %s's (at least %s beyond the measurement's uncertainty)",
			hi.v.name(), (hi.off - lo.off).Round(time.Millisecond), lo.v.name(), skew.Round(time.Millisecond)),
		Where: []string{hi.v.name(), lo.v.name()},
		Fix:   "run NTP (chrony or systemd-timesyncd) on every node; certificates, leases and ages shown by braid status depend on agreeing clocks"}}
}

// CheckMapsOf reports BPF maps near or at capacity.
func CheckMapsOf(views []AgentView) []Finding {
	var out []Finding
	for _, v := range ok(views) {
		for _, m := range v.Status.Maps {
			if m.Capacity <= 0 {
				continue
			}
			var sev Severity
			switch {
			case m.Entries >= m.Capacity || m.Pressure >= MapPressureError:
				sev = SeverityError
			case m.Pressure >= MapPressureWarning:
				sev = SeverityWarning
			default:
				continue
			}
			out = append(out, Finding{Check: CheckMaps, Severity: sev,
				What:  fmt.Sprintf("%s: BPF map %s holds %d of %d entries (%.0f%%)", v.name(), m.Name, m.Entries, m.Capacity, 100*m.Pressure),
				Where: []string{v.name()},
				Fix:   fmt.Sprintf("entries beyond the capacity are not programmed: reduce what the mesh publishes (global services, backends) or raise the map's size in the agent's BPF config (bpf.Config %s entries)", m.Name)})
		}
	}
	return out
}

// CheckStrictOf reports nodes whose strict mode dropped traffic.
func CheckStrictOf(views []AgentView) []Finding {
	var out []Finding
	for _, v := range ok(views) {
		t := v.Status.Tunnel
		if t == nil || !t.Strict || t.StrictDrops == 0 {
			continue
		}
		out = append(out, Finding{Check: CheckStrict, Severity: SeverityWarning,
			What:  fmt.Sprintf("%s: strict mode dropped %d packets to remote pods that would have left the node outside WireGuard device %s", v.name(), t.StrictDrops, t.Device),
			Where: []string{v.name()},
			Fix:   fmt.Sprintf("route remote pod CIDRs into %s (ip route on the node) and check that every remote node has a WireGuard peer (%s)", t.Device, CheckWireGuard)})
	}
	return out
}
