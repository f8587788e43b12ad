#!/usr/bin/env bash
# The test command (README "Test"): the Rust suites, then the supabase-js suites against the
# built relay. Needs PostgreSQL >= 14 on 127.0.0.1:5432 (user postgres, trust auth; override
# with TEST_DATABASE_URL), Rust, and Node 20 with npm. Fails if anything fails or is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== cargo test"
cargo build --locked --bins
cargo test --locked 2>&1 | tee "$log"
if grep -E '^test result: .* [1-9][0-9]* ignored' "$log" >/dev/null; then
  echo "tests/run.sh: some Rust tests were ignored (skipped): failing" >&2
  exit 1
fi

echo "== supabase-js end-to-end (tests/js)"
export PGRELAY_BIN="$PWD/target/debug/pgrelay"
(
  cd tests/js
  npm ci --no-audit --no-fund --loglevel=error
  npm test 2>&1 | tee "$log"
)
if grep -E '^(# |ℹ )(skipped|todo) [1-9]' "$log" >/dev/null; then
  echo "tests/run.sh: some JS tests were skipped: failing" >&2
  exit 1
fi
if ! grep -E '^(# |ℹ )pass [1-9]' "$log" >/dev/null; then
  echo "tests/run.sh: the JS suite ran no test: failing" >&2
  exit 1
fi
echo "== all suites passed"
