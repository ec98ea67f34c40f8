package gossip

import (
	"fmt"
	"math"
	"net/http"
	_ "net/http/pprof" // served when BRAID_PPROF is set
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// BenchmarkBandwidth measures the gossip each node sends in a pool of n
// in-process members on loopback addresses (encrypted, Braid's tuning),
// as bytes per node per probe interval, counted by the Pools' transport
// (UDP packets and TCP streams, as sent), over a window of
// bandwidthWindow probe intervals once every member sees 99 % of the
// others alive and the join's broadcasts have drained.
//
// A process hosting 1,000 members on this machine's shared cores does not
// keep up with Braid's 200 ms probes (acks arrive after the probe timeout,
// suspicions flap, the flapping is gossip of its own), so each run also
// takes a scale factor k: every interval and timeout of the tuning (probe,
// probe timeout, gossip, push-pull, rejoin, startup grace) is multiplied
// by k and nothing else changes. Every message memberlist sends is driven
// by those timers, so a pool that keeps up sends the same bytes per probe
// interval at any k; the runs at n = 100 and 200 with different k check
// it, and n = 1,000 runs at a k where the process keeps up. Bytes per
// second at Braid's own intervals are bytes per interval / 200 ms.
//
// Members join in batches of 100, each batch settling before the next,
// and each member is given as members the nodes of the batches started so
// far (as an agent is given the nodes published in the kvstore: a member
// given addresses where nothing runs yet would spend its joins on them);
// Health is recomputed every k seconds rather than every gossip interval
// (each recomputation walks every member, n² work per interval for n
// Pools in one process, and sends nothing). It reports the non-alive views
// left at the end (a run with many did not keep up). Runs are n×k pairs,
// BRAID_GOSSIP_RUNS overrides them (default "100x2,100x5,200x5,1000x20"),
// and BRAID_GOSSIP_WINDOW the window's probe intervals (default 150; a
// shorter one for a run after the push-pull figure only).
//
//	go test -run '^$' -bench Bandwidth -benchtime 1x -timeout 60m ./clustermesh/gossip/
//
// With BRAID_PPROF=host:port the process serves net/http/pprof there, to
// profile a run while it joins or measures.
func BenchmarkBandwidth(b *testing.B) {
	if addr := os.Getenv("BRAID_PPROF"); addr != "" {
		srv := &http.Server{Addr: addr, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.ListenAndServe() }()
		b.Cleanup(func() { _ = srv.Close() })
	}
	window := bandwidthWindow
	if w := os.Getenv("BRAID_GOSSIP_WINDOW"); w != "" {
		if _, err := fmt.Sscanf(w, "%d", &window); err != nil || window < 1 {
			b.Fatalf("BRAID_GOSSIP_WINDOW: %q is not a number of probe intervals", w)
		}
	}
	runs := os.Getenv("BRAID_GOSSIP_RUNS")
	if runs == "" {
		runs = "100x2,100x5,200x5,1000x20"
	}
	for _, r := range strings.Split(runs, ",") {
		var n, k int
		if _, err := fmt.Sscanf(r, "%dx%d", &n, &k); err != nil || n < 2 || k < 1 {
			b.Fatalf("BRAID_GOSSIP_RUNS: %q is not MEMBERSxSCALE (e.g. 1000x10)", r)
		}
		b.Run(fmt.Sprintf("n=%d/scale=%d", n, k), func(b *testing.B) { benchBandwidth(b, n, k, window) })
	}
}

// bandwidthWindow is the default measurement window, in probe intervals. Each
// member starts a push-pull every 450 (n = 100) to 900 (n = 1,000) probe
// intervals, so the window holds n/6 to n/3 of the pool's push-pulls.
const bandwidthWindow = 150

// scaled is Braid's tuning with every interval and timeout multiplied by k.
func scaled(c *Config, k int) {
	d := time.Duration(k)
	c.ProbeInterval, c.ProbeTimeout, c.GossipInterval = DefaultProbeInterval*d, DefaultProbeTimeout*d, DefaultGossipInterval*d
	c.PushPullInterval, c.RejoinInterval, c.StartupGrace = DefaultPushPullInterval*d, DefaultRejoinInterval*d, DefaultStartupGrace*d
	c.SuspicionMult = DefaultSuspicionMult
	c.RefreshInterval = time.Second * d
}

func benchBandwidth(b *testing.B, n, k, window int) {
	const batch = 100
	// Most of the process's CPU goes to the garbage collector (memberlist
	// allocates an LZW table for every packet it compresses, and decodes
	// msgpack into fresh structs): collecting less often helps n Pools
	// keep up and changes nothing they send.
	defer debug.SetGCPercent(debug.SetGCPercent(400))
	// Joins spread by gossip and push-pull, both k times slower: the wait
	// for a batch to see itself alive grows with k.
	wait := max(10*time.Minute, time.Duration(k)*2*time.Minute)
	l := &lab{t: b, wait: wait, addrs: loopback(n), keys: [][]byte{newKey(b)}, members: make([]*member, n),
		tune: func(c *Config) { scaled(c, k) }}
	b.Cleanup(func() {
		// In parallel: a member's Run returns only once a join it has in
		// flight ends (up to memberlist's TCP timeout), and a thousand of
		// those one after the other would take hours.
		var wg sync.WaitGroup
		for _, m := range l.members {
			if m != nil {
				wg.Go(m.stop)
			}
		}
		wg.Wait()
	})
	start := time.Now()
	for lo := 0; lo < n; lo += batch {
		hi := min(n, lo+batch)
		// A batch of nodes is published, then its agents start: the
		// running members learn of the new nodes from the mesh state, the
		// new ones of every node published so far.
		l.published = hi
		ms := l.memberList()
		for i := range lo {
			l.members[i].pool.SetMembers(ms)
		}
		for i := lo; i < hi; i++ {
			l.start(i)
		}
		l.aliveAmong(hi, 0.99)
		b.Logf("%d members up, each sees 99%% of them alive, after %v", hi, time.Since(start).Round(time.Second))
	}
	b.ReportMetric(time.Since(start).Seconds(), "converge-s")
	interval := DefaultProbeInterval * time.Duration(k)
	sent := func() (p, s uint64) {
		for _, m := range l.members {
			a, c := m.pool.SentBytes()
			p, s = p+a, s+c
		}
		return p, s
	}
	// The join's alive broadcasts are retransmitted up to 4·log10(n+1)
	// times each; let them drain before measuring.
	settle := 30 * interval
	p0, s0 := sent()
	time.Sleep(settle) // not a sync point: a measurement window
	p1, s1 := sent()
	perInterval := func(bytes uint64, d time.Duration) float64 {
		return float64(bytes) / float64(n) / (float64(d) / float64(interval))
	}
	b.Logf("settling over %v: %.0f B/interval/node", settle, perInterval(p1-p0+s1-s0, settle))
	b.ResetTimer()
	for range b.N {
		p0, s0 := sent()
		t0 := time.Now()
		time.Sleep(time.Duration(window) * interval) // the measurement window: bytes sent over it
		p1, s1 := sent()
		d := time.Since(t0)
		udp, tcp := perInterval(p1-p0, d), perInterval(s1-s0, d)
		b.ReportMetric(udp, "udp-B/interval/node")
		b.ReportMetric(tcp, "tcp-B/interval/node")
		b.ReportMetric(udp+tcp, "B/interval/node")
		b.ReportMetric((udp+tcp)/DefaultProbeInterval.Seconds(), "B/s/node-at-braid-intervals")
		// Logged too, before the members stop: metrics are printed only
		// after the clean-up.
		b.Logf("window of %v: %.0f B/interval/node (UDP %.0f, TCP %.0f), %.0f B/s per node at Braid's intervals",
			d.Round(time.Second), udp+tcp, udp, tcp, (udp+tcp)/DefaultProbeInterval.Seconds())
	}
	b.StopTimer()
	// Push-pulls are the other traffic, and at n = 1,000 none falls in the
	// window: memberlist starts a member's first one after a random
	// stagger plus the scaled push-pull interval (over an hour at k = 20).
	// A join is the same exchange (each side sends its whole member list
	// over TCP, memberlist's sendAndReceiveState), so some members join
	// one other member each, and the TCP bytes every transport sent over
	// those joins, divided by their number, are the bytes of one
	// push-pull. Each member starts one per push-pull interval, so its
	// rate per node is that over the interval memberlist uses at n.
	// A join that fails (its TCP timeout is memberlist's, not scaled) is
	// logged and left out of the count; its bytes, if any were sent, are
	// not, so a run with failures overstates the figure a little.
	const pushPulls = 50
	_, s0 = sent()
	done := 0
	for i := range pushPulls {
		from, to := i*n/pushPulls, (i*n/pushPulls+n/2)%n
		l.members[from].pool.mu.Lock()
		ml := l.members[from].pool.ml
		l.members[from].pool.mu.Unlock()
		if _, err := ml.Join([]string{l.addrs[to].String()}); err != nil {
			b.Logf("push-pull from member %d to %d failed: %v", from, to, err)
			continue
		}
		done++
	}
	_, s1 = sent()
	if done < pushPulls/2 {
		b.Fatalf("only %d of %d push-pulls succeeded: the pool is not keeping up", done, pushPulls)
	}
	perPushPull := float64(s1-s0) / float64(done)
	every := pushPullInterval(DefaultPushPullInterval, n)
	b.ReportMetric(perPushPull, "B/push-pull")
	b.ReportMetric(perPushPull/every.Seconds(), "push-pull-B/s/node-at-braid-intervals")
	b.Logf("one push-pull (both ways, %d of %d succeeded) %.0f B over TCP; a member starts one every %v at Braid's intervals: %.0f B/s per node",
		done, pushPulls, perPushPull, every, perPushPull/every.Seconds())
	unhealthy := 0
	for _, m := range l.members {
		for _, h := range m.pool.Health() {
			if h.State != Alive {
				unhealthy++
			}
		}
	}
	b.ReportMetric(float64(unhealthy), "non-alive-views")
	b.Logf("non-alive views at the end: %d of %d", unhealthy, n*(n-1))
}

// BenchmarkDetection measures, in a pool of 6 members (the lab's three
// clusters of two nodes), how long after a member stops every other member
// finds it unreachable, over 20 stops; the member is restarted between
// runs. It reports p50, p99 and max for Braid's tuning and, as the
// baseline, for memberlist's LAN defaults (probe 1 s, timeout 500 ms,
// suspicion multiplier 4, gossip 200 ms).
//
//	go test -run '^$' -bench Detection -benchtime 1x ./clustermesh/gossip/
func BenchmarkDetection(b *testing.B) {
	for _, c := range []struct {
		name string
		tune func(*Config)
	}{
		{"braid", nil},
		{"memberlist-lan-defaults", func(c *Config) {
			c.ProbeInterval, c.ProbeTimeout, c.SuspicionMult, c.GossipInterval = time.Second, 500*time.Millisecond, 4, 200*time.Millisecond
		}},
	} {
		b.Run(c.name, func(b *testing.B) { benchDetection(b, c.tune) })
	}
}

func benchDetection(b *testing.B, tune func(*Config)) {
	const runs = 20
	l := newLabWith(b, 6, tune, [][]byte{newKey(b)})
	l.allAlive()
	var took []time.Duration
	b.ResetTimer()
	for range b.N {
		took = took[:0]
		for r := range runs {
			victim := r % len(l.members)
			l.members[victim].stop()
			l.members[victim] = nil
			stopped := time.Now()
			var worst time.Duration
			for i, m := range l.members {
				if m == nil {
					continue
				}
				name := l.name(victim)
				for !m.pool.Unreachable(name) {
					select {
					case <-m.pool.Changes():
					case <-time.After(30 * time.Second):
						b.Fatalf("member %d never found %s unreachable", i, name)
					}
				}
				worst = max(worst, time.Since(stopped))
			}
			took = append(took, worst)
			l.start(victim)
			l.allAlive()
		}
	}
	b.StopTimer()
	slices.Sort(took)
	q := func(p float64) time.Duration { return took[min(len(took)-1, int(p*float64(len(took))))] }
	b.ReportMetric(q(0.5).Seconds(), "p50-s")
	b.ReportMetric(q(0.99).Seconds(), "p99-s")
	b.ReportMetric(took[len(took)-1].Seconds(), "max-s")
	b.Log(fmt.Sprint("detection times: ", took))
}

// pushPullInterval is the push-pull interval memberlist uses in a pool
// of n members (its unexported pushPullScale): the configured interval
// once up to 32 members, then times 1 + ⌈log2(n/32)⌉.
func pushPullInterval(interval time.Duration, n int) time.Duration {
	if n <= 32 {
		return interval
	}
	return interval * time.Duration(math.Ceil(math.Log2(float64(n))-math.Log2(32))+1)
}
