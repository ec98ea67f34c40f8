package agent_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/braidmesh/braid/bpf"
	"github.com/braidmesh/braid/bpf/bpftest"
	"github.com/braidmesh/braid/clustermesh/agent"
	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/kvstore/etcd"
	"github.com/braidmesh/braid/kvstore/etcd/etcdtest"
)

// TestAgentHealthFollowsTheBroker runs an agent against a real etcd: it is
// healthy while the broker answers and its cluster is registered; with
// etcd stopped past the bound, /healthz and /readyz fail naming the broker
// with a hint; after etcd's return they recover with no error left; once
// its cluster withdraws from the mesh the agent says it is not registered.
func TestAgentHealthFollowsTheBroker(t *testing.T) {
	bpftest.RequireRoot(t)
	srv := etcdtest.Start(t, etcdtest.WithoutFsync())
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	store, err := etcd.New(ctx, etcd.Config{Endpoints: srv.Endpoints(), ProgressInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	east := cluster("east", 1, "10.203.1.0/24", "172.23.0.0/16")
	west := cluster("west", 2, "10.203.2.0/24", "172.24.0.0/16")
	ectx, stopEast := context.WithCancel(ctx)
	pubEast := runPublisher(t, ectx, east, store)
	runPublisher(t, ctx, west, store)

	a, err := agent.New(agent.Config{Cluster: "east", Node: "e1", BPF: bpf.Config{PinDir: bpftest.PinDir(t)},
		StatusAddr: "127.0.0.1:0", BrokerTimeout: time.Second}, store, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	}()
	client := &http.Client{Timeout: 2 * time.Second}
	defer client.CloseIdleConnections()
	// probe checks /healthz and /readyz answer code, with every one of
	// want in the body.
	probe := func(code int, want ...string) func() error {
		return func() error {
			base := a.StatusURL()
			if base == "" {
				return fmt.Errorf("status server not up yet")
			}
			for _, path := range []string{"/healthz", "/readyz"} {
				resp, err := client.Get(base + path)
				if err != nil {
					return err
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != code {
					return fmt.Errorf("%s: %d %q, want %d", path, resp.StatusCode, body, code)
				}
				for _, w := range want {
					if !strings.Contains(string(body), w) {
						return fmt.Errorf("%s: %q lacks %q", path, body, w)
					}
				}
			}
			return nil
		}
	}
	testenv.Eventually(t, 60*time.Second, probe(http.StatusOK, "ok"))

	srv.Stop()
	testenv.Eventually(t, 60*time.Second, probe(http.StatusServiceUnavailable, "broker unreachable", "hint: check the broker is running"))
	snap := a.Snapshot()
	if snap.Healthy {
		t.Fatalf("status JSON healthy while /healthz fails: %+v", snap)
	}
	srv.Restart(t)
	testenv.Eventually(t, 90*time.Second, probe(http.StatusOK, "ok"))
	if snap := a.Snapshot(); !snap.Healthy || len(snap.Problems) != 0 {
		t.Fatalf("after the broker's return: healthy %v, problems %v", snap.Healthy, snap.Problems)
	}

	// East's operator leaves the mesh: its agent is not registered.
	stopEast()
	if err := pubEast.Withdraw(ctx); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, probe(http.StatusServiceUnavailable, "cluster east is not registered in the mesh", "hint:"))
}
