#!/usr/bin/env bash
# The test command (README "Test"): the Rust suites, then the supabase-js suites and the browser
# suite against the built relay. Needs PostgreSQL >= 14 on 127.0.0.1:5432 (user postgres, trust
# auth; override with TEST_DATABASE_URL), Redis on 127.0.0.1:6379 (override with
# TEST_REDIS_URL) and the redis-server binary, Rust, Node 22 or newer with npm (.ci/run installs it
# into .ci/node, which is used first when present), and Chromium (Debian's
# `chromium` at /usr/bin/chromium; override with CHROMIUM_PATH). Fails if anything fails or is
# skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

log=$(mktemp)
trap 'rm -f "$log"' EXIT

# The Node 22 that .ci/run installs from the npm registry, when it is there.
if [ -x .ci/node/node_modules/.bin/node ]; then
  export PATH="$PWD/.ci/node/node_modules/.bin:$PATH"
fi

# Every prerequisite first, in one message, rather than failing minutes in.
export CHROMIUM_PATH="${CHROMIUM_PATH:-/usr/bin/chromium}"
missing=()
db_url="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
if ! command -v pg_isready >/dev/null || ! pg_isready -q -d "$db_url" 2>/dev/null; then
  missing+=("PostgreSQL >= 14 answering at $db_url (set TEST_DATABASE_URL for another)")
fi
redis_url="${TEST_REDIS_URL:-redis://127.0.0.1:6379}"
if ! command -v redis-server >/dev/null; then
  missing+=("redis-server (apt-get install redis-server): the several-relays suite starts one")
fi
redis_hostport="${redis_url#redis://}"
redis_hostport="${redis_hostport##*@}"
redis_hostport="${redis_hostport%%/*}"
if ! (exec 3<>"/dev/tcp/${redis_hostport%%:*}/${redis_hostport##*:}") 2>/dev/null; then
  missing+=("Redis answering at $redis_url (set TEST_REDIS_URL for another)")
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  missing+=("Node.js 22 or newer with npm (.ci/run installs it)")
elif [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 22 ]; then
  missing+=("Node.js 22 or newer (found $(node --version); .ci/run installs 22 into .ci/node)")
fi
if [ ! -x "$CHROMIUM_PATH" ]; then
  missing+=("Chromium at $CHROMIUM_PATH (apt-get install chromium, or set CHROMIUM_PATH)")
fi
if ! command -v cargo >/dev/null; then
  missing+=("Rust (cargo)")
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "tests/run.sh: cannot run the suites; missing:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  exit 1
fi

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
