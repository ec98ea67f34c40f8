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
	"github.com/braidmesh/braid/kvstore/memory"
	"github.com/braidmesh/braid/reconcile"
	"github.com/braidmesh/braid/tunnel"
)

// TestTunnelPeersConvergeOnRetryAfterFault makes the agent's first peer
// update that includes a new remote node fail, and checks that the device
// still gets that peer, through the tunnel loop's retry: the mesh the
// successful update saw is the very one the failed update saw.
func TestTunnelPeersConvergeOnRetryAfterFault(t *testing.T) {
	bpftest.RequireRoot(t)
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("skip: needs /dev/net/tun for the wireguard-go device")
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
		mu        sync.Mutex
		faults    int
		faultMesh *remote.Snapshot // the mesh when the fault was injected
		okMesh    *remote.Snapshot // the mesh of the first success after it
	)
	const w2Name = "west/w2"
	agent.SetConfigurePeers(a, func(dev *tunnel.Device, want []tunnel.Peer) error {
		hasW2 := slices.ContainsFunc(want, func(p tunnel.Peer) bool { return p.Name == w2Name })
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
		deadline := time.Now().Add(20 * time.Second)
		for {
			var have []wgtypes.Key
			d, err := wg.Device(devName)
			if err == nil {
				for _, p := range d.Peers {
					have = append(have, p.PublicKey)
				}
			}
			if err == nil && len(have) == len(want) && !slices.ContainsFunc(want, func(k wgtypes.Key) bool { return !slices.Contains(have, k) }) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("device %s peers %v (err %v), want %v; agent %+v", devName, have, err, want, a.Snapshot())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// Settle: both clusters synced in the agent's view, w1 configured.
	waitPeers(key1)
	for deadline := time.Now().Add(20 * time.Second); ; {
		snap := a.Watcher().Snapshot()
		if snap.Clusters["east"] != nil && snap.Clusters["east"].Synced && snap.Clusters["west"] != nil && snap.Clusters["west"].Synced {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("agent never synced both clusters")
		}
		time.Sleep(20 * time.Millisecond)
	}

	// One mesh change; its peer update fails; nothing else changes.
	w2, key2 := westNode("w2", 1)
	if err := pubWest.Upsert(w2); err != nil {
		t.Fatal(err)
	}
	waitPeers(key1, key2)

	mu.Lock()
	defer mu.Unlock()
	if faults != 1 || okMesh == nil {
		t.Fatalf("%d faults injected, success after it recorded: %v; want 1 and true", faults, okMesh != nil)
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
