package gossip

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
)

// Defaults of Config; see the package doc for the trade-off.
const (
	DefaultPort           = 7947
	DefaultProbeInterval  = 200 * time.Millisecond
	DefaultProbeTimeout   = 100 * time.Millisecond
	DefaultSuspicionMult  = 2
	DefaultGossipInterval = 100 * time.Millisecond
	// DefaultPushPullInterval is memberlist's LAN default; memberlist
	// stretches it by 1 + ceil(log2(n/32)) past 32 members (180 s at
	// 1,000), so full state syncs cost each node little at any size.
	DefaultPushPullInterval = 30 * time.Second
	DefaultRejoinInterval   = 2 * time.Second
	DefaultJoinFanout       = 3
	// DefaultStartupGrace is how long after start a member never seen
	// counts as reachable, so a starting agent drains nothing.
	DefaultStartupGrace = 5 * time.Second
)

// KeySize is the size of a gossip key: AES-256.
const KeySize = 32

// Config configures a Pool. Zero values mean the defaults above.
type Config struct {
	// Name is this member's name, unique in the mesh: MemberName(cluster, node).
	Name string
	// Addr is where the member listens and what it advertises; its port,
	// if zero, is DefaultPort. Every node of the mesh uses the same port.
	Addr netip.AddrPort
	// Keys are the gossip keys, KeySize bytes each, the first one primary
	// (used to encrypt). Empty means plaintext gossip, for tests only.
	Keys [][]byte

	ProbeInterval  time.Duration
	ProbeTimeout   time.Duration
	SuspicionMult  int
	GossipInterval time.Duration
	// PushPullInterval is how often a member syncs its full state with a
	// random other member over TCP (see DefaultPushPullInterval).
	PushPullInterval time.Duration
	// RejoinInterval is how often the Pool joins members it does not see
	// alive (up to JoinFanout at a time), which also heals partitions.
	RejoinInterval time.Duration
	JoinFanout     int
	StartupGrace   time.Duration
	// RefreshInterval is how often Health is recomputed from memberlist's
	// view, and the least time between two recomputations that membership
	// events ask for; zero means GossipInterval. Each recomputation walks
	// every member, so a process hosting many Pools (a benchmark) raises it.
	RefreshInterval time.Duration
}

// MemberName is the gossip name of node in cluster.
func MemberName(cluster, node string) string { return cluster + "/" + node }

// Member is a node the mesh state publishes.
type Member struct {
	Name string
	Addr netip.AddrPort
}

// State is what gossip knows of a member.
type State string

// States of a member.
const (
	// Unknown: never seen alive since this Pool started.
	Unknown State = "unknown"
	Alive   State = "alive"
	// Suspect: a probe failed; the member has not refuted it yet.
	Suspect State = "suspect"
	// Dead: the suspicion timed out, or the member left.
	Dead State = "dead"
)

// NodeHealth is one member's state as this node sees it.
type NodeHealth struct {
	State State `json:"state"`
	// LastSeen is when this node last knew the member alive (zero: never).
	LastSeen time.Time `json:"lastSeen,omitzero"`
}

// Pool is this node's member of the mesh's gossip pool. See the package
// doc.
type Pool struct {
	cfg Config
	log *slog.Logger
	m   *metrics

	mu      sync.Mutex
	members map[string]Member
	health  map[string]NodeHealth
	// reported is Unreachable per member as last signalled on changes.
	reported map[string]bool
	started  time.Time
	ml       *memberlist.Memberlist
	tr       *countingTransport
	keyring  *memberlist.Keyring // safe for concurrent use

	wake    chan struct{} // to Run: the members SetMembers was given changed
	events  chan struct{} // to Run: memberlist saw a member join, leave or change
	changes chan struct{} // to the consumer: health changed
}

// New validates cfg and returns a Pool; it starts nothing. reg may be nil.
func New(cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Pool, error) {
	if cfg.Name == "" {
		return nil, errors.New("new gossip pool: no member name")
	}
	if !cfg.Addr.Addr().IsValid() {
		return nil, fmt.Errorf("new gossip pool %s: no address (the node's IP)", cfg.Name)
	}
	if cfg.Addr.Port() == 0 {
		cfg.Addr = netip.AddrPortFrom(cfg.Addr.Addr(), DefaultPort)
	}
	for i, k := range cfg.Keys {
		if len(k) != KeySize {
			return nil, fmt.Errorf("new gossip pool %s: key %d is %d bytes, want %d (AES-256)", cfg.Name, i, len(k), KeySize)
		}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&cfg.ProbeInterval, DefaultProbeInterval)
	def(&cfg.ProbeTimeout, DefaultProbeTimeout)
	def(&cfg.GossipInterval, DefaultGossipInterval)
	def(&cfg.PushPullInterval, DefaultPushPullInterval)
	def(&cfg.RejoinInterval, DefaultRejoinInterval)
	def(&cfg.StartupGrace, DefaultStartupGrace)
	def(&cfg.RefreshInterval, cfg.GossipInterval)
	if cfg.SuspicionMult == 0 {
		cfg.SuspicionMult = DefaultSuspicionMult
	}
	if cfg.JoinFanout == 0 {
		cfg.JoinFanout = DefaultJoinFanout
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	return &Pool{cfg: cfg, log: log.With("component", "gossip"), m: m,
		members: map[string]Member{}, health: map[string]NodeHealth{}, reported: map[string]bool{},
		wake: make(chan struct{}, 1), events: make(chan struct{}, 1), changes: make(chan struct{}, 1)}, nil
}

// SetMembers replaces the set of members the mesh state publishes (this
// node's own entry is ignored). It never blocks.
func (p *Pool) SetMembers(ms []Member) {
	want := make(map[string]Member, len(ms))
	for _, m := range ms {
		if m.Name != p.cfg.Name && m.Addr.Addr().IsValid() {
			if m.Addr.Port() == 0 {
				m.Addr = netip.AddrPortFrom(m.Addr.Addr(), p.cfg.Addr.Port())
			}
			want[m.Name] = m
		}
	}
	p.mu.Lock()
	same := maps.Equal(want, p.members)
	p.members = want
	p.mu.Unlock()
	if !same {
		notify(p.wake)
	}
}

// Changes is signalled (coalesced) whenever a member's State changes.
func (p *Pool) Changes() <-chan struct{} { return p.changes }

// Health returns the state of every member SetMembers named. The map is a
// copy.
func (p *Pool) Health() map[string]NodeHealth {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.health)
}

// Unreachable says whether new connections should avoid member name: it is
// Suspect or Dead, or Unknown once the startup grace has passed. This node
// and members SetMembers did not name are never unreachable.
func (p *Pool) Unreachable(name string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.unreachableLocked(name)
}

func (p *Pool) unreachableLocked(name string) bool {
	h, ok := p.health[name]
	if !ok || name == p.cfg.Name {
		return false
	}
	switch h.State {
	case Suspect, Dead:
		return true
	case Unknown:
		return !p.started.IsZero() && time.Since(p.started) > p.cfg.StartupGrace
	}
	return false
}

// SetKeys installs keys (the first primary) in the running pool's keyring
// and removes the others. It fails if the pool was started without keys
// or is not running. See the package doc for rotating without a partition.
func (p *Pool) SetKeys(keys [][]byte) error {
	if len(keys) == 0 {
		return errors.New("set gossip keys: no key")
	}
	for i, k := range keys {
		if len(k) != KeySize {
			return fmt.Errorf("set gossip keys: key %d is %d bytes, want %d (AES-256)", i, len(k), KeySize)
		}
	}
	p.mu.Lock()
	ml, kr := p.ml, p.keyring
	p.mu.Unlock()
	if ml == nil {
		return errors.New("set gossip keys: pool not running")
	}
	if kr == nil {
		return errors.New("set gossip keys: pool started without encryption")
	}
	for _, k := range keys {
		if err := kr.AddKey(k); err != nil {
			return fmt.Errorf("set gossip keys: %w", err)
		}
	}
	if err := kr.UseKey(keys[0]); err != nil {
		return fmt.Errorf("set gossip keys: %w", err)
	}
	for _, old := range kr.GetKeys() {
		if !slices.ContainsFunc(keys, func(k []byte) bool { return bytes.Equal(k, old) }) {
			if err := kr.RemoveKey(old); err != nil {
				return fmt.Errorf("set gossip keys: %w", err)
			}
		}
	}
	return nil
}

// SentBytes returns the bytes this member sent so far: UDP packets and TCP
// streams.
func (p *Pool) SentBytes() (packets, streams uint64) {
	p.mu.Lock()
	tr := p.tr
	p.mu.Unlock()
	if tr == nil {
		return 0, 0
	}
	return tr.packetBytes.Load(), tr.streamBytes.Load()
}

func (p *Pool) memberlistConfig() (*memberlist.Config, error) {
	c := memberlist.DefaultLANConfig()
	c.Name = p.cfg.Name
	c.BindAddr = p.cfg.Addr.Addr().String()
	c.BindPort = int(p.cfg.Addr.Port())
	c.AdvertiseAddr = c.BindAddr
	c.AdvertisePort = c.BindPort
	c.ProbeInterval = p.cfg.ProbeInterval
	c.ProbeTimeout = p.cfg.ProbeTimeout
	c.SuspicionMult = p.cfg.SuspicionMult
	c.GossipInterval = p.cfg.GossipInterval
	c.PushPullInterval = p.cfg.PushPullInterval
	c.Logger = log.New(logWriter{p.log}, "", 0)
	c.Events = &events{p: p}
	if len(p.cfg.Keys) > 0 {
		kr, err := memberlist.NewKeyring(p.cfg.Keys, p.cfg.Keys[0])
		if err != nil {
			return nil, err
		}
		c.Keyring, p.keyring = kr, kr
		c.GossipVerifyIncoming, c.GossipVerifyOutgoing = true, true
	}
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{c.BindAddr}, BindPort: c.BindPort, Logger: c.Logger})
	if err != nil {
		return nil, err
	}
	p.tr = newCountingTransport(nt)
	c.Transport = p.tr
	return c, nil
}

// Run joins the pool and keeps Health current until ctx ends. It returns
// an error only if the member cannot start (e.g. the port is taken).
func (p *Pool) Run(ctx context.Context) error {
	p.mu.Lock()
	c, err := p.memberlistConfig()
	p.mu.Unlock()
	if err != nil {
		return fmt.Errorf("start gossip on %s: %w", p.cfg.Addr, err)
	}
	ml, err := memberlist.Create(c)
	if err != nil {
		p.tr.Shutdown()
		return fmt.Errorf("start gossip on %s: %w", p.cfg.Addr, err)
	}
	p.mu.Lock()
	p.ml, p.started = ml, time.Now()
	p.mu.Unlock()
	var wg sync.WaitGroup
	defer func() {
		_ = ml.Shutdown() // no Leave: a restarting agent should not look departed
		wg.Wait()
		p.mu.Lock()
		p.ml = nil
		p.mu.Unlock()
	}()

	poll := time.NewTicker(p.cfg.RefreshInterval)
	defer poll.Stop()
	var lastRefresh time.Time
	refresh := func() {
		p.refresh(ml)
		lastRefresh = time.Now()
	}
	rejoin := time.NewTicker(p.cfg.RejoinInterval)
	defer rejoin.Stop()
	joining := make(chan struct{}, 1) // held while a Join runs
	join := func() {
		select {
		case joining <- struct{}{}:
		default:
			return // one join at a time
		}
		addrs := p.joinTargets(ml)
		if len(addrs) == 0 {
			<-joining
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-joining }()
			if n, err := ml.Join(addrs); err != nil {
				p.log.Debug("join gossip members", "tried", len(addrs), "joined", n, "err", err)
			}
		}()
	}
	join()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-p.wake:
			refresh()
			join()
		case <-p.events:
			// Only a refresh: a join here (a push-pull of the whole member
			// list with each target) on every event of a pool that is
			// learning of many members at once would keep every member
			// pushing and pulling; members still missing are joined on
			// the rejoin tick.
			if time.Since(lastRefresh) >= p.cfg.RefreshInterval {
				refresh() // else the next tick does
			}
		case <-rejoin.C:
			join()
		case <-poll.C:
			refresh()
		}
	}
}

// joinTargets picks up to JoinFanout members that memberlist does not see
// alive or suspect.
func (p *Pool) joinTargets(ml *memberlist.Memberlist) []string {
	live := map[string]bool{}
	for _, n := range ml.Members() {
		live[n.Name] = true
	}
	p.mu.Lock()
	var cands []Member
	for name, m := range p.members {
		if !live[name] {
			cands = append(cands, m)
		}
	}
	p.mu.Unlock()
	rand.Shuffle(len(cands), func(i, j int) { cands[i], cands[j] = cands[j], cands[i] })
	var out []string
	for _, m := range cands[:min(len(cands), p.cfg.JoinFanout)] {
		out = append(out, net.JoinHostPort(m.Addr.Addr().String(), strconv.Itoa(int(m.Addr.Port()))))
	}
	return out
}

// refresh recomputes every member's state from memberlist and signals
// Changes when one changed.
func (p *Pool) refresh(ml *memberlist.Memberlist) {
	seen := map[string]memberlist.NodeStateType{}
	for _, n := range ml.Members() {
		seen[n.Name] = n.State
	}
	now := time.Now()
	p.mu.Lock()
	changed := false
	counts := map[State]int{}
	for name := range p.health {
		if _, ok := p.members[name]; !ok {
			delete(p.health, name)
			delete(p.reported, name)
			changed = true
		}
	}
	for name := range p.members {
		h, had := p.health[name]
		prev := h.State
		st, ok := seen[name]
		switch {
		case ok && st == memberlist.StateAlive:
			h.State, h.LastSeen = Alive, now
		case ok && st == memberlist.StateSuspect:
			h.State = Suspect
		case !h.LastSeen.IsZero():
			h.State = Dead
		default:
			h.State = Unknown
		}
		p.health[name] = h
		counts[h.State]++
		u := p.unreachableLocked(name)
		if r, ok := p.reported[name]; !ok || !had || r != u || prev != h.State {
			p.reported[name] = u
			changed = true
		}
	}
	p.mu.Unlock()
	for _, s := range []State{Alive, Suspect, Dead, Unknown} {
		p.m.members.WithLabelValues(string(s)).Set(float64(counts[s]))
	}
	packets, streams := p.tr.packetBytes.Load(), p.tr.streamBytes.Load()
	p.m.sent.WithLabelValues("packet").Set(float64(packets))
	p.m.sent.WithLabelValues("stream").Set(float64(streams))
	if changed {
		notify(p.changes)
	}
}

func notify(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default: // a wake-up is already pending
	}
}

// events signals Run on membership events; it never blocks.
type events struct{ p *Pool }

func (e *events) NotifyJoin(*memberlist.Node)   { notify(e.p.events) }
func (e *events) NotifyLeave(*memberlist.Node)  { notify(e.p.events) }
func (e *events) NotifyUpdate(*memberlist.Node) { notify(e.p.events) }

// logWriter turns memberlist's log lines ("[WARN] memberlist: ...") into
// slog records.
type logWriter struct{ log *slog.Logger }

func (w logWriter) Write(b []byte) (int, error) {
	msg := string(bytes.TrimSpace(b))
	level := slog.LevelDebug
	switch {
	case bytes.Contains(b, []byte("[ERR]")):
		level = slog.LevelWarn // a peer's fault as often as ours
	case bytes.Contains(b, []byte("[WARN]")):
		level = slog.LevelInfo
	}
	w.log.Log(context.Background(), level, msg)
	return len(b), nil
}

var _ io.Writer = logWriter{}
