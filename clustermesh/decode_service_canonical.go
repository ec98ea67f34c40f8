package clustermesh

import (
	"bytes"
	"net/netip"
)

// decodeServiceCanonical parses value when it is written exactly as
// json.Marshal writes a Service, which is how publishers write them: the
// fields in declaration order, those tagged omitempty or omitzero left out
// or present, no white space, every string printable ASCII other than `"`
// and `\` (exportedAt as time.Time writes it), numbers decimal without
// leading zeros. It reports false for anything else, which then goes
// through decodeStrict. A cold start decodes tens of thousands of services
// with hundreds of thousands of backends; this path skips encoding/json's
// reflection, shares one copy of the strings a service repeats (zones,
// port names, protocols) and gives all its backends' ports one array.
// Whatever it accepts, decodeStrict decodes to the same service
// (FuzzServiceCanonical checks it); both paths are followed by the same
// validation. owner is the cluster the key is under: a value naming it
// shares its string.
func decodeServiceCanonical(value []byte, s *Service, owner ClusterName) bool {
	if len(value) > maxValueSize {
		return false
	}
	c := canon{b: value, ok: true}
	c.seen[0], c.nseen = string(owner), 1
	var out Service
	out.Cluster = ClusterName(c.str(`{"cluster":"`))
	out.Namespace = c.str(`,"namespace":"`)
	out.Name = c.str(`,"name":"`)
	out.Global = c.boolean(`,"global":`)
	out.Shared = c.boolean(`,"shared":`)
	out.Affinity = Affinity(c.str(`,"affinity":"`))
	if c.has(`,"topology":"`) {
		out.Topology = Topology(c.str(""))
	}
	if c.has(`,"headless":`) {
		out.Headless = c.boolean("")
	}
	if c.has(`,"clusterIPs":[`) {
		out.ClusterIPs = []netip.Addr{}
		for i := 0; c.ok && !c.has("]"); i++ {
			if i > 0 {
				c.lit(",")
			}
			out.ClusterIPs = append(out.ClusterIPs, c.addr(`"`))
		}
	}
	c.lit(`,"ports":`)
	if !c.has("null") {
		c.lit("[")
		out.Ports = []ServicePort{}
		for i := 0; c.ok && !c.has("]"); i++ {
			if i > 0 {
				c.lit(",")
			}
			var p ServicePort
			c.lit("{")
			if c.has(`"name":"`) {
				p.Name = c.str("")
				c.lit(",")
			}
			p.Port = c.port(`"port":`)
			p.Protocol = Protocol(c.str(`,"protocol":"`))
			c.lit("}")
			out.Ports = append(out.Ports, p)
		}
	}
	if c.has(`,"backends":`) && !c.has("null") {
		c.lit("[")
		// Exact sizes: `{"ip":"` and `"port":` cannot occur inside a
		// string this path accepts, so they count objects.
		n := bytes.Count(c.b, []byte(`{"ip":"`))
		out.Backends = make([]Backend, 0, n)
		ports := make([]BackendPort, 0, bytes.Count(c.b, []byte(`"port":`)))
		for i := 0; c.ok && !c.has("]"); i++ {
			if i > 0 {
				c.lit(",")
			}
			var b Backend
			b.IP = c.addr(`{"ip":"`)
			c.lit(`,"ports":`)
			if !c.has("null") {
				c.lit("[")
				first := len(ports)
				for j := 0; c.ok && !c.has("]"); j++ {
					if j > 0 {
						c.lit(",")
					}
					var p BackendPort
					c.lit("{")
					if c.has(`"name":"`) {
						p.Name = c.str("")
						c.lit(",")
					}
					p.Port = c.port(`"port":`)
					c.lit("}")
					ports = append(ports, p)
				}
				b.Ports = ports[first:len(ports):len(ports)]
				if len(b.Ports) == 0 {
					b.Ports = []BackendPort{}
				}
			}
			if c.has(`,"node":"`) {
				b.Node = string(c.raw())
			}
			if c.has(`,"zone":"`) {
				b.Zone = c.str("")
			}
			if c.has(`,"hostname":"`) {
				b.Hostname = c.str("")
			}
			b.Ready = c.boolean(`,"ready":`)
			b.Serving = c.boolean(`,"serving":`)
			if c.has(`,"terminating":`) {
				b.Terminating = c.boolean("")
			}
			c.lit("}")
			out.Backends = append(out.Backends, b)
		}
	}
	if c.has(`,"exportedAt":`) {
		// The method decodeStrict calls, on the quoted string.
		start := c.b
		c.lit(`"`)
		c.raw()
		if !c.ok || out.ExportedAt.UnmarshalJSON(start[:len(start)-len(c.b)]) != nil {
			return false
		}
	}
	if c.ok && (bytes.HasPrefix(c.b, []byte(`,"export":`)) || bytes.HasPrefix(c.b, []byte(`,"import":`))) {
		// An MCS export's settings and a cluster's own import: small,
		// rare next to backends, so encoding/json reads them.
		var mcs struct {
			Export *ExportSpec `json:"export"`
			Import *ImportSpec `json:"import"`
		}
		tail := append([]byte{'{'}, c.b[1:]...)
		if decodeStrict(tail, &mcs) != nil {
			return false
		}
		out.Export, out.Import = mcs.Export, mcs.Import
		c.b = nil
	} else {
		c.lit("}")
	}
	if !c.ok || len(c.b) != 0 {
		return false
	}
	*s = out
	return true
}

// canon reads a canonical JSON value front to back; the first mismatch
// clears ok, after which every read returns zero values.
type canon struct {
	b  []byte
	ok bool
	// seen holds the first strings read, shared by later equal ones:
	// zones, port names and protocols repeat.
	seen  [8]string
	nseen int
}

// has cuts lit if b starts with it.
func (c *canon) has(lit string) bool {
	if !c.ok {
		return false
	}
	rest, ok := bytes.CutPrefix(c.b, []byte(lit))
	if ok {
		c.b = rest
	}
	return ok
}

// lit cuts lit or fails.
func (c *canon) lit(lit string) {
	if !c.has(lit) && lit != "" {
		c.ok = false
	}
}

// raw cuts lead, then a string's bytes (see canonicalString) up to its
// closing quote, which it cuts too.
func (c *canon) raw() []byte {
	if !c.ok {
		return nil
	}
	for i, ch := range c.b {
		switch {
		case ch == '"':
			s := c.b[:i]
			c.b = c.b[i+1:]
			return s
		case ch < 0x20 || ch > 0x7e || ch == '\\':
			c.ok = false
			return nil
		}
	}
	c.ok = false
	return nil
}

// str cuts lead (ending in the opening quote, or empty if it was cut
// already) and a string, shared with an equal one read before if there
// are few enough.
func (c *canon) str(lead string) string {
	c.lit(lead)
	b := c.raw()
	if !c.ok {
		return ""
	}
	for _, s := range c.seen[:c.nseen] {
		if s == string(b) {
			return s
		}
	}
	s := string(b)
	if c.nseen < len(c.seen) {
		c.seen[c.nseen] = s
		c.nseen++
	}
	return s
}

// boolean cuts lead and true or false.
func (c *canon) boolean(lead string) bool {
	c.lit(lead)
	if c.has("true") {
		return true
	}
	c.lit("false")
	return false
}

// port cuts lead and a decimal that fits a uint16.
func (c *canon) port(lead string) uint16 {
	c.lit(lead)
	if !c.ok {
		return 0
	}
	rest, n, ok := canonicalUint32(c.b)
	if !ok || n > 0xffff {
		c.ok = false
		return 0
	}
	c.b = rest
	return uint16(n)
}

// addr cuts lead (ending in the opening quote) and an address string.
func (c *canon) addr(lead string) netip.Addr {
	c.lit(lead)
	b := c.raw()
	if !c.ok {
		return netip.Addr{}
	}
	if a, ok := canonicalAddr4(b); ok {
		return a
	}
	var a netip.Addr
	if a.UnmarshalText(b) != nil {
		c.ok = false // decodeStrict words the error
	}
	return a
}

// canonicalAddr4 parses an IPv4 address as netip.Addr.String writes it:
// four decimals in 0..255 without leading zeros, separated by dots.
func canonicalAddr4(b []byte) (netip.Addr, bool) {
	var a [4]byte
	for i := range a {
		if i > 0 {
			if len(b) == 0 || b[0] != '.' {
				return netip.Addr{}, false
			}
			b = b[1:]
		}
		n, v := 0, 0
		for n < len(b) && n < 4 && b[n] >= '0' && b[n] <= '9' {
			v = v*10 + int(b[n]-'0')
			n++
		}
		if n == 0 || n > 3 || n > 1 && b[0] == '0' || v > 255 {
			return netip.Addr{}, false
		}
		a[i] = byte(v)
		b = b[n:]
	}
	if len(b) != 0 {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4(a), true
}

// canonicalPrefix4 parses an IPv4 prefix as netip.Prefix.String writes it:
// a canonical IPv4 address, a slash and a decimal in 0..32 without
// leading zeros.
func canonicalPrefix4(b []byte) (netip.Prefix, bool) {
	i := bytes.IndexByte(b, '/')
	if i < 0 {
		return netip.Prefix{}, false
	}
	a, ok := canonicalAddr4(b[:i])
	if !ok {
		return netip.Prefix{}, false
	}
	bits := b[i+1:]
	rest, n, ok := canonicalUint32(bits)
	if !ok || len(rest) != 0 || n > 32 {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, int(n)), true
}
