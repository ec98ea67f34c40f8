package clustermesh

// PolicyDirection is the direction of a policy rule, seen from the local
// pod.
type PolicyDirection uint8

// Policy directions.
const (
	PolicyIngress PolicyDirection = iota // into the local pod
	PolicyEgress                         // from the local pod
)

func (d PolicyDirection) String() string {
	if d == PolicyEgress {
		return "egress"
	}
	return "ingress"
}

// AnyPeer as a PolicyRule's Peer allows every peer.
const AnyPeer NumericIdentity = 0

// PolicyRule allows traffic between a local identity and a peer (AnyPeer:
// every peer) in one direction. Protocol "" is every protocol and port;
// Port 0 is every port of Protocol; EndPort, when not 0, ends a range that
// starts at Port. The policy compiler (clustermesh/policy) produces rules
// and the datapath (clustermesh/datapath) enforces them.
type PolicyRule struct {
	Direction PolicyDirection
	Local     NumericIdentity
	Peer      NumericIdentity
	Protocol  Protocol
	Port      uint16
	EndPort   uint16
}

// PolicyIsolation says Identity is selected by a policy of Direction:
// traffic in that direction that no PolicyRule allows is dropped.
type PolicyIsolation struct {
	Direction PolicyDirection
	Identity  NumericIdentity
}
