package gossip

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"
)

// BenchmarkBandwidth measures the gossip each node sends in a pool of n
// in-process members on loopback addresses (encrypted, Braid's probe and
// gossip intervals), over a 10 s window once every member sees 99 % of the
// others alive. Bytes are counted by the Pools' transport (UDP packets and
// TCP streams, as sent).
//
// All members share this machine's cores, so the benchmark does what one
// agent per node never needs: members join in batches of 100, each batch
// settling before the next starts; Health is recomputed once a second
// rather than every gossip interval (each recomputation walks every
// member, which is n² work per interval for n Pools in one process, and
// sends nothing); and ProbeTimeout and SuspicionMult are raised (they
// change no steady-state traffic) so that acks delayed by the shared CPU do
// not start suspicion storms. It reports the non-alive views it still saw.
// BRAID_GOSSIP_MEMBERS overrides n (default 1000).
//
//	go test -run '^$' -bench Bandwidth -benchtime 1x -timeout 30m ./clustermesh/gossip/
func BenchmarkBandwidth(b *testing.B) {
	n := 1000
	if s := os.Getenv("BRAID_GOSSIP_MEMBERS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	const batch = 100
	l := &lab{t: b, wait: 10 * time.Minute, addrs: loopback(n), keys: [][]byte{newKey(b)}, members: make([]*member, n),
		tune: func(c *Config) {
			c.ProbeTimeout, c.SuspicionMult, c.RefreshInterval = 180*time.Millisecond, 6, time.Second
		}}
	b.Cleanup(func() {
		for _, m := range l.members {
			if m != nil {
				m.stop()
			}
		}
	})
	start := time.Now()
	for lo := 0; lo < n; lo += batch {
		hi := min(n, lo+batch)
		for i := lo; i < hi; i++ {
			l.start(i)
		}
		l.aliveAmong(hi, 0.99)
		b.Logf("%d members up, each sees 99%% of them alive, after %v", hi, time.Since(start).Round(time.Second))
	}
	b.ReportMetric(time.Since(start).Seconds(), "converge-s")
	const window = 10 * time.Second
	b.ResetTimer()
	for range b.N {
		sent := func() (p, s uint64) {
			for _, m := range l.members {
				a, c := m.pool.SentBytes()
				p, s = p+a, s+c
			}
			return p, s
		}
		p0, s0 := sent()
		t0 := time.Now()
		time.Sleep(window) // the measurement window: bytes sent over it
		p1, s1 := sent()
		secs := time.Since(t0).Seconds()
		b.ReportMetric(float64(p1-p0)/secs/float64(n), "udp-B/s/node")
		b.ReportMetric(float64(s1-s0)/secs/float64(n), "tcp-B/s/node")
		b.ReportMetric(float64(p1-p0+s1-s0)/secs/float64(n), "B/s/node")
	}
	b.StopTimer()
	unhealthy := 0
	for _, m := range l.members {
		for _, h := range m.pool.Health() {
			if h.State != Alive {
				unhealthy++
			}
		}
	}
	b.ReportMetric(float64(unhealthy), "non-alive-views")
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
