package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh/publish"
	"github.com/braidmesh/braid/cmd/braid/cli"
	"github.com/braidmesh/braid/cmd/braid/meshsim"
)

// runAsBraid makes the test binary act as braid (the broker and sim
// commands) for the child processes braid sim starts.
const runAsBraid = "BRAID_TEST_RUN_AS_BRAID"

func TestMain(m *testing.M) {
	if os.Getenv(runAsBraid) == "1" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		root := cli.NewRoot(os.Stdout, os.Stderr)
		root.AddCommand(brokerCommand(), meshsim.Command())
		code := cli.Run(ctx, root, os.Args[1:])
		stop()
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// TestSimConsumersSeeWhatWasRegisteredAndTheChurn runs braid sim on a real
// broker (a child process) with three clusters of two nodes: every
// consumer holds exactly the other clusters' state after its initial sync,
// every change the churn made reaches every consumer of another cluster,
// and after the churn each consumer holds what is published.
func TestSimConsumersSeeWhatWasRegisteredAndTheChurn(t *testing.T) {
	testSimConsumers(t, meshsim.ViaDirect)
}

// TestSimConsumersThroughRelaysSeeWhatWasPublished is the same run with
// --consumers-via relay: each consumer cluster runs a relay (a process of
// its own, with the cluster's credentials and its own embedded etcd), and
// its consumers read the relay with the relay's agents' bundle, never the
// broker. Through the relay they must see exactly what was published,
// after the initial sync, every change of the churn, and after it.
func TestSimConsumersThroughRelaysSeeWhatWasPublished(t *testing.T) {
	res := testSimConsumers(t, meshsim.ViaRelay)
	if len(res.Relays) != 2 {
		t.Errorf("%d relay processes measured, want 2 (one per consumer cluster)", len(res.Relays))
	}
	// The broker serves the relays' watches, not the consumers': at most
	// two streams per relay (its mesh Watcher's and the raw baseline's)
	// and the broker's own grants watch, whereas direct the 4 consumers
	// would hold 4 and the baseline 2 more.
	if n, most := res.BrokerMetrics["etcd_debugging_mvcc_watch_stream_total"], 2*2+1; n > float64(most) {
		t.Errorf("broker has %v watch streams, want at most %d (two per relay and its own)", n, most)
	}
	for i, m := range res.RelayMetrics {
		if n := m["etcd_debugging_mvcc_watch_stream_total"]; n < 2 {
			t.Errorf("relay %d serves %v watch streams, want its 2 consumers'", i, n)
		}
	}
}

func testSimConsumers(t *testing.T, via string) *meshsim.Result {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	mix, err := meshsim.ParseMix("flap=60,scale-up=15,scale-down=15,join=5,leave=5")
	if err != nil {
		t.Fatal(err)
	}
	cfg := meshsim.Config{
		Clusters: 3, Nodes: 2, Endpoints: 4,
		Rate: 40, Duration: 3 * time.Second, Mix: mix, Seed: 15,
		ConsumerClusters: 2, ConsumersPerCluster: 2, Via: via,
		ServiceLayout: publish.LayoutBoth, LeaseTTL: publish.DefaultLeaseTTL,
		RawRate: 10, Timeout: 3 * time.Minute,
		Exe: exe, Env: []string{runAsBraid + "=1"}, Stderr: testWriter{t},
	}
	res, err := meshsim.Run(t.Context(), cfg, testWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	// Each consumer sees the two other clusters: 2 nodes, 2 services
	// with a backend on each node, 3 identities (a client and the two
	// services) and 3 pods per node each.
	want := meshsim.Counts{Clusters: 2, Nodes: 4, Identities: 6, IPs: 12, Services: 4, Backends: 8}
	if len(res.SyncCounts) != 4 {
		t.Fatalf("%d consumers synced, want 4", len(res.SyncCounts))
	}
	for i, got := range res.SyncCounts {
		if got != want {
			t.Errorf("consumer %d after its initial sync: %+v, want %+v", i, got, want)
		}
	}
	if res.Applied["flap"] == 0 {
		t.Errorf("no flap applied: %v", res.Applied)
	}
	if res.Matched.Endpoints() == 0 {
		t.Error("no endpoint change observed by any consumer")
	}
	if n := res.Matched.Missing(); n > 0 {
		t.Errorf("%d changes never reached a consumer", n)
	}
	if len(res.Raw) == 0 || res.RawMissing > 0 {
		t.Errorf("raw baseline: %d delivered, %d missing", len(res.Raw), res.RawMissing)
	}
	for i := range res.FinalCounts {
		if res.FinalCounts[i] != res.WantFinal[i] {
			t.Errorf("consumer %d after the churn: %+v, want %+v", i, res.FinalCounts[i], res.WantFinal[i])
		}
	}
	return res
}

// testWriter logs each write to t.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}
