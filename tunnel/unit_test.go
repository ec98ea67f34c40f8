package tunnel

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// These tests need no privileges.

func mustKey(t *testing.T) wgtypes.Key {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey()
}

func TestPeerAllowedIPs(t *testing.T) {
	p := Peer{
		Endpoint: netip.MustParseAddrPort("192.0.2.7:51820"),
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.7.9/24"), netip.MustParsePrefix("fd00:7::/64"), netip.MustParsePrefix("10.244.7.0/24")},
	}
	got := p.AllowedIPs()
	want := []netip.Prefix{netip.MustParsePrefix("10.244.7.0/24"), netip.MustParsePrefix("192.0.2.7/32"), netip.MustParsePrefix("fd00:7::/64")}
	if len(got) != len(want) {
		t.Fatalf("AllowedIPs = %v, want %v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("AllowedIPs = %v, want %v", got, want)
		}
	}
}

func TestPeerDiff(t *testing.T) {
	ka, kb, kc := mustKey(t), mustKey(t), mustKey(t)
	pa := Peer{PublicKey: ka, Endpoint: netip.MustParseAddrPort("192.0.2.1:51820"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}}
	pb := Peer{PublicKey: kb, Endpoint: netip.MustParseAddrPort("192.0.2.2:51820"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")}}
	// What the device reports for pa and pb; IPv4 may come back mapped.
	have := []wgtypes.Peer{
		{PublicKey: ka, Endpoint: &net.UDPAddr{IP: net.ParseIP("192.0.2.1"), Port: 51820}, AllowedIPs: toIPNets(pa.AllowedIPs())},
		{PublicKey: kb, Endpoint: &net.UDPAddr{IP: net.ParseIP("192.0.2.2").To4(), Port: 51820}, AllowedIPs: toIPNets(pb.AllowedIPs())},
		{PublicKey: kc, Endpoint: &net.UDPAddr{IP: net.ParseIP("192.0.2.3"), Port: 51820}},
	}

	if got := peerDiff(have[:2], map[wgtypes.Key]Peer{ka: pa, kb: pb}, 0); len(got) != 0 {
		t.Errorf("unchanged set: %d changes, want 0", len(got))
	}

	pb2 := pb
	pb2.Endpoint = netip.MustParseAddrPort("192.0.2.2:51821") // port only: allowed IPs unchanged
	got := peerDiff(have, map[wgtypes.Key]Peer{ka: pa, kb: pb2}, 0)
	if len(got) != 2 {
		t.Fatalf("got %d changes, want 2: %+v", len(got), got)
	}
	if !got[0].Remove || got[0].PublicKey != kc {
		t.Errorf("first change should remove the stale peer: %+v", got[0])
	}
	if got[1].PublicKey != kb || !got[1].UpdateOnly || got[1].Endpoint.String() != "192.0.2.2:51821" || got[1].ReplaceAllowedIPs {
		t.Errorf("endpoint change: %+v", got[1])
	}

	ka2 := mustKey(t) // a rotated key: remove the old peer, add the new
	pa2 := pa
	pa2.PublicKey = ka2
	got = peerDiff(have[:2], map[wgtypes.Key]Peer{ka2: pa2, kb: pb}, 10*time.Second)
	var removed, added bool
	for _, pc := range got {
		removed = removed || (pc.PublicKey == ka && pc.Remove)
		added = added || (pc.PublicKey == ka2 && !pc.UpdateOnly && pc.ReplaceAllowedIPs && *pc.PersistentKeepaliveInterval == 10*time.Second)
	}
	if !removed || !added {
		t.Errorf("rotated key: %+v", got)
	}
}

func TestIntervalElems(t *testing.T) {
	ps := []netip.Prefix{
		netip.MustParsePrefix("10.244.1.0/24"),
		netip.MustParsePrefix("10.244.0.0/16"), // covers the first
		netip.MustParsePrefix("10.245.0.0/16"), // adjacent: merged
		netip.MustParsePrefix("192.168.0.0/24"),
		netip.MustParsePrefix("fd00::/8"),
	}
	var got []string
	for _, e := range intervalElems(ps, false) {
		a, _ := netip.AddrFromSlice(e.Key)
		s := a.String()
		if e.IntervalEnd {
			s = "end " + s
		}
		got = append(got, s)
	}
	want := "10.244.0.0,end 10.246.0.0,192.168.0.0,end 192.168.1.0"
	if strings.Join(got, ",") != want {
		t.Errorf("v4 elements %v, want %s", got, want)
	}
	if e := intervalElems([]netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}, false); len(e) != 1 {
		t.Errorf("whole space: %d elements, want 1 (no end)", len(e))
	}
	if e := intervalElems(ps, true); len(e) != 2 {
		t.Errorf("v6 elements: %d, want 2", len(e))
	}
}

func TestKeyFile(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Name: "braid0", StateDir: filepath.Join(dir, "state")}
	d, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(cfg.StateDir, KeyFileName)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	d2, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d.PublicKey() != d2.PublicKey() {
		t.Error("key regenerated on second New")
	}
	if err := os.WriteFile(path, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(cfg, nil); err == nil || strings.Contains(err.Error(), "not a key") {
		t.Errorf("malformed key file: %v", err)
	}
}

func TestConfigValidation(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []Config{
		{Name: "", StateDir: dir},
		{Name: "a-name-longer-than-15", StateDir: dir},
		{Name: "braid0"},
		{Name: "braid0", StateDir: dir, ListenPort: 70000},
		{Name: "braid0", StateDir: dir, UnderlayMTU: 1300},
		{Name: "braid0", StateDir: dir, RotationInterval: -time.Second},
		{Name: "braid0", StateDir: dir, LocalPodCIDRs: []netip.Prefix{{}}},
	} {
		if _, err := New(c, nil); err == nil {
			t.Errorf("New(%+v) succeeded", c)
		}
	}
	for _, c := range []struct {
		cfg  Config
		want int
	}{
		{Config{}, 1440},
		{Config{UnderlayIPv6: true}, 1420},
		{Config{UnderlayMTU: 9000}, 8940},
	} {
		if got := c.cfg.MTU(); got != c.want {
			t.Errorf("MTU(%+v) = %d, want %d", c.cfg, got, c.want)
		}
	}
}

func TestShortKey(t *testing.T) {
	k := mustKey(t)
	if s := ShortKey(k); len(s) != 8 || !strings.HasPrefix(k.String(), s) {
		t.Errorf("ShortKey = %q", s)
	}
}

func TestRotationSchedule(t *testing.T) {
	const interval = time.Hour
	if lo, hi := jittered(interval, 0), jittered(interval, 0.999999); lo != 54*time.Minute || hi <= 65*time.Minute || hi > 66*time.Minute {
		t.Errorf("jittered(1h) spans [%v, %v], want [54m, 66m)", lo, hi)
	}
	now := time.Now()
	for _, tc := range []struct {
		changed time.Time
		want    time.Duration
	}{
		{time.Time{}, 0},
		{now.Add(-RotationSettle - time.Second), 0},
		{now.Add(-RotationSettle / 4), RotationSettle * 3 / 4},
		{now, RotationSettle},
	} {
		if got := settleWait(now, tc.changed); got != tc.want {
			t.Errorf("settleWait(now, now%+v) = %v, want %v", tc.changed.Sub(now), got, tc.want)
		}
	}
	k1, k2, k3 := mustKey(t), mustKey(t), mustKey(t)
	prev := map[wgtypes.Key]string{k1: "east/n1", k2: "west/n1"}
	for _, tc := range []struct {
		next map[wgtypes.Key]string
		want bool
	}{
		{map[wgtypes.Key]string{k1: "east/n1", k2: "west/n1"}, false},
		{map[wgtypes.Key]string{k1: "east/n1"}, false},                           // a peer left
		{map[wgtypes.Key]string{k1: "east/n1", k2: "west/n1", k3: "n/x"}, false}, // a peer joined
		{map[wgtypes.Key]string{k1: "east/n1", k3: "west/n1"}, true},             // west/n1 rotated
	} {
		if got := keyChanged(prev, tc.next); got != tc.want {
			t.Errorf("keyChanged(%v) = %v, want %v", tc.next, got, tc.want)
		}
	}
}

func TestHandoverReady(t *testing.T) {
	lo, mid, hi := orderedKeys(t)
	next, peerNext := mustKey(t), mustKey(t)
	acked := func(p Peer) Peer { p.Prepared = []wgtypes.Key{next}; return p }
	for _, tc := range []struct {
		name     string
		peers    []Peer
		promoted map[wgtypes.Key]bool
		want     bool
	}{
		{"no peers", nil, nil, true},
		{"not acknowledged", []Peer{{PublicKey: hi}}, nil, false},
		{"acknowledged", []Peer{acked(Peer{PublicKey: hi})}, nil, true},
		{"one of two acknowledged", []Peer{acked(Peer{PublicKey: hi}), {PublicKey: lo}}, nil, false},
		{"lower peer mid-handover goes first", []Peer{acked(Peer{PublicKey: lo, NextPublicKey: peerNext})}, nil, false},
		{"lower peer's handover done here", []Peer{acked(Peer{PublicKey: lo, NextPublicKey: peerNext})}, map[wgtypes.Key]bool{peerNext: true}, true},
		{"higher peer mid-handover waits for us", []Peer{acked(Peer{PublicKey: hi, NextPublicKey: peerNext})}, nil, true},
	} {
		if got := handoverReady(mid, next, tc.peers, tc.promoted); got != tc.want {
			t.Errorf("%s: handoverReady = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// orderedKeys returns three public keys in ascending byte order.
func orderedKeys(t *testing.T) (lo, mid, hi wgtypes.Key) {
	ks := []wgtypes.Key{mustKey(t), mustKey(t), mustKey(t)}
	slices.SortFunc(ks, func(a, b wgtypes.Key) int { return bytes.Compare(a[:], b[:]) })
	return ks[0], ks[1], ks[2]
}

func TestPeerDiffStandby(t *testing.T) {
	cur, next := mustKey(t), mustKey(t)
	p := Peer{PublicKey: cur, Endpoint: netip.MustParseAddrPort("192.0.2.1:51820"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}}
	sb := Peer{PublicKey: next, Endpoint: p.Endpoint, standby: true}
	got := peerDiff(nil, map[wgtypes.Key]Peer{cur: p, next: sb}, 25*time.Second)
	if len(got) != 2 {
		t.Fatalf("got %d changes, want 2", len(got))
	}
	for _, pc := range got {
		switch pc.PublicKey {
		case next:
			if len(pc.AllowedIPs) != 0 || pc.PersistentKeepaliveInterval != nil {
				t.Errorf("standby entry carries traffic: %+v", pc)
			}
		case cur:
			if len(pc.AllowedIPs) != 2 || *pc.PersistentKeepaliveInterval != 25*time.Second {
				t.Errorf("current entry: %+v", pc)
			}
		}
	}
	// As the device reports them back: no change.
	have := []wgtypes.Peer{
		{PublicKey: cur, Endpoint: &net.UDPAddr{IP: net.ParseIP("192.0.2.1"), Port: 51820}, AllowedIPs: toIPNets(p.AllowedIPs()), PersistentKeepaliveInterval: 25 * time.Second},
		{PublicKey: next, Endpoint: &net.UDPAddr{IP: net.ParseIP("192.0.2.1"), Port: 51820}},
	}
	if got := peerDiff(have, map[wgtypes.Key]Peer{cur: p, next: sb}, 25*time.Second); len(got) != 0 {
		t.Errorf("unchanged standby: %d changes, want 0: %+v", len(got), got)
	}
}

// hangingClient never returns from a private key change until released.
type hangingClient struct {
	release chan struct{}
	peers   []wgtypes.Peer
}

func (c *hangingClient) Device(string) (*wgtypes.Device, error) {
	return &wgtypes.Device{Peers: c.peers}, nil
}

func (c *hangingClient) ConfigureDevice(_ string, cfg wgtypes.Config) error {
	if cfg.PrivateKey != nil {
		<-c.release
	}
	return nil
}

func (c *hangingClient) Close() error { return nil }

// A device that never applies a key change (wireguard-go's deadlock) makes
// the rotation fail with ErrWedged after the bound, every later call fail
// at once with the same error, and Close return.
func TestRotateKeyWedged(t *testing.T) {
	d, err := New(Config{Name: "brwedge0", StateDir: t.TempDir()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &hangingClient{release: make(chan struct{})}
	defer close(c.release) // lets the abandoned call's goroutine end
	d.wg, d.opened, d.setKeyTimeout = c, true, 50*time.Millisecond
	before := d.PublicKey()
	if _, err := d.RotateKey(); !errors.Is(err, ErrWedged) || !strings.Contains(err.Error(), "restart the agent") {
		t.Fatalf("RotateKey = %v, want ErrWedged naming the fix", err)
	}
	if d.PublicKey() != before {
		t.Error("public key changed although the device never took the new key")
	}
	if err := d.Configure(nil); !errors.Is(err, ErrWedged) {
		t.Errorf("Configure after wedge = %v, want ErrWedged", err)
	}
	if err := d.Close(); err != nil {
		t.Errorf("Close = %v", err)
	}
}

func TestNextKeySurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	d, err := New(Config{Name: "brnext0", StateDir: dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	d.wg, d.opened = &hangingClient{release: make(chan struct{})}, true
	next, err := d.PrepareKey()
	if err != nil {
		t.Fatal(err)
	}
	if again, err := d.PrepareKey(); err != nil || again != next {
		t.Fatalf("second PrepareKey = %v, %v; want the pending key", again, err)
	}
	d2, err := New(Config{Name: "brnext0", StateDir: dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := d2.Keys().Next; got != next {
		t.Errorf("after restart next key %s, want %s", ShortKey(got), ShortKey(next))
	}
}
