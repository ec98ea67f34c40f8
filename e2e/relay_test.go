//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/internal/lab"
	"github.com/braidmesh/braid/internal/testenv"
)

// TestLabRelay runs a lab of two clusters × one node in which west's
// operator runs the relay and west's agent reads the mesh from it (the
// lab's Config.Relay): the lab is ready only once that agent synced every
// cluster; the relay's etcd serves exactly one watch stream (the agent's);
// a global service created in east then reaches west's agent.
func TestLabRelay(t *testing.T) {
	kubeBin := requireLab(t)
	l, err := lab.Up(context.Background(), lab.Config{Clusters: 2, Nodes: 1, Dir: t.TempDir(), KubeBin: kubeBin, Bin: bin,
		LeaseTTL: 10 * time.Second, Relay: []clustermesh.ClusterName{"west"}, Progress: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("tear down the lab: %v", err)
		}
		checkNoLeftovers(t, l.Run, filepath.Dir(l.Dir))
	})
	e := &labEnv{Lab: l, east: l.Cluster("east"), west: l.Cluster("west")}
	e.noExits(t)

	// Only west's agent watches the relay's etcd.
	testenv.Eventually(t, 30*time.Second, func() error {
		streams, err := metric(e.west.RelayMetricsURL()+"/metrics", "etcd_debugging_mvcc_watch_stream_total")
		if err != nil {
			return err
		}
		if streams != 1 {
			return fmt.Errorf("relay's etcd serves %v watch streams, want 1 (west's agent)", streams)
		}
		return nil
	})

	// A global service in east reaches west's agent through the relay.
	e.mustKubectl(t, e.east, strings.NewReader(`apiVersion: v1
kind: Service
metadata:
  name: relayed
  namespace: default
  annotations: {service.cilium.io/global: "true"}
spec:
  ports: [{port: 80, protocol: TCP}]
  selector: {app: relayed}
`), "apply", "-f", "-")
	n := e.west.Nodes[0]
	testenv.Eventually(t, time.Minute, func() error {
		snap, err := agentStatus(n)
		if err != nil {
			return err
		}
		for _, r := range snap.Remotes {
			if r.Name == "east" {
				if !r.Synced || r.Entries[clustermesh.KindServices] == 0 {
					return fmt.Errorf("west's agent: east synced %v with %d services", r.Synced, r.Entries[clustermesh.KindServices])
				}
				return nil
			}
		}
		return fmt.Errorf("west's agent does not know east")
	})
	e.noExits(t)
}

// metric returns the sum of a metric family's samples at url.
func metric(url, name string) (float64, error) {
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	resp, err := client.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sum, found := 0.0, false
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := strings.TrimPrefix(line, name)
		if rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		fields := strings.Fields(line)
		v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %q: %w", url, line, err)
		}
		sum, found = sum+v, true
	}
	if !found {
		return 0, fmt.Errorf("%s: no %s", url, name)
	}
	return sum, sc.Err()
}
