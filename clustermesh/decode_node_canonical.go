package clustermesh

import "net/netip"

// decodeNodeCanonical parses value when it is written exactly as
// json.Marshal writes a Node (see decodeServiceCanonical for what that
// means); it reports false for anything else, which then goes through
// decodeStrict. FuzzNodeCanonical checks both agree.
func decodeNodeCanonical(value []byte, n *Node, owner ClusterName) bool {
	if len(value) > maxValueSize {
		return false
	}
	c := canon{b: value, ok: true}
	c.seen[0], c.nseen = string(owner), 1
	var out Node
	out.Name = string(c.raw0(`{"name":"`))
	out.Cluster = ClusterName(c.str(`,"cluster":"`))
	c.lit(`,"ips":`)
	if !c.has("null") {
		c.lit("[")
		out.IPs = []netip.Addr{}
		for i := 0; c.ok && !c.has("]"); i++ {
			if i > 0 {
				c.lit(",")
			}
			out.IPs = append(out.IPs, c.addr(`"`))
		}
	}
	if c.has(`,"podCIDRs":[`) {
		out.PodCIDRs = []netip.Prefix{}
		for i := 0; c.ok && !c.has("]"); i++ {
			if i > 0 {
				c.lit(",")
			}
			out.PodCIDRs = append(out.PodCIDRs, c.prefix(`"`))
		}
	}
	if c.has(`,"zone":"`) {
		out.Zone = c.str("")
	}
	if c.has(`,"region":"`) {
		out.Region = c.str("")
	}
	if c.has(`,"wireguardKey":"`) {
		out.WireGuardKey = string(c.raw())
	}
	if c.has(`,"bootID":"`) {
		out.BootID = string(c.raw())
	}
	c.lit("}")
	if !c.ok || len(c.b) != 0 {
		return false
	}
	*n = out
	return true
}

// decodeIdentityCanonical parses value when it is written exactly as
// json.Marshal writes an Identity (labels sorted by key, as it sorts map
// keys); it reports false for anything else, which then goes through
// decodeStrict. FuzzIdentityCanonical checks both agree.
func decodeIdentityCanonical(value []byte, id *Identity, owner ClusterName) bool {
	if len(value) > maxValueSize {
		return false
	}
	c := canon{b: value, ok: true}
	c.seen[0], c.nseen = string(owner), 1
	var out Identity
	c.lit(`{"id":`)
	if !c.ok {
		return false
	}
	rest, n, ok := canonicalUint32(c.b)
	if !ok {
		return false
	}
	c.b = rest
	out.ID = NumericIdentity(n)
	out.Cluster = ClusterName(c.str(`,"cluster":"`))
	c.lit(`,"labels":`)
	if !c.has("null") {
		c.lit("{")
		out.Labels = map[string]string{}
		var last []byte
		for i := 0; c.ok && !c.has("}"); i++ {
			if i > 0 {
				c.lit(",")
			}
			k := c.raw0(`"`)
			// Strictly increasing, as json.Marshal writes them: no key
			// twice (encoding/json would keep the last value).
			if i > 0 && string(k) <= string(last) {
				return false
			}
			last = k
			v := c.str(`:"`)
			if c.ok {
				out.Labels[string(k)] = v
			}
		}
	}
	c.lit("}")
	if !c.ok || len(c.b) != 0 {
		return false
	}
	*id = out
	return true
}

// raw0 cuts lead and a string, returning its bytes.
func (c *canon) raw0(lead string) []byte {
	c.lit(lead)
	return c.raw()
}

// prefix cuts lead (ending in the opening quote) and a prefix string.
func (c *canon) prefix(lead string) netip.Prefix {
	c.lit(lead)
	b := c.raw()
	if !c.ok {
		return netip.Prefix{}
	}
	if p, ok := canonicalPrefix4(b); ok {
		return p
	}
	var p netip.Prefix
	if p.UnmarshalText(b) != nil {
		c.ok = false // decodeStrict words the error
	}
	return p
}
