package agent_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/braidmesh/braid/bpf"
	"github.com/braidmesh/braid/bpf/bpftest"
	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/agent"
	"github.com/braidmesh/braid/clustermesh/remote"
	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/kvstore/memory"
	"github.com/braidmesh/braid/reconcile"
	"github.com/braidmesh/braid/tunnel"
)

// TestTunnelPeersConvergeOnRetryAfterFault makes the agent's first peer
// update that includes a new remote node fail, together with the lookup of
// the tunnel device (which steering needs), and checks that both failures
// are reported in the status while they last, and that the device still
// gets the new peer through the tunnel loop's retry: the mesh the
// successful update saw is the very one the failed update saw.
func TestTunnelPeersConvergeOnRetryAfterFault(t *testing.T) {
	bpftest.RequireRoot(t)
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		testenv.Skipf(t, "needs /dev/net/tun for the wireguard-go device")
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	store := memory.New()
	defer store.Close()

	// West's pod range is routed through the device in this namespace:
	// pick a benchmarking range (198.18.0.0/15) slice nobody else uses.
	var b [1]byte
	rand.Read(b[:])
	podRange := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, b[0], 0}), 24)
	east := cluster("east", 1, "10.201.1.0/24", "172.21.0.0/16")
	west := cluster("west", 2, podRange.String(), "172.22.0.0/16")
	pubEast := runPublisher(t, ctx, east, store)
	pubWest := runPublisher(t, ctx, west, store)
	_ = pubEast
	westNode := func(name string, i byte) (*clustermesh.Node, wgtypes.Key) {
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		return &clustermesh.Node{Name: name, Cluster: "west", IPs: []netip.Addr{netip.AddrFrom4([4]byte{192, 0, 2, 10 + i})},
			PodCIDRs:     []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, b[0], 64 * i}), 26)},
			WireGuardKey: k.PublicKey().String()}, k.PublicKey()
	}
	w1, key1 := westNode("w1", 0)
	if err := pubWest.Upsert(w1); err != nil {
		t.Fatal(err)
	}

	devName := fmt.Sprintf("bta%x", b[0]) + randHex(4)
	a, err := agent.New(agent.Config{Cluster: "east", Node: "e1", BPF: bpf.Config{PinDir: bpftest.PinDir(t)},
		StatusAddr: "127.0.0.1:0",
		Tunnel:     &tunnel.Config{Name: devName, StateDir: t.TempDir(), ListenPort: freeUDPPort(t)}}, store, nil)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu         sync.Mutex
		lookupFail int
		faults     int
		faultMesh  *remote.Snapshot // the mesh when the fault was injected
		okMesh     *remote.Snapshot // the mesh of the first success after it
	)
	// The retry waits until the test has seen the failure in the status.
	release := make(chan struct{})
	agent.SetInterfaceByName(a, func(name string) (*net.Interface, error) {
		west := a.Watcher().Snapshot().Clusters["west"]
		hasW2 := west != nil && west.Nodes["w2"].Name != ""
		mu.Lock()
		fail := hasW2 && lookupFail == 0
		if fail {
			lookupFail++
		}
		mu.Unlock()
		if fail {
			return nil, errors.New("injected lookup fault")
		}
		return net.InterfaceByName(name)
	})
	const w2Name = "west/w2"
	agent.SetConfigurePeers(a, func(dev *tunnel.Device, want []tunnel.Peer) error {
		hasW2 := slices.ContainsFunc(want, func(p tunnel.Peer) bool { return p.Name == w2Name })
		mu.Lock()
		retry := hasW2 && faults == 1
		mu.Unlock()
		if retry {
			select {
			case <-release:
			case <-ctx.Done(): // the test failed before releasing
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if hasW2 && faults == 0 {
			faults++
			faultMesh = a.Watcher().Snapshot()
			return errors.New("injected peer update fault")
		}
		err := dev.Configure(want)
		if hasW2 && err == nil && okMesh == nil {
			okMesh = a.Watcher().Snapshot()
		}
		return err
	})
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	}()

	wg, err := wgctrl.New()
	if err != nil {
		t.Fatal(err)
	}
	defer wg.Close()
	waitPeers := func(want ...wgtypes.Key) {
		t.Helper()
		testenv.Eventually(t, 20*time.Second, func() error {
			d, err := wg.Device(devName)
			if err != nil {
				return err
			}
			var have []wgtypes.Key
			for _, p := range d.Peers {
				have = append(have, p.PublicKey)
			}
			if len(have) != len(want) || slices.ContainsFunc(want, func(k wgtypes.Key) bool { return !slices.Contains(have, k) }) {
				return fmt.Errorf("device %s peers %v, want %v; agent %+v", devName, have, want, a.Snapshot())
			}
			return nil
		})
	}
	// Settle: both clusters synced in the agent's view, w1 configured.
	waitPeers(key1)
	testenv.Eventually(t, 20*time.Second, func() error {
		snap := a.Watcher().Snapshot()
		for _, name := range []clustermesh.ClusterName{"east", "west"} {
			if cs := snap.Clusters[name]; cs == nil || !cs.Synced {
				return fmt.Errorf("agent has not synced cluster %s", name)
			}
		}
		return nil
	})

	// One mesh change; its peer update fails; nothing else changes.
	w2, key2 := westNode("w2", 1)
	if err := pubWest.Upsert(w2); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, func() error {
		snap := a.Snapshot()
		problems := strings.Join(snap.Problems, "\n")
		if snap.Healthy || !strings.Contains(problems, "tunnel_peers") || !strings.Contains(problems, "injected peer update fault") ||
			!strings.Contains(problems, "injected lookup fault") {
			return fmt.Errorf("failures not reported: %q", snap.Problems)
		}
		return nil
	})
	close(release)
	waitPeers(key1, key2)

	mu.Lock()
	defer mu.Unlock()
	if faults != 1 || lookupFail != 1 || okMesh == nil {
		t.Fatalf("%d peer faults and %d lookup faults injected, success after them recorded: %v; want 1, 1 and true", faults, lookupFail, okMesh != nil)
	}
	for name, cs := range okMesh.Clusters {
		if faultMesh.Clusters[name] != cs {
			t.Errorf("cluster %s changed between the failed and the successful peer update: the retry did not converge by itself", name)
		}
	}
	if len(okMesh.Clusters) != len(faultMesh.Clusters) {
		t.Errorf("clusters %d at the fault, %d at the success", len(faultMesh.Clusters), len(okMesh.Clusters))
	}
	st := loopStatus(t, a, "tunnel_peers")
	if st.ConsecutiveFailures != 0 || st.LastFailure.IsZero() || st.LastSuccess.Before(st.LastFailure) {
		t.Errorf("tunnel_peers loop %+v: want a failure, then a success", st)
	}
	if snap := a.Snapshot(); !snap.Healthy {
		t.Errorf("agent unhealthy after recovery: %v", snap.Problems)
	}
	metrics := fetch(t, a.StatusURL()+"/metrics")
	for _, want := range []string{
		`braid_reconcile_failures_total{loop="tunnel_peers"} 1`,
		`braid_reconcile_consecutive_failures{loop="tunnel_peers"} 0`,
		`braid_reconcile_duration_seconds_count{loop="datapath"}`,
		`braid_reconcile_duration_seconds_count{loop="tunnel_key"}`,
		`braid_reconcile_last_success_timestamp_seconds{loop="mesh"}`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func fetch(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s, %v", url, resp.Status, err)
	}
	return string(b)
}

func loopStatus(t *testing.T, a *agent.Agent, name string) reconcile.Status {
	t.Helper()
	for _, l := range a.Snapshot().Loops {
		if l.Name == name {
			return l
		}
	}
	t.Fatalf("no loop %q in the agent's status", name)
	return reconcile.Status{}
}

func randHex(n int) string {
	b := make([]byte, (n+1)/2)
	rand.Read(b)
	return fmt.Sprintf("%x", b)[:n]
}

func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}
