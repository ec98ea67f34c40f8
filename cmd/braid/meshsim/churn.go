package meshsim

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/sim"
)

// op is one churn change as the driver applied it.
type op struct {
	kind    string
	cluster clustermesh.ClusterName
	// service is "namespace/name" for endpoint changes; empty for joins
	// and leaves.
	service string
	// want is what a consumer's observation must show: the service's
	// backend digest after the change, or wantJoined / wantGone.
	want  uint64
	start int64 // Unix nanoseconds, just before the change was handed over
}

const (
	wantJoined uint64 = 1
	wantGone   uint64 = 2
)

// churner applies churn to the mesh's clusters.
type churner struct {
	clusters []*simCluster // by ID - 1
	sh       shape
	mix      Mix
	rnd      *rand.Rand
	log      *slog.Logger

	mu      sync.Mutex
	ops     []op
	applied map[string]int
	// fallbacks counts kinds drawn that could not be applied (no cluster
	// to join or leave, no room to scale) and were replaced by a flap.
	fallbacks int
	errs      []error

	wg sync.WaitGroup // joins and leaves in flight
}

func (ch *churner) record(o op) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	ch.ops = append(ch.ops, o)
	ch.applied[o.kind]++
}

func (ch *churner) fail(err error) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	ch.errs = append(ch.errs, err)
}

// step applies one change of a kind drawn from the mix.
func (ch *churner) step(ctx context.Context) {
	kind := ch.mix.pick(ch.rnd)
	ok := false
	switch kind {
	case opJoin:
		ok = ch.join(ctx)
	case opLeave:
		ok = ch.leave(ctx)
	case opScaleUp:
		ok = ch.scaleUp()
	case opScaleDown:
		ok = ch.scaleDown()
	}
	if !ok {
		if kind != opFlap {
			ch.mu.Lock()
			ch.fallbacks++
			ch.mu.Unlock()
		}
		ch.flap()
	}
}

// pickActive returns a random active cluster, locked; nil if none.
func (ch *churner) pickActive() *simCluster {
	for range 64 {
		c := ch.clusters[ch.rnd.IntN(len(ch.clusters))]
		c.mu.Lock()
		if c.status == active {
			return c
		}
		c.mu.Unlock()
	}
	for _, c := range ch.clusters {
		c.mu.Lock()
		if c.status == active {
			return c
		}
		c.mu.Unlock()
	}
	return nil
}

// upsertService hands service i of c (locked) to its publisher and records
// the change.
func (ch *churner) upsertService(c *simCluster, kind string, i int) {
	svc := &c.state.Services[i]
	o := op{kind: kind, cluster: c.cfg.Name, service: svc.NamespacedName(), want: digest(svc.Backends), start: time.Now().UnixNano()}
	if err := c.pub.Upsert(cloneService(svc)); err != nil {
		ch.fail(err)
		return
	}
	ch.record(o)
}

func (ch *churner) flap() {
	c := ch.pickActive()
	if c == nil {
		return
	}
	defer c.mu.Unlock()
	i := ch.rnd.IntN(len(c.state.Services))
	svc := &c.state.Services[i]
	if len(svc.Backends) == 0 {
		return
	}
	b := &svc.Backends[ch.rnd.IntN(len(svc.Backends))]
	b.Ready = !b.Ready
	ch.upsertService(c, opFlap, i)
}

func (ch *churner) scaleUp() bool {
	c := ch.pickActive()
	if c == nil {
		return false
	}
	defer c.mu.Unlock()
	n := ch.rnd.IntN(len(c.state.Nodes))
	if c.nextPod[n] >= 254 {
		return false
	}
	i := ch.rnd.IntN(len(c.state.Services))
	svc := &c.state.Services[i]
	node := c.state.Nodes[n]
	ip := sim.PodIP(node.PodCIDRs[0], c.nextPod[n])
	c.nextPod[n]++
	var id clustermesh.NumericIdentity
	for _, idn := range c.state.Identities {
		if idn.Labels["app"] == svc.Name {
			id = idn.ID
		}
	}
	entry := clustermesh.IPEntry{Prefix: netip.PrefixFrom(ip, 32), Cluster: c.cfg.Name, Identity: id, HostIP: node.IPs[0]}
	c.state.IPs = append(c.state.IPs, entry)
	if err := c.pub.Upsert(&entry); err != nil {
		ch.fail(err)
		return true
	}
	svc.Backends = append(svc.Backends, clustermesh.Backend{IP: ip, Ports: []clustermesh.BackendPort{{Name: "http", Port: 8080}},
		Node: node.Name, Zone: node.Zone, Ready: true, Serving: true})
	ch.upsertService(c, opScaleUp, i)
	return true
}

func (ch *churner) scaleDown() bool {
	c := ch.pickActive()
	if c == nil {
		return false
	}
	defer c.mu.Unlock()
	i := ch.rnd.IntN(len(c.state.Services))
	svc := &c.state.Services[i]
	if len(svc.Backends) <= 1 {
		return false
	}
	j := ch.rnd.IntN(len(svc.Backends))
	gone := svc.Backends[j].IP
	svc.Backends = slices.Delete(svc.Backends, j, j+1)
	ch.upsertService(c, opScaleDown, i)
	k := slices.IndexFunc(c.state.IPs, func(e clustermesh.IPEntry) bool { return e.Prefix.Addr() == gone })
	if k >= 0 {
		c.pub.Delete(c.state.IPs[k].Key())
		c.state.IPs = slices.Delete(c.state.IPs, k, k+1)
	}
	return true
}

// join starts the publisher of the cluster that has been out longest
// (never-started ones first), in the background.
func (ch *churner) join(ctx context.Context) bool {
	var pick *simCluster
	for _, c := range ch.clusters {
		c.mu.Lock()
		if c.status == inactive && (pick == nil || c.leftAt.Before(pick.leftAt)) {
			pick = c
		}
		c.mu.Unlock()
	}
	if pick == nil {
		return false
	}
	pick.mu.Lock()
	pick.status = busy
	pick.mu.Unlock()
	o := op{kind: opJoin, cluster: pick.cfg.Name, want: wantJoined, start: time.Now().UnixNano()}
	ch.record(o)
	ch.wg.Go(func() {
		err := pick.start(ctx, ch.sh, ch.log)
		pick.mu.Lock()
		pick.status = active
		pick.mu.Unlock()
		if err != nil {
			ch.fail(err)
		}
	})
	return true
}

// leave stops a random active cluster's publisher and withdraws its
// entries (revokes its lease), in the background. Clusters hosting
// consumers never leave.
func (ch *churner) leave(ctx context.Context) bool {
	var pick *simCluster
	for range 64 {
		c := ch.clusters[ch.rnd.IntN(len(ch.clusters))]
		c.mu.Lock()
		if c.status == active && !c.consumes {
			c.status = busy
			pick = c
		}
		c.mu.Unlock()
		if pick != nil {
			break
		}
	}
	if pick == nil {
		return false
	}
	o := op{kind: opLeave, cluster: pick.cfg.Name, want: wantGone, start: time.Now().UnixNano()}
	ch.record(o)
	ch.wg.Go(func() {
		pub := pick.stop()
		var err error
		if pub != nil {
			wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			err = pub.Withdraw(wctx)
			cancel()
		}
		pick.mu.Lock()
		pick.status, pick.leftAt = inactive, time.Now()
		pick.mu.Unlock()
		if err != nil {
			ch.fail(err)
		}
	})
	return true
}
