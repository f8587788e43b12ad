#!/usr/bin/env bash
# Profile the relay with perf while pgrelay-bench drives it.
#
#   bench/profile.sh fanout --clients 1000 --rate 200
#   bench/profile.sh filtered --clients 10000 --rate 500
#
# Runs the scenario (options as for pgrelay-bench), records the relay's stacks during the
# measured window (perf record -g, 999 Hz), and prints the hottest functions (self time) and
# the hottest call chains. Output: bench/results/profile-<scenario>-<stamp>.{txt,data}.
# Needs `perf` (Debian: apt-get install linux-perf).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n '2,10p' "$0"; exit 2; }
command -v perf >/dev/null || { echo "perf not found (apt-get install linux-perf)"; exit 1; }
scenario=$1
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
[ -n "${NO_BUILD:-}" ] || cargo build --release --bins --quiet
stamp=$(date -u +%Y%m%dT%H%M%SZ)
base=bench/results/profile-$scenario-$stamp
err=$base.stderr
target/release/pgrelay-bench "$@" --duration "$DURATION" --warmup "$WARMUP" >"$base.summary" 2>"$err" &
bench=$!
pid=""
for _ in $(seq 1 600); do
  pid=$(sed -n 's/^relay pid \([0-9]*\) .*/\1/p' "$err" | head -1)
  [ -n "$pid" ] && grep -q "clients subscribed" "$err" && break
  kill -0 "$bench" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$pid" ]; then
  wait "$bench" || true
  cat "$err"
  exit 1
fi
# Writes start 0.3 s after the clients are subscribed, plus the warmup.
sleep "$(python3 -c "print(0.3 + $WARMUP + 1.0)")"
perf record -F 999 -g --call-graph dwarf,32768 -p "$pid" -o "$base.data" -- sleep "$(python3 -c "print(max(1.0, $DURATION - 2.0))")" 2>>"$err" >/dev/null || true
wait "$bench" || true
{
  cat "$base.summary"
  echo
  echo "== self time by function (top 40)"
  perf report -i "$base.data" --no-children --sort symbol --percent-limit 0.5 --stdio 2>/dev/null \
    | grep -E '^ +[0-9]' | head -40 | cut -c1-200 | sed 's/ *$//' || true
  echo
  echo "== inclusive time by function (top 60)"
  perf report -i "$base.data" --children --sort symbol --percent-limit 1 --stdio 2>/dev/null \
    | grep -E '^ +[0-9]' | grep -v inlined | head -60 | cut -c1-200 | sed 's/ *$//' || true
} | tee "$base.txt"
echo "profile: $base.txt (perf data: $base.data)"
