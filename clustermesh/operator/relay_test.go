package operator_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/clustermesh/operator"
	"github.com/braidmesh/braid/clustermesh/relay"
	"github.com/braidmesh/braid/clustermesh/remote"
	"github.com/braidmesh/braid/clustermesh/sim"
	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/kvstore"
)

// TestOperatorRelayServesTheMesh runs cluster a's operator with its relay
// against a real broker, and cluster b's without: a consumer holding only
// the relay's agents' bundle (what braid-agent --relay reads) sees both
// clusters synced, cannot write, and a wrong password is refused.
func TestOperatorRelayServesTheMesh(t *testing.T) {
	b, _, _ := startLabBroker(t, t.TempDir(), [2]int{}, nil)
	ga, gb := grantFor("a", 1), grantFor("b", 2)
	_, sa := connect(t, b, ga)
	_, sb := connect(t, b, gb)
	runOperator(t, gb, sb, 10*time.Second)

	dir := t.TempDir()
	cfg := ga.Config(clustermesh.Capabilities{})
	var saved join.Credentials
	savedOnce := make(chan struct{})
	op, err := operator.New(operator.Config{Cluster: cfg, LeaseTTL: 10 * time.Second,
		Relay: &relay.Config{Listen: []string{fmt.Sprintf("https://127.0.0.1:%d", testenv.FreePort(t))}, DataDir: dir,
			HeartbeatInterval: 10 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond},
		SaveRelayCredentials: func(_ context.Context, c join.Credentials) error {
			saved = c
			close(savedOnce)
			return nil
		},
	}, sa, nil)
	if err != nil {
		t.Fatal(err)
	}
	state, err := sim.Generate(cfg, 2, 4, []string{"web"})
	if err != nil {
		t.Fatal(err)
	}
	if err := op.Apply(state); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- op.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("operator a: %v", err)
		}
	})
	select {
	case <-savedOnce:
	case <-time.After(time.Minute):
		t.Fatal("relay's agents' bundle not saved within a minute")
	}
	fromFile, err := join.LoadCredentials(filepath.Join(dir, relay.AgentsFile), nil)
	if err != nil {
		t.Fatal(err)
	}
	if fromFile.Password != saved.Password || fromFile.Cluster != "a" {
		t.Fatalf("bundle in the data directory (%v) differs from the one saved (%v)", fromFile, saved)
	}

	mesh, err := join.Connect(t.Context(), saved, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer mesh.Close()
	w, err := remote.New(remote.Config{}, mesh, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	wctx, stopW := context.WithCancel(t.Context())
	wdone := make(chan struct{})
	go func() { defer close(wdone); _ = w.Run(wctx) }()
	defer func() { stopW(); <-wdone }()
	testenv.Eventually(t, time.Minute, func() error {
		snap := w.Snapshot()
		for _, name := range []clustermesh.ClusterName{"a", "b"} {
			cs := snap.Clusters[name]
			if cs == nil || !cs.Synced || len(cs.Nodes) != 2 || len(cs.Services) != 1 {
				return fmt.Errorf("cluster %s through the relay: %+v", name, cs)
			}
		}
		return nil
	})

	if err := mesh.Put(t.Context(), clustermesh.ClusterKey("z"), []byte("{}"), 0); !errors.Is(err, kvstore.ErrPermissionDenied) {
		t.Fatalf("agent user wrote to the relay: err %v, want permission denied", err)
	}
	wrong := saved
	wrong.Password = "not-the-password"
	if s, err := join.Connect(t.Context(), wrong, nil); err == nil {
		s.Close()
		t.Fatal("relay accepted a wrong password")
	}
}
