package tunnel

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// strictRules owns one nftables table in the device's netns:
//
//	table inet braid-NAME {
//		set local4/local6   { flags interval }  # this node's pod CIDRs
//		set guard4/guard6   { flags interval }  # the mesh's pod space
//		chain egress { type filter hook postrouting priority filter; policy accept
//			oifname NAME accept; oifname "lo" accept
//			ip daddr @local4 accept;  ip6 daddr @local6 accept
//			ip daddr @guard4 counter drop;  ip6 daddr @guard6 counter drop
//		}
//	}
//
// Postrouting sees forwarded and locally generated packets after the route
// lookup, so a packet for a guarded address that is not routed into the
// tunnel, because its peer is unknown or gone, is dropped there.
type strictRules struct {
	nsfd  int
	table *nftables.Table
	chain *nftables.Chain
	sets  map[string]*nftables.Set

	mu      sync.Mutex
	guarded []netip.Prefix // normalized; only grows
}

func newStrictRules(ns netns.NsHandle, dev string, local []netip.Prefix) (*strictRules, error) {
	s := &strictRules{
		nsfd:  int(ns),
		table: &nftables.Table{Family: nftables.TableFamilyINet, Name: "braid-" + dev},
		sets:  make(map[string]*nftables.Set),
	}
	c, err := s.conn()
	if err != nil {
		return nil, err
	}
	// Add, delete, add: replaces a table left over from a crash in one
	// transaction.
	c.AddTable(s.table)
	c.DelTable(s.table)
	c.AddTable(s.table)
	for _, n := range []string{"local4", "local6", "guard4", "guard6"} {
		kt := nftables.TypeIPAddr
		if n[len(n)-1] == '6' {
			kt = nftables.TypeIP6Addr
		}
		set := &nftables.Set{Table: s.table, Name: n, KeyType: kt, Interval: true}
		var elems []nftables.SetElement
		if n[:5] == "local" {
			elems = intervalElems(local, kt == nftables.TypeIP6Addr)
		}
		if err := c.AddSet(set, elems); err != nil {
			return nil, fmt.Errorf("strict mode: add set %s: %w", n, err)
		}
		s.sets[n] = set
	}
	accept := policy(nftables.ChainPolicyAccept)
	s.chain = c.AddChain(&nftables.Chain{
		Name:     "egress",
		Table:    s.table,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityFilter,
		Policy:   &accept,
	})
	rules := [][]expr.Any{
		oifname(dev, expr.VerdictAccept),
		oifname("lo", expr.VerdictAccept),
		daddrIn(unix.NFPROTO_IPV4, s.sets["local4"], false),
		daddrIn(unix.NFPROTO_IPV6, s.sets["local6"], false),
		daddrIn(unix.NFPROTO_IPV4, s.sets["guard4"], true),
		daddrIn(unix.NFPROTO_IPV6, s.sets["guard6"], true),
	}
	for _, r := range rules {
		c.AddRule(&nftables.Rule{Table: s.table, Chain: s.chain, Exprs: r})
	}
	if err := c.Flush(); err != nil {
		return nil, fmt.Errorf("strict mode: install table %s: %w", s.table.Name, err)
	}
	return s, nil
}

func policy(p nftables.ChainPolicy) nftables.ChainPolicy { return p }

func (s *strictRules) conn() (*nftables.Conn, error) {
	c, err := nftables.New(nftables.WithNetNSFd(s.nsfd))
	if err != nil {
		return nil, fmt.Errorf("strict mode: nftables: %w", err)
	}
	return c, nil
}

// guard adds ps to the guarded sets; a no-op when they hold them already.
// Both families are rewritten in one transaction, so no packet sees a
// partial set.
func (s *strictRules) guard(ps []netip.Prefix) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := normPrefixes(append(slices.Clone(s.guarded), ps...))
	if slices.Equal(next, s.guarded) {
		return nil
	}
	c, err := s.conn()
	if err != nil {
		return err
	}
	for _, fam := range []string{"guard4", "guard6"} {
		set := s.sets[fam]
		c.FlushSet(set)
		if elems := intervalElems(next, fam == "guard6"); len(elems) > 0 {
			if err := c.SetAddElements(set, elems); err != nil {
				return fmt.Errorf("strict mode: update set %s: %w", fam, err)
			}
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("strict mode: update guarded cidrs: %w", err)
	}
	s.guarded = next
	return nil
}

// dropped returns the packets dropped by the guard rules.
func (s *strictRules) dropped() (uint64, error) {
	c, err := s.conn()
	if err != nil {
		return 0, err
	}
	rules, err := c.GetRules(s.table, s.chain)
	if err != nil {
		return 0, fmt.Errorf("strict mode: read counters: %w", err)
	}
	var n uint64
	for _, r := range rules {
		for _, e := range r.Exprs {
			if ctr, ok := e.(*expr.Counter); ok {
				n += ctr.Packets
			}
		}
	}
	return n, nil
}

func (s *strictRules) remove() error {
	c, err := s.conn()
	if err != nil {
		return err
	}
	c.DelTable(s.table)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("strict mode: delete table %s: %w", s.table.Name, err)
	}
	return nil
}

func oifname(name string, v expr.VerdictKind) []expr.Any {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b},
		&expr.Verdict{Kind: v},
	}
}

// daddrIn matches packets of family proto whose destination is in set; it
// accepts them, or counts and drops them when drop is set.
func daddrIn(proto byte, set *nftables.Set, drop bool) []expr.Any {
	off, n := uint32(16), uint32(4) // IPv4 daddr
	if proto == unix.NFPROTO_IPV6 {
		off, n = 24, 16
	}
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
	}
	if drop {
		return append(e, &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop})
	}
	return append(e, &expr.Verdict{Kind: expr.VerdictAccept})
}

// intervalElems turns the prefixes of one family into interval set
// elements: a start key and an end key (exclusive, IntervalEnd) per merged
// range. A range reaching the top of the address space has no end key.
func intervalElems(ps []netip.Prefix, v6 bool) []nftables.SetElement {
	type rng struct{ lo, hi netip.Addr }
	var rs []rng
	for _, p := range normPrefixes(ps) {
		if p.Addr().Is6() != v6 {
			continue
		}
		rs = append(rs, rng{p.Masked().Addr(), lastAddr(p)})
	}
	slices.SortFunc(rs, func(a, b rng) int { return a.lo.Compare(b.lo) })
	var merged []rng
	for _, r := range rs {
		if k := len(merged) - 1; k >= 0 {
			top := merged[k].hi
			if next := top.Next(); !next.IsValid() || r.lo.Compare(next) <= 0 {
				if r.hi.Compare(top) > 0 {
					merged[k].hi = r.hi
				}
				continue
			}
		}
		merged = append(merged, r)
	}
	var out []nftables.SetElement
	for _, r := range merged {
		out = append(out, nftables.SetElement{Key: r.lo.AsSlice()})
		if end := r.hi.Next(); end.IsValid() {
			out = append(out, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
		}
	}
	return out
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// EnableStrict turns strict mode on in an open device, as if Config.Strict
// had been set: the rules are installed guarding StrictCIDRs at once, and
// every remote pod CIDR from the next Configure on. It is a no-op when
// strict mode is on. Strict mode stays on until Close.
func (d *Device) EnableStrict() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.strict != nil {
		return nil
	}
	if !d.opened || d.nl == nil {
		return fmt.Errorf("enable strict mode on %s: device not open", d.cfg.Name)
	}
	s, err := newStrictRules(d.ns, d.cfg.Name, d.cfg.LocalPodCIDRs)
	if err != nil {
		return err
	}
	if err := s.guard(d.cfg.StrictCIDRs); err != nil {
		return errors.Join(err, s.remove())
	}
	d.strict = s
	d.cfg.Strict = true
	d.log.Info("strict mode enabled")
	return nil
}
