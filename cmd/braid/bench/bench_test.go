package bench

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/sim"
	"github.com/braidmesh/braid/kvstore/memory"
)

// TestRawReadCountsWhatWasLoaded: the cold-sync raw baseline reads every
// key of every cluster (config, grant, sync markers, entries) and nothing outside
// the mesh, with fewer slots than clusters.
func TestRawReadCountsWhatWasLoaded(t *testing.T) {
	store := memory.New()
	ctx := t.Context()
	put := func(key string, v any) {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if err := store.Put(ctx, key, b, 0); err != nil {
			t.Fatal(err)
		}
	}
	loaded := 0
	for i := range 5 {
		cfg := clustermesh.ClusterConfig{Name: clustermesh.ClusterName(fmt.Sprintf("c%d", i+1)), ID: clustermesh.ClusterID(i + 1),
			PodCIDRs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16)}}
		st, err := sim.Generate(cfg, 3, 4, []string{"web"})
		if err != nil {
			t.Fatal(err)
		}
		recs, err := st.Records(&cfg)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range clustermesh.Kinds {
			for _, r := range recs[k] {
				put(r.Key(), r)
				loaded++
			}
			put(clustermesh.SyncedKey(cfg.Name, k), clustermesh.SyncMarker{Entries: len(recs[k])})
			loaded++
		}
		put(cfg.Key(), &cfg)
		g := clustermesh.Grant{Name: cfg.Name, ID: cfg.ID, PodCIDRs: cfg.PodCIDRs}
		put(g.Key(), &g)
		loaded += 2
	}
	put("braid-bench/raw", "outside the mesh")
	n, err := rawRead(ctx, store, 2, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if n != loaded {
		t.Errorf("rawRead read %d keys, want the %d loaded", n, loaded)
	}
}

func TestServicePortIsTheFirstBackendsFirstPort(t *testing.T) {
	svc := clustermesh.Service{Backends: []clustermesh.Backend{{Ports: []clustermesh.BackendPort{{Name: "http", Port: 10007}}}}}
	for _, rec := range []any{svc, &svc} {
		if got := servicePort(rec); got != 10007 {
			t.Errorf("servicePort(%T) = %d, want 10007", rec, got)
		}
	}
	if got := servicePort(clustermesh.Node{}); got != 0 {
		t.Errorf("servicePort(Node) = %d, want 0", got)
	}
}
