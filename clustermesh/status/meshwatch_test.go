package status_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/status"
	"github.com/braidmesh/braid/kvstore/memory"
)

// Whatever a cluster writes is validated before it reaches the page: bad
// entries are left out and listed as recent errors, never a panic.
func TestMeshWatcherRejectsBadEntries(t *testing.T) {
	store := memory.New()
	ctx := t.Context()
	put := func(key string, v any) {
		t.Helper()
		b, ok := v.([]byte)
		if !ok {
			b, _ = json.Marshal(v)
		}
		if err := store.Put(ctx, key, b, 0); err != nil {
			t.Fatal(err)
		}
	}
	put(clustermesh.ClusterKey("east"), clustermesh.ClusterConfig{Name: "east", ID: 1})
	put(clustermesh.KindPrefix(clustermesh.KindNodes, "east")+"n1", []byte(`{"name":"n1","cluster":"east","ips":["nonsense"]}`))
	put(clustermesh.NodeStatusKey("east", "n2"), clustermesh.NodeStatus{Cluster: "west", Node: "n2"})
	put(clustermesh.KindPrefix(clustermesh.KindServices, "east")+"default/web", []byte(`{{{`))
	put(clustermesh.ClusterKey("bad"), []byte(`{"name":"bad","id":0}`))

	w := status.NewMeshWatcher(status.MeshConfig{Source: "broker", Coalesce: time.Millisecond}, store)
	changed, stop := w.Subscribe()
	defer stop()
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() { <-done })
	var m status.Mesh
	for m = w.Mesh(); !m.Ready || len(m.Errors) < 4; m = w.Mesh() {
		select {
		case <-changed:
		case <-time.After(10 * time.Second):
			t.Fatalf("mesh %+v not ready with 4 errors", m)
		}
	}
	if len(m.Clusters) != 1 || len(m.Clusters[0].Nodes) != 0 || len(m.Services) != 0 {
		t.Errorf("bad entries reached the document: %+v", m)
	}
	var all []string
	for _, e := range m.Errors {
		all = append(all, e.Message)
	}
	joined := strings.Join(all, "\n")
	for _, want := range []string{"n1", "node status names cluster \"west\"", "default/web", "cluster ID 0"} {
		if !strings.Contains(joined, want) {
			t.Errorf("errors lack %q:\n%s", want, joined)
		}
	}
}
