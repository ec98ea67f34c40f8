//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/broker"
	"github.com/braidmesh/braid/cmd/braid/diagnose"
	"github.com/braidmesh/braid/cmd/braid/podbench"
	"github.com/braidmesh/braid/internal/lab"
	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/tunnel"
)

// TestDiagnoseAndBench runs `braid diagnose` and `braid bench pods` against
// a lab of two clusters × one node (issue 12): a clean lab has no error; a
// pod CIDR overlapping east's, written in the older layout (a cluster
// config without a grant) with root credentials, is reported naming both
// clusters; the bench reports the tunnel's and the underlay's figures; a
// WireGuard port blocked with nftables is reported naming both nodes.
func TestDiagnoseAndBench(t *testing.T) {
	kubeBin := requireLab(t)
	testenv.LookPath(t, "nft", "nftables")
	testenv.LookPath(t, "iperf3", "iperf3")
	ctx := context.Background()
	l, err := lab.Up(ctx, lab.Config{Clusters: 2, Nodes: 1, Dir: t.TempDir(), KubeBin: kubeBin, Bin: bin, Progress: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("tear down the lab: %v", err)
		}
		checkNoLeftovers(t, l.Run, l.Dir)
	})
	east, west := l.Cluster("east"), l.Cluster("west")
	run := func() (diagnose.Report, error) {
		var out, errOut bytes.Buffer
		cmd := exec.Command(filepath.Join(bin, "braid"), "diagnose", "--join", east.Join, "-o", "json", "--timeout", "2m")
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		var rep diagnose.Report
		if jerr := json.Unmarshal(out.Bytes(), &rep); jerr != nil {
			return rep, fmt.Errorf("braid diagnose: %v, %v: %s", err, jerr, errOut.String())
		}
		// The exit status says whether errors were found.
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) != (rep.Errors > 0) {
			return rep, fmt.Errorf("braid diagnose exited with %v for %d errors", err, rep.Errors)
		}
		return rep, nil
	}
	find := func(rep diagnose.Report, check string, where ...string) (diagnose.Finding, bool) {
		for _, f := range rep.Findings {
			if f.Check != check || f.Severity != diagnose.SeverityError {
				continue
			}
			all := strings.Join(f.Where, ", ")
			ok := true
			for _, w := range where {
				ok = ok && strings.Contains(all, w)
			}
			if ok {
				return f, true
			}
		}
		return diagnose.Finding{}, false
	}

	// A fresh lab: every agent answers, nothing is wrong.
	testenv.Eventually(t, 60*time.Second, func() error {
		rep, err := run()
		if err != nil {
			return err
		}
		if rep.Errors > 0 || rep.Agents != 2 {
			return fmt.Errorf("%d agents read, findings %+v", rep.Agents, rep.Findings)
		}
		return nil
	})

	t.Run("OverlappingPodCIDR", func(t *testing.T) {
		adm, err := broker.LocalAdminConfig(filepath.Join(l.Dir, "broker"), []string{l.Broker})
		if err != nil {
			t.Fatal(err)
		}
		c, err := broker.AdminClient(ctx, adm)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// Before grants (issue 9) a cluster's config was all there was.
		north := clustermesh.ClusterConfig{Name: "north", ID: 9, PodCIDRs: []netip.Prefix{netip.PrefixFrom(east.PodCIDR.Addr(), 24)}}
		val, _ := json.Marshal(north)
		if _, err := c.Put(ctx, north.Key(), string(val)); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if _, err := c.Delete(ctx, north.Key()); err != nil {
				t.Errorf("remove north's config: %v", err)
			}
		}()
		rep, err := run()
		if err != nil {
			t.Fatal(err)
		}
		f, ok := find(rep, diagnose.CheckRanges, "cluster east", "cluster north")
		if !ok {
			t.Fatalf("no overlap finding naming east and north: %+v", rep.Findings)
		}
		if !strings.Contains(f.What, east.PodCIDR.String()) || !strings.Contains(f.Fix, "north") {
			t.Errorf("finding: %+v", f)
		}
		t.Logf("%s\n  where: %v\n  fix: %s", f.What, f.Where, f.Fix)
	})

	t.Run("BenchPods", func(t *testing.T) {
		cmd := exec.Command(filepath.Join(bin, "braid"), "bench", "pods", "--from-kubeconfig", east.Kubeconfig, "--to-kubeconfig", west.Kubeconfig,
			"--image", "braid-lab/bench", "--braid-path", filepath.Join(bin, "braid"), "--duration", "2s", "--rounds", "300", "-o", "json")
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Run(); err != nil {
			t.Fatalf("braid bench pods: %v\n%s", err, errOut.String())
		}
		var res podbench.Result
		if err := json.Unmarshal(out.Bytes(), &res); err != nil {
			t.Fatalf("decode %q: %v", out.String(), err)
		}
		for _, p := range []podbench.Path{res.Tunnel, res.Underlay} {
			if p.ThroughputBitsPerSec <= 0 || p.Latency.P50 <= 0 || p.Latency.Rounds != 300 {
				t.Errorf("%s: no figure: %+v", p.What, p)
			}
		}
		if res.From.NodeIP == "" || res.To.PodIP == "" || !east.PodCIDR.Contains(mustAddr(t, res.From.PodIP)) || !west.PodCIDR.Contains(mustAddr(t, res.To.PodIP)) {
			t.Errorf("ends: %+v %+v", res.From, res.To)
		}
		t.Logf("tunnel %s: %.0f Mbit/s, rr p50 %v; underlay %s: %.0f Mbit/s, rr p50 %v", res.Tunnel.What, res.Tunnel.ThroughputBitsPerSec/1e6, res.Tunnel.Latency.P50,
			res.Underlay.What, res.Underlay.ThroughputBitsPerSec/1e6, res.Underlay.Latency.P50)
	})

	t.Run("BlockedWireGuardPort", func(t *testing.T) {
		e0, w0 := east.Nodes[0], west.Nodes[0]
		table := "braiddiag" + l.Run
		nft := func(script string) error {
			cmd := exec.Command("nsenter", "--net=/run/netns/"+w0.Netns, "--", "nft", "-f", "-")
			cmd.Stdin = strings.NewReader(script)
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("nft in %s: %v: %s", w0.Netns, err, out)
			}
			return nil
		}
		if err := nft(fmt.Sprintf("table inet %s {\n chain input {\n  type filter hook input priority filter; policy accept;\n  ip saddr %s udp dport %d drop\n }\n}\n",
			table, e0.IP, tunnel.DefaultListenPort)); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := nft("delete table inet " + table + "\n"); err != nil {
				t.Error(err)
			}
		}()
		start := time.Now()
		// west-0 hears nothing from east-0 once two keepalives (25 s) and
		// the agents' sampling have passed.
		testenv.Eventually(t, 150*time.Second, func() error {
			rep, err := run()
			if err != nil {
				return err
			}
			f, ok := find(rep, diagnose.CheckWireGuard, "east/east-0", "west/west-0")
			if !ok {
				return fmt.Errorf("no WireGuard finding naming both nodes yet: %+v", rep.Findings)
			}
			if !strings.Contains(f.Fix, e0.IP.String()) || !strings.Contains(f.Fix, w0.IP.String()) {
				return fmt.Errorf("the fix does not name both addresses: %+v", f)
			}
			t.Logf("after %v: %s\n  where: %v\n  fix: %s", time.Since(start).Round(time.Second), f.What, f.Where, f.Fix)
			return nil
		})
	})
	e := &labEnv{Lab: l}
	e.failed(t)
}

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatalf("address %q: %v", s, err)
	}
	return a
}
