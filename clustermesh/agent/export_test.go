package agent

import (
	"net"

	"github.com/braidmesh/braid/tunnel"
)

// SetConfigurePeers replaces the tunnel's peer update with f, so tests can
// inject faults. Call it before Run.
func SetConfigurePeers(a *Agent, f func(dev *tunnel.Device, want []tunnel.Peer) error) {
	a.configurePeers = f
}

// SetInterfaceByName replaces the lookup of the tunnel device's index
// with f, so tests can inject faults. Call it before Run.
func SetInterfaceByName(a *Agent, f func(name string) (*net.Interface, error)) {
	a.interfaceByName = f
}
