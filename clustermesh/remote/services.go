package remote

import (
	"errors"
	"hash/maphash"
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
	svc, hash, ok, rejected := c.effectiveLocked(name)
	var ch *Change
	key := clustermesh.KindPrefix(clustermesh.KindServices, c.name) + name
	switch {
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
func (c *cluster) effectiveLocked(name string) (svc clustermesh.Service, hash uint64, ok bool, rejected error) {
	if h, found := c.servicesV2.m[name]; found && h.rec.header != nil {
		s, err := clustermesh.AssembleService(h.rec.header, func(chunk string) (*clustermesh.EndpointChunk, bool) {
			p, ok := c.servicesV2.m[name+"/"+chunk]
			return p.rec.chunk, ok && p.rec.chunk != nil
		})
		if err == nil {
			return s, c.chunkedHash(name, h), true, nil
		}
		if !errors.Is(err, clustermesh.ErrChunkMissing) {
			rejected = err
		}
		if v1, found := c.servicesV1.m[name]; found {
			return v1.rec, v1.hash, true, rejected
		}
		if cur, found := c.services.m[name]; found {
			return cur.rec, cur.hash, true, rejected
		}
		return clustermesh.Service{}, 0, false, rejected
	}
	if v1, found := c.servicesV1.m[name]; found {
		return v1.rec, v1.hash, true, nil
	}
	return clustermesh.Service{}, 0, false, nil
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
	clear(c.servicesV1.m)
	clear(c.servicesV2.m)
	c.mu.Unlock()
	c.entryGauges[clustermesh.KindServices].Set(0)
	c.entryGauges[clustermesh.KindServicesV2].Set(0)
}
