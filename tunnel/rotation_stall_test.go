package tunnel

import (
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
)

// rotationsDuringTransfer streams data from a's pod to b's pod while each
// node rotates its key n times at random times (a random pause of 20–400 ms
// before each rotation, drawn independently on each side, so rotations of
// the two sides overlap), each new public key reaching the other side's
// Configure after a random 1–30 ms, as through the mesh. It checks that the
// stream arrives byte-exact and returns the longest time the receiver went
// without data, and the same for the stream's quiet start (the baseline:
// the longest gap with no rotation at all, measured over the first half
// second of the same stream).
func rotationsDuringTransfer(tb testing.TB, n int) (longest, baseline time.Duration) {
	a, b := newLab(tb)
	keepalive := func(c *Config) { c.PersistentKeepalive = 25 * time.Second }
	a.open(tb, keepalive)
	b.open(tb, keepalive)
	meshUp(tb, a, b)

	dst := netip.AddrPortFrom(b.podIP, 5005)
	l := listenTCP(tb, b.pod, dst)

	// The receiver records the time of every read.
	type result struct {
		sum   [32]byte
		size  int
		reads []time.Time
		err   error
	}
	done := make(chan result, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Minute))
		h := sha256.New()
		var r result
		buf := make([]byte, 64<<10)
		for {
			k, err := c.Read(buf)
			if k > 0 {
				h.Write(buf[:k])
				r.size += k
				r.reads = append(r.reads, time.Now())
			}
			if err != nil {
				if !errors.Is(err, io.EOF) {
					r.err = err
				}
				break
			}
		}
		copy(r.sum[:], h.Sum(nil))
		done <- r
	}()

	// Each node rotates n times; its new key reaches the other after a
	// propagation delay. Rotations stop the stream's writer when done.
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	rotating := make(chan struct{})
	var startRotations sync.Once
	for _, pair := range [][2]*labNode{{a, b}, {b, a}} {
		self, other := pair[0], pair[1]
		wg.Go(func() {
			<-rotating
			for range n {
				time.Sleep(time.Duration(20+mathrand.IntN(380)) * time.Millisecond) // the random schedule under test
				if _, err := self.dev.RotateKey(); err != nil {
					errs <- err
					return
				}
				pub := <-self.dev.KeyChanges()
				peer := self.peer()
				peer.PublicKey = pub
				delay := time.Duration(1+mathrand.IntN(30)) * time.Millisecond
				wg.Go(func() {
					time.Sleep(delay) // the mesh's propagation
					if err := other.dev.Configure([]Peer{peer}); err != nil {
						errs <- fmt.Errorf("configure %s's new key on %s: %w", self.dev.Name(), other.dev.Name(), err)
					}
				})
			}
		})
	}
	rotated := make(chan struct{})
	go func() { wg.Wait(); close(rotated) }()

	c := dialTCP(tb, a.pod, dst)
	_ = c.SetDeadline(time.Now().Add(5 * time.Minute))
	payload := make([]byte, 64<<10)
	sent := sha256.New()
	size := 0
	start := time.Now()
	var quietEnd time.Time
writing:
	for {
		_, _ = rand.Read(payload)
		if _, err := c.Write(payload); err != nil {
			tb.Fatalf("write at %d: %v", size, err)
		}
		sent.Write(payload)
		size += len(payload)
		if time.Since(start) > 500*time.Millisecond {
			startRotations.Do(func() { quietEnd = time.Now(); close(rotating) })
		}
		select {
		case <-rotated:
			break writing
		default:
		}
		time.Sleep(time.Millisecond) // pace: a steady stream, not a saturated one
	}
	_ = c.(*net.TCPConn).CloseWrite()
	r := <-done
	close(errs)
	for err := range errs {
		tb.Error(err)
	}
	if r.err != nil {
		tb.Fatalf("receive: %v", r.err)
	}
	if r.size != size || r.sum != [32]byte(sent.Sum(nil)) {
		tb.Fatalf("received %d bytes, not byte-exact with the %d sent", r.size, size)
	}
	gaps := func(reads []time.Time) time.Duration {
		var m time.Duration
		for i := 1; i < len(reads); i++ {
			m = max(m, reads[i].Sub(reads[i-1]))
		}
		return m
	}
	i := slices.IndexFunc(r.reads, func(t time.Time) bool { return t.After(quietEnd) })
	if i < 0 {
		i = len(r.reads)
	}
	return gaps(r.reads[i:]), gaps(r.reads[:i])
}

// BenchmarkRotationStall (not a test in `make test`: once in three runs
// so far a RotateKey's UAPI set of the private key never returned while
// the other side's Configure calls queued behind it, a hang in the
// userspace device not yet understood) reports the longest time the receiver of a TCP
// stream went without data while both nodes rotated their keys 50 times
// each at random overlapping times, beside the longest gap of the same
// stream before the rotations began.
//
//	go test -run '^$' -bench RotationStall -benchtime 1x ./tunnel/
func BenchmarkRotationStall(b *testing.B) {
	var longest, baseline time.Duration
	for range b.N {
		l, q := rotationsDuringTransfer(b, 50)
		longest, baseline = max(longest, l), max(baseline, q)
	}
	b.ReportMetric(longest.Seconds(), "longest-stall-s")
	b.ReportMetric(baseline.Seconds(), "baseline-gap-s")
}
