package gossip

import (
	"bytes"
	"context"
	cryptorand "crypto/rand"
	"fmt"
	"log/slog"
	mathrand "math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/braidmesh/braid/internal/testenv"
)

// loopback returns n addresses in a random 127.R.0.0/16 (loopback answers
// for all of 127/8), so parallel tests do not collide.
func loopback(n int) []netip.AddrPort {
	r := byte(2 + mathrand.IntN(250))
	out := make([]netip.AddrPort, n)
	for i := range out {
		out[i] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, r, byte(i / 250), byte(1 + i%250)}), DefaultPort)
	}
	return out
}

func newKey(t testing.TB) []byte {
	k := make([]byte, KeySize)
	if _, err := cryptorand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// member is one running Pool.
type member struct {
	pool   *Pool
	cancel context.CancelFunc
	done   chan error
}

func (m *member) stop() {
	m.cancel()
	<-m.done
}

// lab runs Pools on loopback addresses; each knows all others as members
// (or, with published set, the first published of them).
type lab struct {
	t       testing.TB
	tune    func(*Config)
	wait    time.Duration // waitFor's deadline
	addrs   []netip.AddrPort
	keys    [][]byte
	members []*member
	log     *slog.Logger // the members' logger; nil discards
	// published, when not zero, is how many of addrs the mesh state
	// publishes: a member started is given only those, as an agent is
	// given only the nodes published in the kvstore.
	published int
}

// memberList returns the members the mesh state publishes.
func (l *lab) memberList() []Member {
	addrs := l.addrs
	if l.published > 0 {
		addrs = addrs[:l.published]
	}
	ms := make([]Member, 0, len(addrs))
	for j, a := range addrs {
		ms = append(ms, Member{Name: l.name(j), Addr: a})
	}
	return ms
}

func newLab(t testing.TB, n int, keys [][]byte) *lab { return newLabWith(t, n, nil, keys) }

func newLabWith(t testing.TB, n int, tune func(*Config), keys [][]byte) *lab {
	l := &lab{t: t, tune: tune, wait: 30 * time.Second, addrs: loopback(n), keys: keys, members: make([]*member, n)}
	l.startAll()
	return l
}

// startAll starts every member and stops them when the test ends.
func (l *lab) startAll() {
	for i := range l.members {
		l.start(i)
	}
	l.t.Cleanup(func() {
		for _, m := range l.members {
			if m != nil {
				m.stop()
			}
		}
	})
}

func (l *lab) name(i int) string { return MemberName("c", fmt.Sprintf("n%d", i)) }

func (l *lab) start(i int) {
	l.t.Helper()
	cfg := Config{Name: l.name(i), Addr: l.addrs[i], Keys: l.keys}
	if l.tune != nil {
		l.tune(&cfg)
	}
	p, err := New(cfg, l.log, nil)
	if err != nil {
		l.t.Fatal(err)
	}
	p.SetMembers(l.memberList())
	ctx, cancel := context.WithCancel(context.Background())
	m := &member{pool: p, cancel: cancel, done: make(chan error, 1)}
	go func() { m.done <- p.Run(ctx) }()
	l.members[i] = m
}

// waitFor waits until cond holds for pool i, re-checking on its Changes.
func (l *lab) waitFor(i int, what string, cond func(h map[string]NodeHealth) bool) {
	l.t.Helper()
	p := l.members[i].pool
	deadline := time.After(l.wait)
	for !cond(p.Health()) {
		select {
		case <-p.Changes():
		case err := <-l.members[i].done:
			l.t.Fatalf("member %d stopped: %v", i, err)
		case <-deadline:
			l.t.Fatalf("member %d: %s not reached in %v: %v", i, what, l.wait, p.Health())
		}
	}
}

func (l *lab) allAlive(except ...int) {
	l.t.Helper()
	for i, m := range l.members {
		if m == nil {
			continue
		}
		l.waitFor(i, "every other member alive", func(h map[string]NodeHealth) bool {
			for j := range l.members {
				if j != i && h[l.name(j)].State != Alive {
					return false
				}
			}
			return len(h) == len(l.members)-1
		})
	}
}

// aliveAmong waits until each of the first k members sees at least frac of
// the other first k alive.
func (l *lab) aliveAmong(k int, frac float64) {
	l.t.Helper()
	for i := range k {
		l.waitFor(i, fmt.Sprintf("%.0f%% of the first %d alive", 100*frac, k), func(h map[string]NodeHealth) bool {
			alive := 0
			for j := range k {
				if j != i && h[l.name(j)].State == Alive {
					alive++
				}
			}
			return float64(alive) >= frac*float64(k-1)
		})
	}
}

func TestDeadNodeUnreachableAndBack(t *testing.T) {
	l := newLab(t, 3, [][]byte{newKey(t)})
	l.allAlive()
	if h := l.members[0].pool.Health()[l.name(2)]; h.LastSeen.IsZero() {
		t.Errorf("alive member has no last-seen time: %+v", h)
	}

	l.members[2].stop()
	l.members[2] = nil
	for i := range 2 {
		l.waitFor(i, "n2 unreachable", func(map[string]NodeHealth) bool { return l.members[i].pool.Unreachable(l.name(2)) })
		if l.members[i].pool.Unreachable(l.name(1 - i)) {
			t.Errorf("member %d finds live member %d unreachable", i, 1-i)
		}
	}
	last := l.members[0].pool.Health()[l.name(2)].LastSeen
	if last.IsZero() {
		t.Error("dead member lost its last-seen time")
	}

	l.start(2)
	l.allAlive()
	for i := range 2 {
		if l.members[i].pool.Unreachable(l.name(2)) {
			t.Errorf("member %d still finds the returned n2 unreachable", i)
		}
	}
}

func TestKeyRotationNoPartition(t *testing.T) {
	k1, k2 := newKey(t), newKey(t)
	// A partition by keys shows as packets a member cannot decrypt
	// (memberlist logs "Decrypt packet failed"). Members seen suspect or
	// dead are not the signal: on a loaded machine a probe can time out
	// with or without a rotation, so they are only logged.
	logs := &lockedBuffer{}
	l := &lab{t: t, wait: 30 * time.Second, addrs: loopback(3), keys: [][]byte{k1}, members: make([]*member, 3),
		log: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	l.startAll()
	l.allAlive()

	var notAlive []string
	var mu sync.Mutex
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, m := range l.members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for {
				for name, h := range m.pool.Health() {
					if h.State != Alive {
						mu.Lock()
						notAlive = append(notAlive, fmt.Sprintf("member %d saw %s %s", i, name, h.State))
						mu.Unlock()
					}
				}
				select {
				case <-stop:
					return
				case <-tick.C:
				}
			}
		}()
	}
	// settle waits until every member sent at least 600 more bytes of
	// packets (about six probes), so each step is exercised by probes in
	// both directions.
	settle := func() {
		t.Helper()
		var before []uint64
		for _, m := range l.members {
			p, _ := m.pool.SentBytes()
			before = append(before, p)
		}
		deadline := time.Now().Add(30 * time.Second)
		for i, m := range l.members {
			for {
				p, _ := m.pool.SentBytes()
				if p-before[i] > 600 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("member %d sent no gossip", i)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	steps := [][][]byte{{k1, k2}, {k2, k1}, {k2}}
	for s, keys := range steps {
		for i, m := range l.members { // one node after the other
			if err := m.pool.SetKeys(keys); err != nil {
				t.Fatalf("step %d member %d: %v", s, i, err)
			}
			settle()
		}
	}
	close(stop)
	wg.Wait()
	if failed := logs.linesWith("ecrypt"); len(failed) > 0 {
		t.Errorf("rotation partitioned the pool: %d undecryptable messages, first %q", len(failed), failed[0])
	}
	if len(notAlive) > 0 {
		t.Logf("probes missed during the rotation (load, not keys: no decrypt failure): %d, first %q", len(notAlive), notAlive[0])
	}
	l.allAlive()

	// The detector itself: a member that drops to a key nobody else has
	// makes the others log undecryptable packets.
	if err := l.members[0].pool.SetKeys([][]byte{newKey(t)}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, func() error {
		if len(logs.linesWith("ecrypt")) == 0 {
			return fmt.Errorf("no decrypt failure logged after member 0 switched to an unknown key")
		}
		return nil
	})

	if err := l.members[0].pool.SetKeys([][]byte{{1, 2}}); err == nil {
		t.Error("SetKeys accepted a 2-byte key")
	}
}

func TestConfigErrors(t *testing.T) {
	if _, err := New(Config{Name: "c/n", Addr: netip.MustParseAddrPort("127.0.0.1:0"), Keys: [][]byte{make([]byte, 16)}}, nil, nil); err == nil {
		t.Error("accepted a 16-byte (AES-128) key")
	}
	if _, err := New(Config{Name: "c/n"}, nil, nil); err == nil {
		t.Error("accepted a pool without address")
	}
}

// lockedBuffer collects log lines from several goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// linesWith returns the lines holding sub.
func (b *lockedBuffer) linesWith(sub string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for line := range strings.Lines(b.buf.String()) {
		if strings.Contains(line, sub) {
			out = append(out, line)
		}
	}
	return out
}
