package gossip

import (
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// countingTransport is a memberlist transport that counts the bytes it
// sends, by packets (UDP) and streams (TCP push-pull and fallback pings).
type countingTransport struct {
	memberlist.Transport
	packetBytes, streamBytes atomic.Uint64
	streams                  chan net.Conn
	done                     chan struct{} // Shutdown began: stop forwarding
	innerDone                chan struct{} // the wrapped transport shut down
	once                     sync.Once
}

func newCountingTransport(t memberlist.Transport) *countingTransport {
	c := &countingTransport{Transport: t, streams: make(chan net.Conn), done: make(chan struct{}), innerDone: make(chan struct{})}
	go c.forwardStreams()
	return c
}

// forwardStreams wraps accepted streams so replies are counted too. After
// Shutdown began it closes what still arrives: the wrapped transport's
// listener blocks on handing over a stream, and its Shutdown waits for it.
func (c *countingTransport) forwardStreams() {
	in := c.Transport.StreamCh()
	for {
		select {
		case conn := <-in:
			select {
			case c.streams <- &countingConn{Conn: conn, n: &c.streamBytes}:
			case <-c.done:
				conn.Close()
			}
		case <-c.innerDone:
			return
		}
	}
}

func (c *countingTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	c.packetBytes.Add(uint64(len(b)))
	return c.Transport.WriteTo(b, addr)
}

func (c *countingTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	conn, err := c.Transport.DialTimeout(addr, timeout)
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: conn, n: &c.streamBytes}, nil
}

func (c *countingTransport) StreamCh() <-chan net.Conn { return c.streams }

func (c *countingTransport) Shutdown() error {
	var err error
	c.once.Do(func() {
		close(c.done)
		err = c.Transport.Shutdown()
		close(c.innerDone)
	})
	return err
}

type countingConn struct {
	net.Conn
	n *atomic.Uint64
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.n.Add(uint64(n))
	return n, err
}
