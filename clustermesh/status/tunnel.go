package status

import "time"

// TunnelStatus is a node's WireGuard device as its agent last sampled it
// (agents with a tunnel only). `braid diagnose` reads it to check MTUs,
// reachability of the WireGuard port between nodes and strict-mode drops.
type TunnelStatus struct {
	Device     string `json:"device"`
	ListenPort int    `json:"listenPort"`
	// MTU is the device's MTU; Overhead is what WireGuard adds to each
	// packet on the underlay (60 bytes over IPv4, 80 over IPv6).
	MTU      int `json:"mtu"`
	Overhead int `json:"overhead"`
	// UnderlayDevice and UnderlayMTU are the link holding the node's
	// address; empty and zero when it was not found.
	UnderlayDevice string `json:"underlayDevice,omitempty"`
	UnderlayMTU    int    `json:"underlayMTU,omitempty"`
	// KeepaliveSeconds is the persistent keepalive set on every peer: a
	// peer that can reach this node sends at least that often.
	KeepaliveSeconds float64 `json:"keepaliveSeconds,omitempty"`
	// Strict says strict mode is on; StrictDrops counts the packets it
	// dropped (to remote pods, about to leave outside the tunnel) since the
	// device opened.
	Strict      bool   `json:"strict,omitempty"`
	StrictDrops uint64 `json:"strictDrops,omitempty"`
	// SampledAt is when the device was read; Error is why the last read
	// failed (the fields above are then from the read before).
	SampledAt time.Time    `json:"sampledAt,omitzero"`
	Error     string       `json:"error,omitempty"`
	Peers     []TunnelPeer `json:"peers,omitempty"`
}

// TunnelPeer is one WireGuard peer of a node.
type TunnelPeer struct {
	// Name is "<cluster>/<node>".
	Name     string `json:"name"`
	Endpoint string `json:"endpoint,omitempty"`
	// HandshakeAgeSeconds is the age of the latest handshake; -1 when none
	// completed yet.
	HandshakeAgeSeconds float64 `json:"handshakeAgeSeconds"`
	// SilentSeconds is how long nothing has been received from the peer
	// (since the agent first saw it configured, if nothing ever was).
	SilentSeconds float64 `json:"silentSeconds"`
	RxBytes       int64   `json:"rxBytes"`
	TxBytes       int64   `json:"txBytes"`
	// PathMTU is the MTU the kernel learned for the path to the peer's
	// endpoint (from ICMP "fragmentation needed"); zero when it learned
	// none, i.e. the underlay's MTU applies.
	PathMTU int `json:"pathMTU,omitempty"`
}
