package netnstest

import (
	"encoding/binary"
	"errors"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Capture records the frames crossing one interface, in both directions,
// through an AF_PACKET socket. Stop ends it and returns what it saw.
type Capture struct {
	fd      int
	dropped uint32
	wg      sync.WaitGroup
	mu      sync.Mutex
	frames  [][]byte
	stop    chan struct{}
	once    sync.Once
}

// MaxFrames bounds the frames a Capture keeps.
const MaxFrames = 1 << 18

// StartCapture opens the capture on ifname inside n; t's cleanup stops it.
func (n *NS) StartCapture(t testing.TB, ifname string) *Capture {
	t.Helper()
	c := &Capture{stop: make(chan struct{})}
	n.Do(t, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		proto := htons(unix.ETH_P_ALL)
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto))
		if err != nil {
			return err
		}
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20)
		tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return err
		}
		c.fd = fd
		return nil
	})
	c.wg.Add(1)
	go c.loop()
	t.Cleanup(func() { c.Stop() })
	return c
}

func (c *Capture) loop() {
	defer c.wg.Done()
	buf := make([]byte, 1<<17)
	for {
		select {
		case <-c.stop:
			return
		default:
		}
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		c.mu.Lock()
		if len(c.frames) < MaxFrames {
			c.frames = append(c.frames, append([]byte(nil), buf[:n]...))
		}
		c.mu.Unlock()
	}
}

// Frames returns the frames seen so far; the capture goes on.
func (c *Capture) Frames() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.frames)
}

// Stop ends the capture and returns the frames seen and the number the
// kernel dropped for lack of buffer. It may be called more than once.
func (c *Capture) Stop() (frames [][]byte, dropped uint32) {
	c.once.Do(func() {
		close(c.stop)
		c.wg.Wait()
		if st, err := unix.GetsockoptTpacketStats(c.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS); err == nil {
			c.dropped = st.Drops
		}
		unix.Close(c.fd)
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.frames, c.dropped
}

func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}
