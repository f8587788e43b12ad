#!/usr/bin/env bash
# The test command (README "Test"): the Rust suites, then the supabase-js suites and the browser
# suite against the built relay. Needs PostgreSQL >= 14 on 127.0.0.1:5432 (user postgres, trust
# auth; override with TEST_DATABASE_URL), Rust, Node 20 with npm, and Chromium (Debian's
# `chromium` at /usr/bin/chromium; override with CHROMIUM_PATH). Fails if anything fails or is
# skipped.
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

echo "== browser (tests/browser: /demo and the inspector in headless Chromium)"
export CHROMIUM_PATH="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM_PATH" ]; then
  echo "tests/run.sh: no Chromium at $CHROMIUM_PATH (apt-get install chromium, or set CHROMIUM_PATH): failing" >&2
  exit 1
fi
(
  cd tests/browser
  npm ci --no-audit --no-fund --loglevel=error
  npm test 2>&1 | tee "$log"
)
if grep -E '^(# |ℹ )(skipped|todo) [1-9]' "$log" >/dev/null; then
  echo "tests/run.sh: some browser tests were skipped: failing" >&2
  exit 1
fi
if ! grep -E '^(# |ℹ )pass [1-9]' "$log" >/dev/null; then
  echo "tests/run.sh: the browser suite ran no test: failing" >&2
  exit 1
fi
echo "== all suites passed"
