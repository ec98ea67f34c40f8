package remote

import (
	"errors"
	"hash/maphash"
	"net/netip"
	"reflect"
	"strings"
	"time"

	"github.com/braidmesh/braid/clustermesh"
)

// servicePart is one entry of the chunked service layout: a header or a
// chunk.
type servicePart struct {
	header *clustermesh.ServiceHeader
	chunk  *clustermesh.EndpointChunk
}

func isServiceKind(k clustermesh.Kind) bool {
	return k == clustermesh.KindServices || k == clustermesh.KindServicesV2
}

// decodeServicePart validates a header or a chunk of the chunked layout.
func (c *cluster) decodeServicePart(cfg *clustermesh.ClusterConfig, key string, value []byte) (any, error) {
	name := strings.TrimPrefix(key, clustermesh.KindPrefix(clustermesh.KindServicesV2, c.name))
	if _, chunk, ok := clustermesh.SplitServicesV2Name(name); ok && chunk != "" {
		ch, err := clustermesh.DecodeEndpointChunk(cfg, c.isNodeIP, key, value)
		if err != nil {
			return nil, err
		}
		ch.Cluster = c.name
		return servicePart{chunk: &ch}, nil
	}
	h, err := clustermesh.DecodeServiceHeader(cfg, key, value)
	if err != nil {
		return nil, err
	}
	h.Cluster = c.name
	return servicePart{header: &h}, nil
}

// refreshServiceAndUnlock recomputes the service a changed entry of a
// service layout (at table key tkey) belongs to, tells consumers if it
// changed, and unlocks c.mu, which must be held.
func (c *cluster) refreshServiceAndUnlock(now time.Time, kind clustermesh.Kind, tkey string) {
	name := tkey
	if kind == clustermesh.KindServicesV2 {
		name, _, _ = clustermesh.SplitServicesV2Name(tkey)
	}
	svc, hash, layout, ok, rejected := c.effectiveLocked(name)
	var ch *Change
	key := clustermesh.KindPrefix(clustermesh.KindServices, c.name) + name
	old, had := c.services.m[name]
	switched := had && ok && c.layouts[name] != layout
	if ok {
		c.layouts[name] = layout
	} else {
		delete(c.layouts, name)
	}
	switch {
	case switched && old.hash != hash && sameService(old.rec, svc):
		// The other layout says the same: nothing for consumers.
		c.services.m[name] = hashed[clustermesh.Service]{hash: hash, rec: svc}
	case ok && c.services.put(name, hash, svc):
		ch = &Change{Type: Upsert, Cluster: c.name, Kind: clustermesh.KindServices, Key: key, Record: svc, Time: now}
	case !ok:
		if old, had := c.services.remove(name); had {
			ch = &Change{Type: Delete, Cluster: c.name, Kind: clustermesh.KindServices, Key: key, Record: old, Time: now}
		}
	}
	if ch != nil {
		c.version++
		c.lastUpdate = now
	}
	n, parts := c.services.len(), c.servicesV2.len()
	c.mu.Unlock()
	c.entryGauges[clustermesh.KindServicesV2].Set(float64(parts))
	if rejected != nil {
		c.reject(clustermesh.KindServicesV2, rejected)
	}
	if ch != nil {
		c.entryGauges[clustermesh.KindServices].Set(float64(n))
		c.w.emit(*ch)
	}
}

// effectiveLocked returns service name as consumers see it: its chunked
// layout when the header and every chunk it names are there and valid;
// else its single-value layout; else, while the chunked layout is being
// written or listed, what consumers have now. ok false means the service
// is gone. rejected is set when the chunked layout is invalid as a whole.
// c.mu must be held.
func (c *cluster) effectiveLocked(name string) (svc clustermesh.Service, hash uint64, layout clustermesh.Kind, ok bool, rejected error) {
	if h, found := c.servicesV2.m[name]; found && h.rec.header != nil {
		s, err := clustermesh.AssembleService(h.rec.header, func(chunk string) (*clustermesh.EndpointChunk, bool) {
			p, ok := c.servicesV2.m[name+"/"+chunk]
			return p.rec.chunk, ok && p.rec.chunk != nil
		})
		if err == nil {
			return s, c.chunkedHash(name, h), clustermesh.KindServicesV2, true, nil
		}
		if !errors.Is(err, clustermesh.ErrChunkMissing) {
			rejected = err
		}
		if v1, found := c.servicesV1.m[name]; found {
			return v1.rec, v1.hash, clustermesh.KindServices, true, rejected
		}
		if cur, found := c.services.m[name]; found {
			return cur.rec, cur.hash, c.layouts[name], true, rejected
		}
		return clustermesh.Service{}, 0, "", false, rejected
	}
	if v1, found := c.servicesV1.m[name]; found {
		return v1.rec, v1.hash, clustermesh.KindServices, true, nil
	}
	return clustermesh.Service{}, 0, "", false, nil
}

// sameService reports whether a and b are the same service, whatever the
// order of their backends (the layouts order them differently).
func sameService(a, b clustermesh.Service) bool {
	if len(a.Backends) != len(b.Backends) {
		return false
	}
	ab, bb := a.Backends, b.Backends
	a.Backends, b.Backends = nil, nil
	if !reflect.DeepEqual(a, b) {
		return false
	}
	byIP := make(map[netip.Addr]*clustermesh.Backend, len(ab))
	for i := range ab {
		byIP[ab[i].IP] = &ab[i]
	}
	for i := range bb {
		x, ok := byIP[bb[i].IP]
		if !ok || !reflect.DeepEqual(*x, bb[i]) {
			return false
		}
	}
	return true
}

// chunkedHash combines the hashes of a header and its chunks' values.
func (c *cluster) chunkedHash(name string, h hashed[servicePart]) uint64 {
	var mh maphash.Hash
	mh.SetSeed(c.w.seed)
	var b [8]byte
	put := func(x uint64) {
		for i := range b {
			b[i] = byte(x >> (8 * i))
		}
		mh.Write(b[:])
	}
	put(h.hash)
	for _, chunk := range h.rec.header.Chunks {
		put(c.servicesV2.m[name+"/"+chunk].hash)
	}
	return mh.Sum64()
}

// drainServices deletes every service, telling consumers, and forgets
// both layouts' entries.
func (c *cluster) drainServices() {
	now := time.Now()
	c.mu.Lock()
	names := c.services.keys()
	c.mu.Unlock()
	for _, name := range names {
		c.mu.Lock()
		old, ok := c.services.remove(name)
		c.version++
		c.mu.Unlock()
		if ok {
			key := clustermesh.KindPrefix(clustermesh.KindServices, c.name) + name
			c.w.emit(Change{Type: Delete, Cluster: c.name, Kind: clustermesh.KindServices, Key: key, Record: old, Time: now})
		}
	}
	c.mu.Lock()
	clear(c.layouts)
	clear(c.servicesV1.m)
	clear(c.servicesV2.m)
	c.mu.Unlock()
	c.entryGauges[clustermesh.KindServices].Set(0)
	c.entryGauges[clustermesh.KindServicesV2].Set(0)
}
