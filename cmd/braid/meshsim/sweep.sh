#!/bin/sh
# sweep.sh: issue #15's broker-load sweep. braid sim over a fixed mesh and
# churn, with CONSUMERS consumers per consumer cluster, each count run
# direct (every consumer watches the broker) and through a relay per
# consumer cluster (--consumers-via relay); prints one Markdown row per run
# and keeps each run's full report in OUT.
#
#   go build -o bin/braid ./cmd/braid && cmd/braid/meshsim/sweep.sh
#
# Environment (defaults in brackets): BRAID [bin/braid], OUT [/tmp/braid-sweep],
# CLUSTERS [20], NODES [20], ENDPOINTS [200], RATE [100], DURATION [30s],
# CONSUMER_CLUSTERS [2], CONSUMERS ["10 50 100 200"], MODES ["direct relay"],
# MIX [flap=90,scale-up=4.9,scale-down=4.9,join=0.1,leave=0.1], SEED [15],
# TIMEOUT [10m] (bounds each wait of a run: sync, drain, final view check).
# A run that fails (a consumer's view differs, a change never seen) still
# gets its row, marked FAILED; its report says why.
set -eu
BRAID=${BRAID:-bin/braid}
OUT=${OUT:-/tmp/braid-sweep}
CLUSTERS=${CLUSTERS:-20}
NODES=${NODES:-20}
ENDPOINTS=${ENDPOINTS:-200}
RATE=${RATE:-100}
DURATION=${DURATION:-30s}
CONSUMER_CLUSTERS=${CONSUMER_CLUSTERS:-2}
CONSUMERS=${CONSUMERS:-10 50 100 200}
MODES=${MODES:-direct relay}
MIX=${MIX:-flap=90,scale-up=4.9,scale-down=4.9,join=0.1,leave=0.1}
SEED=${SEED:-15}
TIMEOUT=${TIMEOUT:-10m}
mkdir -p "$OUT"

echo "| consumers/cluster | mode | broker watch streams | watchers | events/s sent | puts/s | broker CPU (cores) | broker RSS (peak) | relay RSS (peak), CPU (cores) | p50 / p99 | raw p50 / p99 | load avg (start → end) |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for r in $CONSUMERS; do
	for mode in $MODES; do
		log="$OUT/r$r-$mode.txt"
		status=ok
		if ! "$BRAID" sim --clusters "$CLUSTERS" --nodes "$NODES" --endpoints "$ENDPOINTS" \
			--rate "$RATE" --duration "$DURATION" --mix "$MIX" --seed "$SEED" \
			--consumer-clusters "$CONSUMER_CLUSTERS" --consumers-per-cluster "$r" \
			--consumers-via "$mode" --timeout "$TIMEOUT" >"$log" 2>"$OUT/r$r-$mode.stderr"; then
			status=FAILED
		fi
		if ! grep -q '^summary:' "$log"; then
			echo "| $r | $mode | no report: see $OUT/r$r-$mode.stderr |"
			continue
		fi
		grep '^summary:' "$log" | sed 's/^summary: //' | awk -v r="$r" -v mode="$mode" -v status="$status" '
		{
			for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
			match($0, /load_start="[^"]*"/); ls = substr($0, RSTART + 12, RLENGTH - 13)
			match($0, /load_end="[^"]*"/); le = substr($0, RSTART + 10, RLENGTH - 11)
			split(ls, a, " "); split(le, b, " ")
			relay = "—"
			if (mode == "relay") relay = v["relay_rss_mib"] " MiB (" v["relay_peak_rss_mib"] "), " v["relay_cpu_cores"]
			if (status != "ok") mode = mode " (FAILED, " v["missing"] " never seen)"
			printf "| %s | %s | %s | %s | %s | %s | %s | %s MiB (%s) | %s | %s / %s ms | %s / %s ms | %s → %s |\n",
				r, mode, v["watch_streams"], v["watchers"], v["events_per_s"], v["puts_per_s"], v["broker_cpu_cores"],
				v["broker_rss_mib"], v["broker_peak_rss_mib"], relay, v["p50_ms"], v["p99_ms"], v["raw_p50_ms"], v["raw_p99_ms"], a[1], b[1]
		}'
	done
done
