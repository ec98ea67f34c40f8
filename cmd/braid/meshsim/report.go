package meshsim

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/braidmesh/braid/cmd/braid/benchkit"
)

func mib(b int64) string {
	if b < 10<<20 {
		return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
	}
	return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20))
}

// report prints a run's figures.
func report(out io.Writer, cfg *Config, r *Result, consumerErrs []string) {
	w := &bytes.Buffer{}
	defer func() { _, _ = out.Write(w.Bytes()) }()
	brokerKind := "embedded etcd in a child process (braid broker), TLS, authentication, fsync on"
	if cfg.Broker != nil {
		brokerKind = "external, " + strings.Join(cfg.Broker.Endpoints, ",")
	}
	fmt.Fprintf(w, "braid sim: %d clusters × %d nodes × %d endpoints (%d services × %d backends), layout %s, lease TTL %v\n",
		r.Started, cfg.Nodes, cfg.Endpoints, cfg.Endpoints/cfg.Nodes, cfg.Nodes, cfg.ServiceLayout, cfg.LeaseTTL)
	fmt.Fprintf(w, "  broker: %s\n", brokerKind)
	via := "direct (each watches the broker)"
	if cfg.Via == ViaRelay {
		via = "through a relay per cluster (clustermesh/relay, a process of its own)"
	}
	fmt.Fprintf(w, "  consumers: %d cluster(s) × %d consumer(s) (remote.Watcher, own connection each), %s, one process per cluster\n",
		cfg.ConsumerClusters, cfg.ConsumersPerCluster, via)
	fmt.Fprintf(w, "  churn: %g changes/s for %v, mix %s; load average %s at the start, %s at the end\n",
		cfg.Rate, cfg.Duration, cfg.Mix, r.LoadStart, r.LoadEnd)
	fmt.Fprintf(w, "setup: grants %v, publishing %v, consumers' initial sync %v (each holds %d clusters, %d nodes, %d IP entries, %d backends)\n",
		r.SetupGrants.Round(time.Millisecond), r.SetupPublish.Round(time.Millisecond), r.ConsumerSync.Round(time.Millisecond),
		r.SyncCounts[0].Clusters, r.SyncCounts[0].Nodes, r.SyncCounts[0].IPs, r.SyncCounts[0].Backends)
	var applied []string
	total := 0
	for _, k := range opKinds {
		if n := r.Applied[k]; n > 0 {
			applied = append(applied, fmt.Sprintf("%s %d", k, n))
			total += n
		}
	}
	fmt.Fprintf(w, "churn: %d changes in %v (%s); %d drawn kinds replaced by a flap (nothing to join, leave or scale)\n",
		total, r.ChurnElapsed.Round(time.Millisecond), strings.Join(applied, ", "), r.Fallbacks)
	m := r.Matched
	fmt.Fprintf(w, "  observed by the consumers: %d; superseded by a later change of the same service before it was seen: %d; never seen: %d\n",
		m.seen, m.superseded, m.missing)
	for _, o := range m.missingOps {
		fmt.Fprintf(w, "    never seen: %s %s %s at %s\n", o.kind, o.cluster, o.service, time.Unix(0, o.start).Format("15:04:05.000"))
	}
	through := ""
	if cfg.Via == ViaRelay {
		through = ", through its relay"
	}
	fmt.Fprintf(w, "propagation (change handed to the publisher → the consumer's Watcher applied it%s):\n", through)
	line := func(label string, l benchkit.Latencies) {
		if len(l) > 0 {
			fmt.Fprintf(w, "  %-34s n=%-6d %v\n", label, len(l), l)
		}
	}
	line("endpoint changes (all)", m.endpoints)
	for _, c := range m.slowest {
		after := ""
		if j := c.lastChurn; j != nil {
			after = fmt.Sprintf(", %v after %s %s", time.Duration(c.op.start-j.start).Round(time.Millisecond), j.kind, j.cluster)
		}
		fmt.Fprintf(w, "    slow: %v %s %s %s at %s to consumer %d%s\n", c.latency.Round(time.Millisecond),
			c.op.kind, c.op.cluster, c.op.service, time.Unix(0, c.op.start).Format("15:04:05.000"), c.consumer, after)
	}
	for _, k := range opKinds {
		line(k, m.latency[k])
	}
	line("raw etcd put → watch (baseline)", r.Raw)
	if r.RawMissing > 0 {
		fmt.Fprintf(w, "  raw puts never seen: %d\n", r.RawMissing)
	}
	if len(m.endpoints) > 0 && len(r.Raw) > 0 {
		fmt.Fprintf(w, "  ratio endpoint changes / raw: p50 %.2f  p99 %.2f\n",
			float64(m.endpoints.Pct(50))/float64(r.Raw.Pct(50)), float64(m.endpoints.Pct(99))/float64(r.Raw.Pct(99)))
	}
	b := r.Broker
	fmt.Fprintf(w, "broker:")
	if b.CPUKnown {
		fmt.Fprintf(w, " CPU %.1f s during the churn (%.2f cores), %.1f s in all;", b.CPUChurn.Seconds(), b.CPUChurn.Seconds()/r.ChurnElapsed.Seconds(), b.CPU.Seconds())
	}
	if b.Known {
		fmt.Fprintf(w, " peak RSS %s, RSS %s;", mib(b.PeakRSS), mib(b.RSS))
	} else if b.RSS > 0 {
		fmt.Fprintf(w, " RSS %s;", mib(b.RSS))
	}
	fmt.Fprintf(w, " DB size %s\n", mib(r.DBSize))
	if mt := r.BrokerMetrics; mt != nil {
		fmt.Fprintf(w, "  watch streams %.0f, watchers %.0f; during the churn %.0f watch events/s sent, %.0f puts+deletes/s; %s\n",
			mt["etcd_debugging_mvcc_watch_stream_total"], mt["etcd_debugging_mvcc_watcher_total"], r.EventsPerSec, r.PutsPerSec, walFsync(mt))
	}
	for i, rl := range r.Relays {
		fmt.Fprintf(w, "relay process %d: peak RSS %s, RSS %s, CPU %.1f s during the churn (%.2f cores), %.1f s in all",
			i+1, mib(rl.PeakRSS), mib(rl.RSS), rl.CPUChurn.Seconds(), rl.CPUChurn.Seconds()/r.ChurnElapsed.Seconds(), rl.CPU.Seconds())
		if i < len(r.RelayMetrics) && r.RelayMetrics[i] != nil {
			mt := r.RelayMetrics[i]
			fmt.Fprintf(w, "; its etcd: watch streams %.0f, watchers %.0f, %.0f watch events/s sent during the churn; %s",
				mt["etcd_debugging_mvcc_watch_stream_total"], mt["etcd_debugging_mvcc_watcher_total"], r.RelayEventsPerSec[i], walFsync(mt))
		}
		fmt.Fprintln(w)
	}
	for i, c := range r.Consumers {
		fmt.Fprintf(w, "consumer process %d (%d consumer(s)): peak RSS %s, RSS %s, CPU %.1f s during the churn, %.1f s in all\n",
			i+1, cfg.ConsumersPerCluster, mib(c.PeakRSS), mib(c.RSS), c.CPUChurn.Seconds(), c.CPU.Seconds())
	}
	fmt.Fprintf(w, "sim driver (the publishers of %d clusters): peak RSS %s, CPU %.1f s during the churn\n", r.Pool, mib(r.Driver.PeakRSS), r.Driver.CPUChurn.Seconds())
	for i := range r.FinalCounts {
		ok := "matches what is published"
		if r.FinalCounts[i] != r.WantFinal[i] {
			ok = fmt.Sprintf("DIFFERS from what is published: %+v", r.WantFinal[i])
		}
		fmt.Fprintf(w, "consumer %d after the churn: %+v, %s\n", i, r.FinalCounts[i], ok)
	}
	summary(w, cfg, r)
	for i, e := range consumerErrs {
		if i == 5 {
			fmt.Fprintf(w, "  ... %d more consumer errors\n", len(consumerErrs)-5)
			break
		}
		fmt.Fprintf(w, "consumer error: %s\n", e)
	}
}

// summary prints the run's figures as one line of key=value pairs, for
// scripts (cmd/braid/meshsim/sweep.sh) to tabulate.
func summary(w io.Writer, cfg *Config, r *Result) {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond)) }
	fmt.Fprintf(w, "summary: via=%s clusters=%d consumer_clusters=%d consumers_per_cluster=%d rate=%g",
		cfg.Via, r.Started, cfg.ConsumerClusters, cfg.ConsumersPerCluster, cfg.Rate)
	if mt := r.BrokerMetrics; mt != nil {
		fmt.Fprintf(w, " watch_streams=%.0f watchers=%.0f", mt["etcd_debugging_mvcc_watch_stream_total"], mt["etcd_debugging_mvcc_watcher_total"])
	}
	fmt.Fprintf(w, " events_per_s=%.0f puts_per_s=%.0f", r.EventsPerSec, r.PutsPerSec)
	if r.Broker.CPUKnown && r.ChurnElapsed > 0 {
		fmt.Fprintf(w, " broker_cpu_cores=%.2f", r.Broker.CPUChurn.Seconds()/r.ChurnElapsed.Seconds())
	}
	fmt.Fprintf(w, " broker_rss_mib=%.0f broker_peak_rss_mib=%.0f", float64(r.Broker.RSS)/(1<<20), float64(r.Broker.PeakRSS)/(1<<20))
	if len(r.Relays) > 0 {
		var rss, peak int64
		var cpu time.Duration
		for _, rl := range r.Relays {
			rss, peak, cpu = max(rss, rl.RSS), max(peak, rl.PeakRSS), cpu+rl.CPUChurn
		}
		// Per relay: the largest RSS, the mean CPU.
		fmt.Fprintf(w, " relay_rss_mib=%.0f relay_peak_rss_mib=%.0f relay_cpu_cores=%.2f",
			float64(rss)/(1<<20), float64(peak)/(1<<20), cpu.Seconds()/float64(len(r.Relays))/r.ChurnElapsed.Seconds())
	}
	var crss int64
	for _, c := range r.Consumers {
		crss = max(crss, c.PeakRSS)
	}
	fmt.Fprintf(w, " consumer_proc_peak_rss_mib=%.0f", float64(crss)/(1<<20))
	if e := r.Matched.endpoints; len(e) > 0 {
		fmt.Fprintf(w, " p50_ms=%s p99_ms=%s n=%d", ms(e.Pct(50)), ms(e.Pct(99)), len(e))
	}
	if len(r.Raw) > 0 {
		fmt.Fprintf(w, " raw_p50_ms=%s raw_p99_ms=%s", ms(r.Raw.Pct(50)), ms(r.Raw.Pct(99)))
	}
	fmt.Fprintf(w, " missing=%d load_start=%q load_end=%q\n", r.Matched.missing, r.LoadStart, r.LoadEnd)
}

// walFsync describes an etcd's WAL fsyncs over its life from its metrics.
func walFsync(mt benchkit.Metrics) string {
	n := mt["etcd_disk_wal_fsync_duration_seconds_count"]
	if n == 0 {
		return "no WAL fsyncs counted"
	}
	return fmt.Sprintf("%.0f WAL fsyncs, mean %.2f ms", n, 1000*mt["etcd_disk_wal_fsync_duration_seconds_sum"]/n)
}
