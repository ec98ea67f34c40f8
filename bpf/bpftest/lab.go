package bpftest

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// LB is a socket-LB lab: a client namespace joined by veth pairs to two
// backend namespaces, "local" and "remote", each running a TCP and a UDP
// server on port BackendPort for both families that answer with their name.
type LB struct {
	Client, Local, Remote netns.NsHandle
	// Addresses of the backends.
	LocalV4, LocalV6, RemoteV4, RemoteV6 netip.Addr
}

// BackendPort is where lab backends listen.
const BackendPort = 8080

// NewLB builds the lab; everything goes away at cleanup.
func NewLB(t testing.TB) *LB {
	t.Helper()
	lab := &LB{
		Client: NetNS(t), Local: NetNS(t), Remote: NetNS(t),
		LocalV4: netip.MustParseAddr("10.201.1.2"), LocalV6: netip.MustParseAddr("fd00:201:1::2"),
		RemoteV4: netip.MustParseAddr("10.201.2.2"), RemoteV6: netip.MustParseAddr("fd00:201:2::2"),
	}
	p := netip.MustParsePrefix
	Veth(t, lab.Client, "tolocal", []netip.Prefix{p("10.201.1.1/24"), p("fd00:201:1::1/64")},
		lab.Local, "eth0", []netip.Prefix{p("10.201.1.2/24"), p("fd00:201:1::2/64")})
	Veth(t, lab.Client, "toremote", []netip.Prefix{p("10.201.2.1/24"), p("fd00:201:2::1/64")},
		lab.Remote, "eth0", []netip.Prefix{p("10.201.2.2/24"), p("fd00:201:2::2/64")})
	Serve(t, lab.Local, "local", BackendPort)
	Serve(t, lab.Remote, "remote", BackendPort)
	return lab
}

// Serve runs TCP and UDP servers on [::]:port in ns (dual-stack). A TCP
// server writes name and a newline, then echoes; a UDP server answers each
// datagram with name.
func Serve(t testing.TB, ns netns.NsHandle, name string, port int) {
	t.Helper()
	var ln net.Listener
	var pc net.PacketConn
	err := Do(ns, func() error {
		var err error
		addr := net.JoinHostPort("::", strconv.Itoa(port))
		if ln, err = net.Listen("tcp", addr); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("serve %s: %v", name, err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); pc.Close(); wg.Wait() })
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				if _, err := io.WriteString(c, name+"\n"); err != nil {
					return
				}
				io.Copy(c, c)
			}()
		}
	}()
	go func() {
		defer wg.Done()
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(name), from)
		}
	}()
}

// Ask connects from ns to vip over network ("tcp" or "udp"), returns the
// name the backend answers with and the peer address the client sees.
func Ask(ns netns.NsHandle, network string, vip netip.AddrPort) (name string, peer netip.AddrPort, err error) {
	var c net.Conn
	err = Do(ns, func() error {
		var err error
		c, err = net.DialTimeout(network, vip.String(), 2*time.Second)
		return err
	})
	if err != nil {
		return "", peer, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if network == "udp" {
		if _, err := c.Write([]byte("?")); err != nil {
			return "", peer, err
		}
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		if err != nil {
			return "", peer, err
		}
		name = string(buf[:n])
	} else {
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return "", peer, err
		}
		name = strings.TrimSuffix(line, "\n")
	}
	ap, ok := c.RemoteAddr().(interface{ AddrPort() netip.AddrPort })
	if !ok {
		return name, peer, errors.New("remote address without AddrPort")
	}
	return name, ap.AddrPort(), nil
}
