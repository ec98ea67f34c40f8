package agent

import (
	"slices"
	"testing"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/remote"
)

// TestMeshMissing: a restarted agent's view is complete only once the
// configs are listed, its own cluster is there, and every cluster synced.
func TestMeshMissing(t *testing.T) {
	snap := func(synced ...bool) *remote.Snapshot {
		s := &remote.Snapshot{Clusters: map[clustermesh.ClusterName]*remote.ClusterState{}}
		for i, ok := range synced {
			s.Clusters[[]clustermesh.ClusterName{"east", "west"}[i]] = &remote.ClusterState{Synced: ok}
		}
		return s
	}
	for _, c := range []struct {
		name   string
		snap   *remote.Snapshot
		listed bool
		want   []string
	}{
		{"nothing listed", snap(), false, []string{"the mesh's clusters"}},
		{"listed, own cluster absent", snap(), true, []string{"cluster east"}},
		{"west not synced", snap(true, false), true, []string{"cluster west"}},
		{"neither synced", snap(false, false), true, []string{"cluster east", "cluster west"}},
		{"complete", snap(true, true), true, nil},
	} {
		if got := meshMissing(c.snap, c.listed, "east"); !slices.Equal(got, c.want) {
			t.Errorf("%s: missing %q, want %q", c.name, got, c.want)
		}
	}
}
