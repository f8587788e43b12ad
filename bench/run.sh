#!/usr/bin/env bash
# Run the benchmark matrix of BENCHMARKS.md and regenerate its figures.
#
#   bench/run.sh            # full matrix, 3 runs per point (about 20 minutes on 2 cores)
#   REPS=1 bench/run.sh     # one run per point (quicker, noisier)
#   NO_BUILD=1 bench/run.sh # use the binaries already in target/release
#   NICE=-10 bench/run.sh   # run the relay and the load generator at a higher priority
#   SRC=/path/to/checkout NO_BUILD=1 bench/run.sh
#                           # measure another checkout's target/release binaries and triggers/
#
# Writes bench/results/<UTC stamp>.jsonl (one JSON line per run, plus a machine line), the log
# of every run next to it, then the tables in BENCHMARKS.md (bench/report.py) and the plot
# bench/latency_vs_rate.png (bench/plot.py). Needs PostgreSQL on 127.0.0.1:5432 (override with
# BENCH_DATABASE_URL); every run creates and drops its own database and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-3}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
# Before each run, wait (at most GATE_MAX s, GATE_BUDGET s over the whole matrix) for other
# work on the machine to calm down; each run still records the CPU of other processes.
GATE_MAX=${GATE_MAX:-15}
GATE_BUDGET=${GATE_BUDGET:-120}
QUIET_PCT=${QUIET_PCT:-30}
# Scheduling priority of the load generator and the relay (e.g. NICE=-10 as root shields them
# from builds running beside the benchmark; PostgreSQL keeps its own priority).
NICE=${NICE:-0}

# The write-rate points of the fan-out curve (changes/s; x 1000 clients = deliveries/s).
FANOUT_RATES=${FANOUT_RATES:-"50 100 150 200 300"}
# Writers for "as fast as possible" (the highest rate PostgreSQL sustains here).
MAX_WRITERS=${MAX_WRITERS:-8}

SRC=${SRC:-.}
if [ -z "${NO_BUILD:-}" ]; then
  echo "== building (release)"
  (cd "$SRC" && cargo build --release --bins --quiet)
fi
# Private copies of the binaries and the trigger SQL, so that a rebuild or an edit during the
# matrix cannot change what is under test.
bindir=$(mktemp -d)
trap 'rm -rf "$bindir"' EXIT
cp "$SRC/target/release/pgrelay" "$SRC/target/release/pgrelay-bench" "$bindir/"
cp -r "$SRC/triggers" "$bindir/triggers"
export PGRELAY_TRIGGERS_DIR=$bindir/triggers
BENCH=$bindir/pgrelay-bench

stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=bench/results/$stamp.jsonl
log=bench/results/$stamp.log
mkdir -p bench/results
: >"$out"
: >"$log"

pg_version=$(psql "${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}" -tAc 'SHOW server_version' 2>/dev/null || echo unknown)
pg_settings=$(psql "${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}" -tAc \
  "SELECT string_agg(name || '=' || setting, ', ' ORDER BY name) FROM pg_settings WHERE name IN ('synchronous_commit','fsync','wal_sync_method','shared_buffers','max_connections')" 2>/dev/null || echo unknown)
python3 - "$pg_version" "$pg_settings" "$REPS" "$DURATION" "$WARMUP" "$NICE" "$SRC" >>"$out" <<'PY'
import json, os, platform, subprocess, sys
def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return "unknown"
mem = "unknown"
with open("/proc/meminfo") as f:
    for line in f:
        if line.startswith("MemTotal:"):
            mem = "%.1f GiB" % (int(line.split()[1]) / 1024 / 1024)
cpu = "unknown"
with open("/proc/cpuinfo") as f:
    for line in f:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
print(json.dumps({"machine": {
    "nproc": sh("nproc"), "memory": mem, "cpu": cpu, "kernel": platform.release(),
    "postgres": sys.argv[1], "postgres_settings": sys.argv[2],
    "rustc": sh("rustc", "--version"), "profile": "release (opt-level 3, debug = 1)",
    "commit": sh("git", "-C", sys.argv[7], "rev-parse", "--short", "HEAD"),
    "dirty": bool(sh("git", "-C", sys.argv[7], "status", "--porcelain", "--", "src", ":!src/bin/pgrelay-bench")),
    "reps": int(sys.argv[3]), "duration_s": float(sys.argv[4]), "warmup_s": float(sys.argv[5]),
    "ulimit_n": sh("sh", "-c", "ulimit -n"), "nice": sys.argv[6],
}}))
PY

gate_used=0
# Busy CPU of the whole machine over one second, in % of one core.
busy_pct() {
  local a b
  a=($(head -1 /proc/stat)); sleep 1; b=($(head -1 /proc/stat))
  local ta=0 tb=0 i
  for i in 1 2 3 4 5 6 7 8; do ta=$((ta + a[i])); tb=$((tb + b[i])); done
  local ia=$((a[4] + a[5])) ib=$((b[4] + b[5]))
  local dt=$((tb - ta)) di=$((ib - ia))
  [ "$dt" -gt 0 ] || { echo 0; return; }
  echo $(( (dt - di) * 100 * $(nproc) / dt ))
}
quiet_gate() {
  local waited=0 busy
  while [ "$waited" -lt "$GATE_MAX" ] && [ "$gate_used" -lt "$GATE_BUDGET" ]; do
    busy=$(busy_pct)
    [ "$busy" -lt "$QUIET_PCT" ] && return 0
    waited=$((waited + 1)); gate_used=$((gate_used + 1))
  done
  [ "$waited" -gt 0 ] && echo "   (machine busy: ${busy}% of a core; running anyway)"
  return 0
}

failures=0
point() {
  local label=$1; shift
  quiet_gate
  echo "-- $label: $*"
  echo "== $label: $*" >>"$log"
  if ! timeout 300 nice -n "$NICE" "$BENCH" "$@" --duration "$DURATION" --warmup "$WARMUP" --json --label "$label" >>"$out" 2>>"$log"; then
    echo "   FAILED (see $log)"
    failures=$((failures + 1))
  fi
}

start=$(date +%s)
for rep in $(seq 1 "$REPS"); do
  echo "== repetition $rep/$REPS"
  # Target 1: one subscriber at the highest rate PostgreSQL sustains, against bare LISTEN;
  # as configured (commits wait for the WAL flush), and with synchronous_commit=off (the disk
  # no longer bounds the rate, so PostgreSQL writes several times faster: the stricter test).
  point "limit/baseline" baseline --rate 0 --writers "$MAX_WRITERS"
  point "limit/relay-1-client" fanout --clients 1 --rate 0 --writers "$MAX_WRITERS"
  point "limit-async/baseline" baseline --rate 0 --synchronous-commit off
  point "limit-async/relay-1-client" fanout --clients 1 --rate 0 --synchronous-commit off
  # Target 2 and the plot: 1,000 clients on one table at increasing write rates.
  for r in $FANOUT_RATES; do
    point "fanout-1000/baseline@$r" baseline --rate "$r"
    point "fanout-1000/relay@$r" fanout --clients 1000 --rate "$r"
  done
  # Target 3: 1,000 changes/s to 100 clients; as configured, and without the WAL flush wait
  # (whose tail alone can exceed 10 ms on this disk).
  point "latency-100/baseline@1000" baseline --rate 1000
  point "latency-100/relay@1000" fanout --clients 100 --rate 1000
  point "latency-100-async/baseline@1000" baseline --rate 1000 --synchronous-commit off
  point "latency-100-async/relay@1000" fanout --clients 100 --rate 1000 --synchronous-commit off
  # Target 4: 10 vs 10,000 filtered subscriptions at the same write rate (synchronous_commit
  # off so that PostgreSQL holds the rate whatever the disk does).
  point "filtered/relay-10@1000" filtered --clients 10 --rate 1000 --synchronous-commit off
  point "filtered/relay-10000@1000" filtered --clients 10000 --rate 1000 --synchronous-commit off
  # Target 5: 10,000 idle joined connections.
  point "idle/relay-10000" idle --clients 10000
  # The reference app at 1,000 users.
  point "mixed/baseline@60" baseline --workload app --rate 60
  point "mixed/relay-1000-users@60" mixed --clients 1000 --rate 60
done
echo "== matrix done in $(( $(date +%s) - start )) s, $failures failed run(s); raw results: $out"

if ! python3 -c 'import matplotlib' 2>/dev/null; then
  echo "== installing matplotlib (pip)"
  python3 -m pip install --quiet matplotlib
fi
python3 bench/report.py "$out" BENCHMARKS.md
python3 bench/plot.py "$out" bench/latency_vs_rate.png
echo "== updated BENCHMARKS.md and bench/latency_vs_rate.png"
