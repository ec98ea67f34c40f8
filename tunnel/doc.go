// Package tunnel owns a node's WireGuard interface: its key, its peers, the
// routes to remote pods through it and, in strict mode, the firewall rules
// that keep remote pod traffic from leaving the node unencrypted.
//
// # Lifecycle
//
// New validates a Config and loads the node's private key from
// Config.StateDir, generating it on first use (file KeyFileName, mode 0600).
// It creates no interface and starts nothing, so PublicKey can be published
// before the device exists. Open creates the interface in Config.Netns:
//
//   - where the kernel has WireGuard, a kernel link made over netlink;
//   - elsewhere, wireguard-go inside this process, serving its UAPI socket
//     at /var/run/wireguard/NAME.sock, so wgctrl and `wg show NAME` work the
//     same way. UAPI sockets share one directory across network namespaces,
//     so Config.Name must be unique on the machine. Open removes a stale
//     socket of its own name and fails with ErrInUse if a live process
//     serves it.
//
// Both kinds are configured through wgctrl. Close removes the interface,
// its routes, the UAPI socket and the strict rules, and waits for every
// goroutine the Device started; it is idempotent. Methods other than
// PublicKey, Name and KeyChanges return ErrNotOpen before Open and
// ErrClosed after Close.
//
// # Peers
//
// Configure is declarative: it makes the peer set equal to the given one
// and sends only removals and changes, so unchanged peers keep their
// sessions and counters; a second call with the same peers writes nothing.
// A peer's allowed IPs are its pod CIDRs and its node IP (Peer.AllowedIPs);
// its pod CIDRs, and nothing else, are routed through the device. Errors
// about one peer read "configure peer KEYPREFIX: ..." and do not stop the
// other peers from being applied.
//
// # Keys
//
// Private keys are never logged, returned or put in errors; logs and Stats
// use ShortKey of public keys. RotateKey (and the schedule set by
// Config.RotationInterval) switches the device to a new key, saves it, and
// offers the new public key on KeyChanges for the caller to publish.
// WireGuard cannot accept two keys at once: sessions with peers stop until
// each peer is configured with the new public key, and TCP retransmits
// what was lost meanwhile. Setting Config.PersistentKeepalive makes the
// remote side start the new session as soon as it learns the key.
//
// # Strict mode
//
// With Config.Strict, Open installs an nftables table (inet braid-NAME) in
// the device's netns before creating the interface. Packets to
// Config.StrictCIDRs, or to any remote pod CIDR Configure has seen, that
// leave through any interface other than the device (or loopback) are
// dropped and counted, unless they are for Config.LocalPodCIDRs. So a pod
// whose peer is unknown or removed is unreachable rather than reached in
// plaintext. Dropped and Stats report the count.
//
// # Concurrency
//
// All methods are safe for concurrent use. Open, Configure, RotateKey,
// Stats, Dropped and Close are serialized and do device I/O; Stats is
// meant for a periodic collector, not a request path.
//
// # Network namespaces
//
// The interface, its UDP sockets, routes and rules live in Config.Netns.
// The Device switches a locked OS thread into that netns only to create
// them; the rest of the process stays where it is.
package tunnel
