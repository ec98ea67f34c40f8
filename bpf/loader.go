package bpf

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Defaults of Config.
const (
	DefaultPinDir         = "/sys/fs/bpf/braid"
	DefaultIPCacheEntries = 512 << 10
	DefaultServiceEntries = 16 << 10
	DefaultBackendEntries = 64 << 10
	DefaultPolicyEntries  = 64 << 10
	DefaultCTEntries      = 256 << 10
	DefaultSockRevEntries = 256 << 10
)

// Config sizes and places the datapath. Zero values mean the defaults above.
// Sizes are fixed when a map is first created: a later Load with different
// sizes fails with ErrIncompatible instead of flushing the pinned map.
type Config struct {
	// PinDir holds pinned maps and, under links/, pinned links.
	PinDir         string
	IPCacheEntries uint32
	ServiceEntries uint32
	BackendEntries uint32
	// SlotEntries bounds service-to-backend references; zero means twice
	// BackendEntries.
	SlotEntries uint32
	// PolicyEntries sizes the policy trie and the per-identity drop
	// counters.
	PolicyEntries  uint32
	CTEntries      uint32
	SockRevEntries uint32
}

func (c Config) withDefaults() Config {
	def := func(v *uint32, d uint32) {
		if *v == 0 {
			*v = d
		}
	}
	if c.PinDir == "" {
		c.PinDir = DefaultPinDir
	}
	def(&c.IPCacheEntries, DefaultIPCacheEntries)
	def(&c.ServiceEntries, DefaultServiceEntries)
	def(&c.BackendEntries, DefaultBackendEntries)
	def(&c.SlotEntries, 2*c.BackendEntries)
	def(&c.PolicyEntries, DefaultPolicyEntries)
	def(&c.CTEntries, DefaultCTEntries)
	def(&c.SockRevEntries, DefaultSockRevEntries)
	return c
}

// ErrIncompatible is returned by Load when a pinned map exists with another
// type, key, value or size than this build expects. The pinned map is left
// alone; an operator decides whether to remove it.
var ErrIncompatible = errors.New("pinned map incompatible")

// obsoleteMaps are pinned map names of earlier builds, removed by Load.
var obsoleteMaps = []string{"ct", "config", "services", "policy"}

// Objects are the loaded programs and the pinned maps. The caller owns them
// and must Close them; closing does not detach pinned links or remove pinned
// maps, so the datapath keeps running after the process exits.
type Objects struct {
	cfg  Config
	objs braidObjects

	IPCache  *IPCacheMap
	Services *ServiceMap
	Slots    *SlotMap
	Backends *BackendMap
	Policy   *PolicyMap
	// PolicyDrops counts policy drops per local identity, direction and
	// reason; the programs fill it.
	PolicyDrops *DropMap
	CT          *CTMap
}

// Load mounts bpffs if needed, opens the pinned maps under cfg.PinDir
// (creating them the first time, never flushing them) and loads the
// programs. Attach* then attaches or atomically replaces the programs.
func Load(cfg Config) (*Objects, error) {
	cfg = cfg.withDefaults()
	if err := ensureBPFFS(cfg.PinDir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(cfg.PinDir, "links"), 0o700); err != nil {
		return nil, fmt.Errorf("create pin dir: %w", err)
	}
	spec, err := loadBraid()
	if err != nil {
		return nil, err
	}
	sizes := map[string]uint32{
		braidMapIpcache:      cfg.IPCacheEntries,
		braidMapServicesV2:   cfg.ServiceEntries,
		braidMapBackends:     cfg.BackendEntries,
		braidMapBackendSlots: cfg.SlotEntries,
		braidMapPolicyV2:     cfg.PolicyEntries,
		braidMapPolicyDrops:  cfg.PolicyEntries,
		braidMapCtV2:         cfg.CTEntries,
		braidMapSockRevnat:   cfg.SockRevEntries,
	}
	for name, ms := range spec.Maps {
		if n, ok := sizes[name]; ok {
			ms.MaxEntries = n
		}
		if ms.Type != ebpf.Array || name == braidMapConfigV2 {
			ms.Pinning = ebpf.PinByName
		}
	}
	for _, name := range []string{braidMapCounters, braidMapDropRing, braidMapDropHead} {
		spec.Maps[name].Pinning = ebpf.PinByName
	}
	o := &Objects{cfg: cfg}
	err = spec.LoadAndAssign(&o.objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: cfg.PinDir}})
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return nil, fmt.Errorf("load datapath from %s: %w: %w", cfg.PinDir, ErrIncompatible, err)
	}
	if err != nil {
		return nil, fmt.Errorf("load datapath: %w", err)
	}
	// Maps an earlier build pinned under names whose layout has since
	// changed; no program of this build uses them.
	for _, name := range obsoleteMaps {
		os.Remove(filepath.Join(cfg.PinDir, name))
	}
	m := &o.objs.braidMaps
	o.IPCache = newMap[IPCacheKey, IPCacheValue](m.Ipcache, braidMapIpcache)
	o.Services = newMap[ServiceKey, ServiceValue](m.ServicesV2, braidMapServicesV2)
	o.Slots = newMap[SlotKey, BackendID](m.BackendSlots, braidMapBackendSlots)
	o.Backends = newMap[BackendID, BackendValue](m.Backends, braidMapBackends)
	o.Policy = newMap[PolicyKey, PolicyValue](m.PolicyV2, braidMapPolicyV2)
	o.PolicyDrops = newMap[DropKey, uint64](m.PolicyDrops, braidMapPolicyDrops)
	o.CT = newMap[CTKey, CTValue](m.CtV2, braidMapCtV2)
	return o, nil
}

// Config returns the effective configuration (defaults filled in).
func (o *Objects) Config() Config { return o.cfg }

// Close releases the process's handles. Pinned maps and links stay.
func (o *Objects) Close() error { return o.objs.Close() }

// SetDatapathConfig replaces the programs' runtime configuration.
func (o *Objects) SetDatapathConfig(c DatapathConfig) error {
	var zero uint32
	if err := o.objs.ConfigV2.Update(&zero, &c, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("update config: %w", err)
	}
	return nil
}

// RecentDrops returns the last policy drops the programs recorded (at most
// DropRingSize), oldest first.
func (o *Objects) RecentDrops() ([]DropEvent, error) {
	out := make([]DropEvent, 0, DropRingSize)
	for i := uint32(0); i < DropRingSize; i++ {
		var e DropEvent
		if err := o.objs.DropRing.Lookup(i, &e); err != nil {
			return nil, fmt.Errorf("read drop ring slot %d: %w", i, err)
		}
		if e.TimeNs != 0 {
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b DropEvent) int { return cmp.Compare(a.TimeNs, b.TimeNs) })
	return out, nil
}

// Counters returns the packet counters summed over CPUs.
func (o *Objects) Counters() ([]uint64, error) {
	out := make([]uint64, NumCounters)
	for i := range out {
		var per []uint64
		if err := o.objs.Counters.Lookup(uint32(i), &per); err != nil {
			return nil, fmt.Errorf("read counter %s: %w", Counter(i), err)
		}
		for _, v := range per {
			out[i] += v
		}
	}
	return out, nil
}

type hook struct {
	name string
	typ  ebpf.AttachType
	prog func(*braidPrograms) *ebpf.Program
}

var cgroupHooks = []hook{
	{"connect4", ebpf.AttachCGroupInet4Connect, func(p *braidPrograms) *ebpf.Program { return p.SockConnect4 }},
	{"connect6", ebpf.AttachCGroupInet6Connect, func(p *braidPrograms) *ebpf.Program { return p.SockConnect6 }},
	{"sendmsg4", ebpf.AttachCGroupUDP4Sendmsg, func(p *braidPrograms) *ebpf.Program { return p.SockSendmsg4 }},
	{"sendmsg6", ebpf.AttachCGroupUDP6Sendmsg, func(p *braidPrograms) *ebpf.Program { return p.SockSendmsg6 }},
	{"recvmsg4", ebpf.AttachCGroupUDP4Recvmsg, func(p *braidPrograms) *ebpf.Program { return p.SockRecvmsg4 }},
	{"recvmsg6", ebpf.AttachCGroupUDP6Recvmsg, func(p *braidPrograms) *ebpf.Program { return p.SockRecvmsg6 }},
	{"getpeername4", ebpf.AttachCgroupInet4GetPeername, func(p *braidPrograms) *ebpf.Program { return p.SockGetpeername4 }},
	{"getpeername6", ebpf.AttachCgroupInet6GetPeername, func(p *braidPrograms) *ebpf.Program { return p.SockGetpeername6 }},
}

func (o *Objects) linkPath(name string) string {
	return filepath.Join(o.cfg.PinDir, "links", name)
}

// attachOrUpdate replaces the program of the link pinned at path, or, when
// there is none (or it is defunct), attaches anew and pins the link.
func attachOrUpdate(path string, prog *ebpf.Program, attach func() (link.Link, error)) error {
	if l, err := link.LoadPinnedLink(path, nil); err == nil {
		uerr := l.Update(prog)
		l.Close()
		if uerr == nil {
			return nil
		}
		// A link whose target went away cannot be updated: replace it.
		os.Remove(path)
	} else if !errors.Is(err, os.ErrNotExist) {
		os.Remove(path)
	}
	l, err := attach()
	if err != nil {
		return err
	}
	defer l.Close()
	if err := l.Pin(path); err != nil {
		l.Close()
		return fmt.Errorf("pin link %s: %w", path, err)
	}
	return nil
}

func cgroupID(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat cgroup %s: %w", path, err)
	}
	return st.Ino, nil
}

// AttachCgroup attaches the socket-level load balancer to the cgroup v2
// directory path, or atomically replaces the programs already attached by a
// previous Load. The links are pinned: they outlive this process.
func (o *Objects) AttachCgroup(path string) error {
	id, err := cgroupID(path)
	if err != nil {
		return err
	}
	for _, h := range cgroupHooks {
		prog := h.prog(&o.objs.braidPrograms)
		lp := o.linkPath("cgroup-" + strconv.FormatUint(id, 10) + "-" + h.name)
		err := attachOrUpdate(lp, prog, func() (link.Link, error) {
			return link.AttachCgroup(link.CgroupOptions{Path: path, Attach: h.typ, Program: prog})
		})
		if err != nil {
			return fmt.Errorf("attach %s to cgroup %s: %w", h.name, path, err)
		}
	}
	return nil
}

// DetachCgroup removes the socket-level load balancer from path.
func (o *Objects) DetachCgroup(path string) error {
	id, err := cgroupID(path)
	if err != nil {
		return err
	}
	var errs []error
	for _, h := range cgroupHooks {
		errs = append(errs, unpinLink(o.linkPath("cgroup-"+strconv.FormatUint(id, 10)+"-"+h.name)))
	}
	return errors.Join(errs...)
}

func unpinLink(path string) error {
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return os.Remove(path)
	}
	defer l.Close()
	if err := l.Unpin(); err != nil {
		return err
	}
	if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) && !errors.Is(err, syscall.ENOLINK) {
		return err
	}
	return nil
}

// TCMode says how AttachTC attached.
type TCMode string

// TC attachment modes.
const (
	TCX    TCMode = "tcx"
	Clsact TCMode = "clsact"
)

const legacyPrio = 1

// AttachTC attaches tc_from_pod at ingress and tc_to_pod at egress of the
// pod-facing interface ifindex: TCX links (pinned) where the kernel has
// them, a clsact qdisc with direct-action filters otherwise. A second call
// replaces the programs atomically.
func (o *Objects) AttachTC(ifindex int) (TCMode, error) {
	progs := []struct {
		dir    string
		typ    ebpf.AttachType
		parent uint32
		prog   *ebpf.Program
	}{
		{"ingress", ebpf.AttachTCXIngress, netlink.HANDLE_MIN_INGRESS, o.objs.TcFromPod},
		{"egress", ebpf.AttachTCXEgress, netlink.HANDLE_MIN_EGRESS, o.objs.TcToPod},
	}
	mode := TCX
	for _, p := range progs {
		lp := o.linkPath("tcx-" + strconv.Itoa(ifindex) + "-" + p.dir)
		err := attachOrUpdate(lp, p.prog, func() (link.Link, error) {
			return link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: p.prog, Attach: p.typ})
		})
		if errors.Is(err, ebpf.ErrNotSupported) {
			mode = Clsact
			err = replaceLegacyFilter(ifindex, p.parent, p.prog)
		}
		if err != nil {
			return "", fmt.Errorf("attach tc %s on ifindex %d: %w", p.dir, ifindex, err)
		}
	}
	return mode, nil
}

func replaceLegacyFilter(ifindex int, parent uint32, prog *ebpf.Program) error {
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscReplace(qdisc); err != nil {
		return fmt.Errorf("add clsact qdisc: %w", err)
	}
	f := &netlink.BpfFilter{
		FilterAttrs:  netlink.FilterAttrs{LinkIndex: ifindex, Parent: parent, Handle: 1, Protocol: unix.ETH_P_ALL, Priority: legacyPrio},
		Fd:           prog.FD(),
		Name:         "braid",
		DirectAction: true,
	}
	// Replace with the same handle and priority swaps the program in place.
	return netlink.FilterReplace(f)
}

// DetachTC removes Braid's tc programs from ifindex, TCX or legacy.
func (o *Objects) DetachTC(ifindex int) error {
	var errs []error
	for _, dir := range []string{"ingress", "egress"} {
		errs = append(errs, unpinLink(o.linkPath("tcx-"+strconv.Itoa(ifindex)+"-"+dir)))
	}
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		f := &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{LinkIndex: ifindex, Parent: parent, Handle: 1, Protocol: unix.ETH_P_ALL, Priority: legacyPrio}}
		if err := netlink.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("delete legacy filter: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Unpin removes every pinned link and map under the pin directory: the
// datapath stops when the last process holding it closes. For uninstall and
// tests.
func (o *Objects) Unpin() error {
	links, _ := filepath.Glob(filepath.Join(o.cfg.PinDir, "links", "*"))
	var errs []error
	for _, l := range links {
		errs = append(errs, unpinLink(l))
	}
	errs = append(errs, os.RemoveAll(o.cfg.PinDir))
	return errors.Join(errs...)
}

func ensureBPFFS(pinDir string) error {
	// The pin directory may not exist yet: check its nearest existing ancestor.
	dir := filepath.Clean(pinDir)
	for {
		if _, err := os.Stat(dir); err == nil || dir == "/" {
			break
		}
		dir = filepath.Dir(dir)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", dir, err)
	}
	if st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	const root = "/sys/fs/bpf"
	if dir != root {
		return fmt.Errorf("pin dir %s is not on bpffs", pinDir)
	}
	if err := unix.Mount("bpf", root, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", root, err)
	}
	return nil
}
