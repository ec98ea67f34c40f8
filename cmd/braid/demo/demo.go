package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/broker"
	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/clustermesh/remote"
	"github.com/braidmesh/braid/clustermesh/sim"
	"github.com/braidmesh/braid/cmd/braid/cli"
)

// Command returns `braid demo`.
func Command() *cobra.Command {
	var (
		dir  string
		hold time.Duration
		ttl  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a broker and two simulated clusters in this process and show what each sees",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := clustermesh.ValidateLeaseTTL(ttl); err != nil {
				return fmt.Errorf("--lease-ttl: %w", err)
			}
			if hold < 0 {
				return fmt.Errorf("--hold %v: must not be negative", hold)
			}
			if dir == "" {
				d, err := os.MkdirTemp("", "braid-demo-")
				if err != nil {
					return err
				}
				defer os.RemoveAll(d)
				dir = d
			}
			return runDemo(cmd.Context(), cmd.OutOrStdout(), dir, ttl, hold)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "working directory (default: a temporary one, removed at exit)")
	cmd.Flags().DurationVar(&hold, "hold", 0, "keep the mesh running this long at the end, to browse the status pages")
	cmd.Flags().DurationVar(&ttl, "lease-ttl", 3*time.Second, "lease TTL of the simulated clusters")
	return cmd
}

func runDemo(ctx context.Context, out io.Writer, dir string, ttl, hold time.Duration) error {
	say := func(format string, args ...any) { fmt.Fprintf(out, "==> "+format+"\n", args...) }
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if os.Getenv("BRAID_DEMO_DEBUG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}

	b, stopBroker, err := broker.StartLocal(ctx, filepath.Join(dir, "broker"), log)
	if err != nil {
		return err
	}
	defer stopBroker()
	say("broker: embedded etcd with TLS and authentication at %s (data in %s)", b.Endpoints()[0], filepath.Join(dir, "broker"))

	specs := []clustermesh.ClusterConfig{
		{Name: "east", ID: 1, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}, ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("172.21.0.0/16")}},
		{Name: "west", ID: 2, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16")}, ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("172.22.0.0/16")}},
	}
	clusters := map[clustermesh.ClusterName]*cluster{}
	defer func() {
		for _, c := range clusters {
			c.cancel()
			<-c.done
			c.close()
			c.store.Close()
		}
	}()
	for _, cfg := range specs {
		creds, err := b.AddCluster(ctx, clustermesh.Grant{Name: cfg.Name, ID: cfg.ID, PodCIDRs: cfg.PodCIDRs, ServiceCIDRs: cfg.ServiceCIDRs})
		if err != nil {
			return err
		}
		if err := creds.Save(filepath.Join(dir, string(cfg.Name)+".join.json")); err != nil {
			return err
		}
		store, err := join.Connect(ctx, creds, log)
		if err != nil {
			return err
		}
		c, err := newCluster(cfg, store, ttl, log)
		if err != nil {
			store.Close()
			return err
		}
		state, err := sim.Generate(cfg, 3, 4, []string{"web", "api"})
		if err == nil {
			err = c.Apply(state)
		}
		if err != nil {
			c.close()
			store.Close()
			return err
		}
		cctx, cancel := context.WithCancel(ctx)
		c.cancel, c.done = cancel, make(chan error, 1)
		go func() { c.done <- c.Run(cctx) }()
		clusters[cfg.Name] = c
		say("cluster %s (ID %d, pods %s): user %s, publishing %d nodes, %d identities, %d pod IPs, %d global services",
			cfg.Name, cfg.ID, cfg.PodCIDRs[0], creds.Username, len(state.Nodes), len(state.Identities), len(state.IPs), len(state.Services))
	}

	east, west := clusters["east"], clusters["west"]
	if err := waitSynced(ctx, 15*time.Second, east, "west"); err != nil {
		return err
	}
	if err := waitSynced(ctx, 15*time.Second, west, "east"); err != nil {
		return err
	}
	say("both clusters synced; what each sees:")
	for _, c := range []*cluster{east, west} {
		printView(out, c)
	}

	// A change in east reaches west.
	sctx, scancel := context.WithCancel(ctx)
	changes := west.watcher.Subscribe(sctx)
	state, _ := sim.Generate(east.cfg, 3, 4, []string{"web", "api"})
	extra := clustermesh.Backend{IP: netip.MustParseAddr("10.1.9.9"), Ports: []clustermesh.BackendPort{{Name: "http", Port: 8080}}, Node: "east-node-0", Zone: "zone-a", Ready: true, Serving: true}
	state.Services[0].Backends = append(state.Services[0].Backends, extra)
	state.IPs = append(state.IPs, clustermesh.IPEntry{Prefix: netip.PrefixFrom(extra.IP, 32), Cluster: "east", Identity: state.Identities[1].ID, HostIP: state.Nodes[0].IPs[0]})
	start := time.Now()
	if err := east.Apply(state); err != nil {
		scancel()
		return err
	}
	got := 0
	for got < 2 {
		select {
		case ch := <-changes:
			if ch.Type == remote.Upsert && ch.Cluster == "east" {
				got++
			}
		case <-time.After(10 * time.Second):
			scancel()
			return errors.New("west did not see east's change within 10s")
		}
	}
	scancel()
	say("east scaled default/web to %d backends: west saw it after %v", len(state.Services[0].Backends), time.Since(start).Round(10*time.Microsecond))
	printServices(out, west)

	// A forged entry is refused by etcd itself.
	forged := clustermesh.Node{Name: "evil", Cluster: "east", IPs: []netip.Addr{netip.MustParseAddr("192.0.2.66")}}
	err = west.store.Put(ctx, forged.Key(), []byte(`{}`), 0)
	say("west tries to write under east's prefix: %v", err)

	if hold > 0 {
		say("status pages: east %s  west %s  (holding for %v; Ctrl-C to stop)", east.StatusURL(), west.StatusURL(), hold)
		select {
		case <-time.After(hold):
		case <-ctx.Done():
		}
	}

	// east dies: its lease expires and west drains it.
	say("stopping east's operator without withdrawing; its entries expire with its %v lease", ttl)
	east.cancel()
	<-east.done
	east.done <- nil
	start = time.Now()
	deadline := time.After(ttl + 10*time.Second)
	for {
		st := west.watcher.Status()
		if len(st) == 1 && st[0].Gone {
			break
		}
		select {
		case <-deadline:
			return errors.New("west still sees east after the lease TTL")
		case <-time.After(50 * time.Millisecond):
		}
	}
	say("west marked east gone after %v and drained its entries", time.Since(start).Round(time.Millisecond))
	cli.PrintStatus(out, west.Snapshot())
	say("demo done")
	return nil
}

func waitSynced(ctx context.Context, d time.Duration, c *cluster, other clustermesh.ClusterName) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cs := c.watcher.Snapshot().Clusters[other]; cs != nil && cs.Synced {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("cluster %s did not sync %s within %v; status: %+v", c.cfg.Name, other, d, c.Snapshot())
}

func printView(out io.Writer, c *cluster) {
	fmt.Fprintf(out, "\n--- as seen by %s (status page %s) ---\n", c.cfg.Name, c.StatusURL())
	cli.PrintStatus(out, c.Snapshot())
	printServices(out, c)
}

// printServices lists the remote services c sees, with their backends.
func printServices(out io.Writer, c *cluster) {
	snap := c.watcher.Snapshot()
	type row struct {
		svc     string
		cluster clustermesh.ClusterName
		line    string
	}
	var rows []row
	for name, cs := range snap.Clusters {
		for key, svc := range cs.Services {
			var bs []string
			for _, b := range svc.Backends {
				bs = append(bs, fmt.Sprintf("%s:%d(%s)", b.IP, port(b), b.Zone))
			}
			rows = append(rows, row{key, name, strings.Join(bs, " ")})
		}
	}
	sort.Slice(rows, func(i, j int) bool {
		if rows[i].svc != rows[j].svc {
			return rows[i].svc < rows[j].svc
		}
		return rows[i].cluster < rows[j].cluster
	})
	for _, r := range rows {
		fmt.Fprintf(out, "  remote service %-12s in %s: %s\n", r.svc, r.cluster, r.line)
	}
	fmt.Fprintln(out)
}

func port(b clustermesh.Backend) uint16 {
	p, _ := b.Port("http")
	return p
}
