package node

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
)

// podGateway is the address every pod's default route points at: the first
// address of the node's pod CIDR, put as a /32 on each pod's host-side veth.
// podIfName is the pod side of the veth pair.
const podIfName = "eth0"

// VethName is the host side of a pod's veth, in the node's network
// namespace, derived from the pod's UID.
func VethName(uid string) string { return vethName(uid) }

// vethName derives the host-side interface name from the pod UID (15 bytes
// at most, unique per node).
func vethName(uid string) string {
	sum := sha256.Sum256([]byte(uid))
	return "blp" + hex.EncodeToString(sum[:])[:12]
}

// ipam hands out addresses of the node's pod CIDR: not the network address,
// not the gateway (the first host address), not the broadcast address.
type ipam struct {
	mu     sync.Mutex
	prefix netip.Prefix
	used   map[netip.Addr]string // address -> pod UID
}

func newIPAM(cidr string) (*ipam, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return nil, fmt.Errorf("pod CIDR %q: %w", cidr, err)
	}
	p = p.Masked()
	if !p.Addr().Is4() || p.Bits() > 30 {
		return nil, fmt.Errorf("pod CIDR %s: need an IPv4 prefix of /30 or larger", p)
	}
	return &ipam{prefix: p, used: map[netip.Addr]string{}}, nil
}

func (a *ipam) gateway() netip.Addr { return a.prefix.Addr().Next() }

func (a *ipam) broadcast() netip.Addr {
	b := a.prefix.Addr().As4()
	host := uint32(1)<<(32-a.prefix.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// allocate returns the lowest free address for uid (the same one again if uid
// already has one).
func (a *ipam) allocate(uid string) (netip.Addr, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for ip, owner := range a.used {
		if owner == uid {
			return ip, nil
		}
	}
	last := a.broadcast()
	for ip := a.gateway().Next(); a.prefix.Contains(ip) && ip != last; ip = ip.Next() {
		if _, taken := a.used[ip]; !taken {
			a.used[ip] = uid
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("pod CIDR %s is exhausted (%d pods)", a.prefix, len(a.used))
}

func (a *ipam) release(ip netip.Addr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.used, ip)
}

// sandboxRecord is what CleanupLeftovers needs to undo a pod's sandbox; it
// is written to <StateDir>/pods/<uid>/sandbox.json before anything is created.
type sandboxRecord struct {
	UID       string `json:"uid"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Veth      string `json:"veth"`
	Cgroup    string `json:"cgroup"`
	IP        string `json:"ip"`
}

const recordFile = "sandbox.json"

func writeRecord(dir string, r sandboxRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, recordFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write sandbox record: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, recordFile)); err != nil {
		return fmt.Errorf("write sandbox record: %w", err)
	}
	return nil
}

// sandbox is a pod's network namespace, veth pair, address and cgroup.
type sandbox struct {
	rec     sandboxRecord
	dir     string // <StateDir>/pods/<uid>
	ns      *podNamespaces
	ip      netip.Addr
	cgroup  string
	hostNet bool // the pod uses the node's network namespace
}

// createSandbox builds the pod's sandbox. On error, what was created is
// removed again.
func (n *node) createSandbox(pod *corev1.Pod) (_ *sandbox, err error) {
	uid := string(pod.UID)
	dir := filepath.Join(n.cfg.StateDir, "pods", uid)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create pod dir: %w", err)
	}
	hostNet := pod.Spec.HostNetwork
	sb := &sandbox{
		dir:     dir,
		hostNet: hostNet,
		ns:      &podNamespaces{net: netns.None()},
		cgroup:  filepath.Join(n.cfg.CgroupParent, podCgroupName(uid)),
		rec: sandboxRecord{
			UID: uid, Namespace: pod.Namespace, Name: pod.Name,
			Cgroup: filepath.Join(n.cfg.CgroupParent, podCgroupName(uid)),
		},
	}
	if hostNet {
		// The node's own network: its address, no veth.
		sb.ip, _ = netip.AddrFromSlice(n.cfg.NodeIP.To4())
	} else {
		if sb.ip, err = n.ipam.allocate(uid); err != nil {
			return nil, err
		}
		sb.rec.Veth = vethName(uid)
	}
	sb.rec.IP = sb.ip.String()
	defer func() {
		if err != nil {
			err = errors.Join(err, n.destroySandbox(sb))
		}
	}()
	if err := writeRecord(dir, sb.rec); err != nil {
		return sb, err
	}
	if err := os.Mkdir(sb.cgroup, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return sb, fmt.Errorf("create pod cgroup: %w", err)
	}
	hostname := podHostname(pod)
	if hostNet {
		hostname = n.cfg.NodeName
	}
	if sb.ns, err = n.spawn.newPodNamespaces(hostname, hostNet); err != nil {
		return sb, err
	}
	if hostNet {
		return sb, nil
	}
	if n.cfg.DNS.IsValid() && pod.Spec.DNSPolicy != corev1.DNSDefault && pod.Spec.DNSPolicy != corev1.DNSNone {
		conf := filepath.Join(dir, "resolv.conf")
		if err := os.WriteFile(conf, []byte(resolvConf(n.cfg.DNS, pod.Namespace)), 0o644); err != nil {
			return sb, fmt.Errorf("write resolv.conf: %w", err)
		}
		sb.ns.resolvConf, sb.ns.exe = conf, n.exe
	}
	if err := n.plumb(sb); err != nil {
		return sb, fmt.Errorf("connect pod network namespace: %w", err)
	}
	return sb, nil
}

// plumb creates the veth pair and addresses and routes on both sides.
func (n *node) plumb(sb *sandbox) error {
	gw := n.ipam.gateway()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: sb.rec.Veth},
		PeerName:      podIfName,
		PeerNamespace: netlink.NsFd(int(sb.ns.net)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s: %w", sb.rec.Veth, err)
	}
	host, err := netlink.LinkByName(sb.rec.Veth)
	if err != nil {
		return fmt.Errorf("find veth %s: %w", sb.rec.Veth, err)
	}
	gwNet := &net.IPNet{IP: gw.AsSlice(), Mask: net.CIDRMask(32, 32)}
	if err := netlink.AddrAdd(host, &netlink.Addr{IPNet: gwNet}); err != nil {
		return fmt.Errorf("address veth %s: %w", sb.rec.Veth, err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return fmt.Errorf("set veth %s up: %w", sb.rec.Veth, err)
	}
	podNet := &net.IPNet{IP: sb.ip.AsSlice(), Mask: net.CIDRMask(32, 32)}
	if err := netlink.RouteReplace(&netlink.Route{
		LinkIndex: host.Attrs().Index, Dst: podNet, Scope: netlink.SCOPE_LINK, Src: gw.AsSlice(),
	}); err != nil {
		return fmt.Errorf("route to pod %s: %w", sb.ip, err)
	}

	h, err := netlink.NewHandleAt(sb.ns.net)
	if err != nil {
		return fmt.Errorf("netlink in pod namespace: %w", err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("pod loopback: %w", err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set pod loopback up: %w", err)
	}
	eth, err := h.LinkByName(podIfName)
	if err != nil {
		return fmt.Errorf("pod %s: %w", podIfName, err)
	}
	if err := h.AddrAdd(eth, &netlink.Addr{IPNet: podNet}); err != nil {
		return fmt.Errorf("address pod %s: %w", podIfName, err)
	}
	if err := h.LinkSetUp(eth); err != nil {
		return fmt.Errorf("set pod %s up: %w", podIfName, err)
	}
	if err := h.RouteReplace(&netlink.Route{LinkIndex: eth.Attrs().Index, Dst: gwNet, Scope: netlink.SCOPE_LINK}); err != nil {
		return fmt.Errorf("pod route to gateway %s: %w", gw, err)
	}
	if err := h.RouteReplace(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: gw.AsSlice()}); err != nil {
		return fmt.Errorf("pod default route via %s: %w", gw, err)
	}
	return nil
}

// destroySandbox kills what is left in the pod's cgroup and removes the
// cgroup, the veth (and so its route) and the namespace handle. It is safe
// on a partly built sandbox and when called twice.
func (n *node) destroySandbox(sb *sandbox) error {
	var errs []error
	errs = append(errs, killCgroup(sb.cgroup, cgroupKillTimeout))
	if sb.rec.Veth == "" {
		// hostNetwork: nothing of ours in the network
	} else if l, err := netlink.LinkByName(sb.rec.Veth); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("delete veth %s: %w", sb.rec.Veth, err))
		}
	}
	sb.ns.close()
	if sb.ip.IsValid() && !sb.hostNet {
		n.ipam.release(sb.ip)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	// The record goes last: while anything could be left, it stays.
	if err := os.Remove(filepath.Join(sb.dir, recordFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove sandbox record: %w", err)
	}
	return nil
}
