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
// goroutine the Device started (except, on a wedged device, wireguard-go's
// own, which cannot be stopped); it is idempotent. Methods other than
// PublicKey, Keys, Name and KeyChanges return ErrNotOpen before Open and
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
// use ShortKey of public keys. A node's public key is its identity in
// WireGuard, and a device holds one private key at a time, so a rotation
// is a handover between two identities, in two phases:
//
//  1. Prepare. PrepareKey generates the next key and saves it
//     (NextKeyFileName; a restart resumes the handover). The node publishes
//     it (Keys().Next) beside its current key. Each peer passes it to
//     Configure as Peer.NextPublicKey, which installs it on standby: a
//     second entry for the node with its endpoint but no allowed IPs and no
//     keepalive, carrying nothing and starting nothing, but able to answer
//     a handshake made with the new key. A peer publishes the next keys it
//     has installed (Keys().Prepared): its acknowledgement.
//  2. Switch. The node switches (CommitKey) once HandoverReady: every peer
//     of its last Configure lists the next key in Peer.Prepared, and no
//     peer whose current key sorts before the node's has a handover of its
//     own in flight (a total order, so two nodes never switch at once
//     towards each other, which would leave each one's handshake aimed at
//     a key the other just dropped). The switch sends every peer a
//     keepalive, so each new session starts with a handshake and a
//     keepalive rather than with data.
//
// A peer completes the handover by itself, without waiting for the mesh.
// A userspace device reads the sender's static key from every handshake
// initiation it receives while some next key stands by (the first steps
// of the responder's Noise handshake, including the proof that the sender
// holds the private key, tried with both keys while the device's own key
// changes); when wireguard-go answers an initiation from a standby key,
// the node's allowed IPs move to that key and the old entry goes before
// the response leaves, so the sender's new session loses nothing, and
// until then this side's traffic keeps the old session, which the sender
// still receives. Moved earlier, the traffic would find the new entry
// without a session and start a handshake crossing the sender's: both
// sides would end up responders waiting for each other, with no new
// initiation allowed for 5 s (wireguard-go's REKEY_TIMEOUT). For the same
// reason the new entry's keepalive is turned on only once its session is
// confirmed, and a node's record that shows the new key as current before
// its handshake arrived leaves the old key carrying the traffic. Otherwise
// (a kernel device, or a response held up past promoteWait) the device
// watches for the standby key's first handshake, every PromotePoll or
// every millisecond after a handshake message, and moves the allowed IPs
// then; packets of the new session that arrive before are dropped and TCP
// retransmits them. Until the switch the old sessions carry all traffic.
//
// Handover runs both phases and waits for readiness until its context
// ends; scheduled rotation (Config.RotationInterval, jittered ±10 %,
// deferred by RotationSettle after a peer's key changed) uses it and
// switches anyway after Config.HandoverTimeout, so a peer that is down does
// not hold rotation back for ever (it resumes once it learns the key).
// RotateKey switches at once, for a device without peers or a manual
// rotation. KeyChanges delivers the current public key after every change
// of Keys (prepare, switch, acknowledgements) for the caller to publish.
//
// wireguard-go can deadlock if its private key changes while it consumes a
// handshake response (its SetPrivateKey and ConsumeMessageResponse take
// the same two locks in opposite orders). A userspace device therefore
// holds handshake responses back in its UDP bind for the moment of the
// change, and bounds the change (DefaultSetKeyTimeout): past it the Device
// is wedged, and every method returns ErrWedged, naming the fix (restart
// the agent), instead of hanging.
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
// All methods are safe for concurrent use. Open, Configure, PrepareKey,
// CommitKey, RotateKey, Stats, Dropped and Close are serialized and do
// device I/O; Stats is meant for a periodic collector, not a request path.
// Handover blocks until its peers are ready or its context ends.
//
// # Network namespaces
//
// The interface, its UDP sockets, routes and rules live in Config.Netns.
// The Device switches a locked OS thread into that netns only to create
// them; the rest of the process stays where it is.
package tunnel
