package meshsim

import (
	"strings"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh"
)

func TestClustersDifferingNamesTheClustersAndTheirLastChanges(t *testing.T) {
	at := time.Date(2026, 12, 4, 18, 5, 1, 0, time.Local).UnixNano()
	ch := &churner{ops: []op{
		{kind: opScaleUp, cluster: "sim-2", service: "default/svc-1", start: at},
		{kind: opFlap, cluster: "sim-3", service: "default/svc-0", start: at},
		{kind: opScaleDown, cluster: "sim-2", service: "default/svc-4", start: at + int64(time.Second)},
	}}
	same := Counts{Clusters: 1, Nodes: 2, IPs: 6, Services: 2, Backends: 4}
	want := map[clustermesh.ClusterName]Counts{"sim-2": same, "sim-3": same, "sim-4": same}
	have := map[clustermesh.ClusterName]Counts{"sim-2": {Clusters: 1, Nodes: 2, IPs: 5, Services: 2, Backends: 4}, "sim-3": same, "sim-9": same}
	got := clustersDiffering(have, want, ch)
	for _, s := range []string{"3 cluster(s) differ", "sim-2 holds", "IPs:5", "scale-down default/svc-4 at 18:05:02.000, scale-up default/svc-1 at 18:05:01.000", "sim-4 holds {Clusters:0", "sim-9 holds"} {
		if !strings.Contains(got, s) {
			t.Errorf("clustersDiffering = %q, want it to contain %q", got, s)
		}
	}
	if strings.Contains(got, "sim-3 holds") {
		t.Errorf("clustersDiffering = %q names sim-3, which matches", got)
	}
	if got := clustersDiffering(want, want, ch); !strings.HasPrefix(got, "no cluster differs") {
		t.Errorf("clustersDiffering of equal views = %q", got)
	}
}
