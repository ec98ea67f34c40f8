package agent

import "github.com/braidmesh/braid/tunnel"

// SetConfigurePeers replaces the tunnel's peer update with f, so tests can
// inject faults. Call it before Run.
func SetConfigurePeers(a *Agent, f func(dev *tunnel.Device, want []tunnel.Peer) error) {
	a.configurePeers = f
}
