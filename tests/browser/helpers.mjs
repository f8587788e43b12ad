// Helpers for the browser tests: a throw-away database + relay process per test file (as in
// tests/js/helpers.mjs), headless Chromium (Debian's package) driven by playwright-core, bounded
// waits on what a page shows, and screenshots saved to artifacts/.
//
// Loopback only: the relay listens on 127.0.0.1, PostgreSQL is 127.0.0.1:5432 (user postgres,
// override with TEST_DATABASE_URL), and the pages load nothing from elsewhere.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { before, after } from 'node:test';

import pg from 'pg';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = path.resolve(here, '..', '..');
export const ARTIFACTS = path.join(here, 'artifacts');

const ADMIN_URL = process.env.TEST_DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/postgres';
const RELAY_BIN = process.env.PGRELAY_BIN || path.join(REPO_ROOT, 'target', 'debug', 'pgrelay');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const STARTUP_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 10_000;
const LISTENING_RE = /pgrelay listening addr=(\S+)/;

/** Per-test timeout (ms) for node:test. */
export const TEST_TIMEOUT_MS = 90_000;
/** Bound for "the page shows this" checks. */
export const SHOW_TIMEOUT_MS = 10_000;

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Relay processes alive in this test process; killed if the process exits without stop().
const liveChildren = new Set();
process.on('exit', () => {
  for (const child of liveChildren) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

async function withAdmin(fn) {
  const admin = new pg.Client({ connectionString: ADMIN_URL });
  await admin.connect();
  try {
    return await fn(admin);
  } finally {
    await admin.end();
  }
}

/**
 * Polls `probe()` (sync or async) every 50 ms until it returns something truthy, and returns
 * that; throws after `ms` with `what` and the last value `describe()` gave.
 */
export async function until(probe, ms, what, describe = async () => '') {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${ms} ms waiting for ${what}${await describe()}`);
    }
    await sleep(50);
  }
}

/** Waits until `locator`'s text is exactly `want` (a string) or matches it (a RegExp). */
export async function shows(locator, want, what, ms = SHOW_TIMEOUT_MS) {
  let last;
  const ok = (t) => (want instanceof RegExp ? want.test(t) : t === want);
  await until(
    async () => {
      last = (await locator.textContent({ timeout: ms }))?.trim();
      return ok(last);
    },
    ms,
    `${what} to show ${JSON.stringify(String(want))}`,
    async () => `; it shows ${JSON.stringify(last)}`,
  );
  return last;
}

async function waitReady(port, stderr) {
  const deadline = Date.now() + STARTUP_TIMEOUT_MS;
  for (;;) {
    try {
      const res = await fetch(`http://127.0.0.1:${port}/ready`);
      if (res.status === 200) return;
    } catch {
      // not accepting yet
    }
    if (Date.now() > deadline) {
      throw new Error(`pgrelay never became ready within ${STARTUP_TIMEOUT_MS} ms; stderr:\n${stderr()}`);
    }
    await sleep(50);
  }
}

/** A relay child process; resolves once it logged its listening address. */
function spawnRelay(dbUrl) {
  return new Promise((resolve, reject) => {
    const child = spawn(RELAY_BIN, ['serve', '--listen', '127.0.0.1:0'], {
      cwd: REPO_ROOT,
      env: {
        ...process.env,
        DATABASE_URL: dbUrl,
        RUST_LOG: process.env.PGRELAY_TEST_RUST_LOG || 'info',
      },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    liveChildren.add(child);
    let stderr = '';
    let done = false;
    const exited = new Promise((res) => {
      child.once('exit', (code, signal) => {
        liveChildren.delete(child);
        res({ code, signal });
      });
    });
    const finish = (err, value) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (err) reject(err);
      else resolve(value);
    };
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      finish(new Error(`pgrelay did not log its address within ${STARTUP_TIMEOUT_MS} ms; stderr:\n${stderr}`));
    }, STARTUP_TIMEOUT_MS);
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk) => {
      stderr += chunk;
      if (process.env.PGRELAY_TEST_VERBOSE) process.stderr.write(chunk);
      const m = LISTENING_RE.exec(stderr);
      if (m && !done) {
        const addr = m[1].replace(/[,"]+$/, '');
        const port = Number(addr.slice(addr.lastIndexOf(':') + 1));
        finish(null, { child, exited, port, stderr: () => stderr });
      }
    });
    child.once('error', (err) =>
      finish(new Error(`cannot spawn ${RELAY_BIN}: ${err.message} (run \`cargo build --bins\`, or set PGRELAY_BIN)`)),
    );
    exited.then(({ code, signal }) =>
      finish(new Error(`pgrelay exited (code ${code}, signal ${signal}) before listening; stderr:\n${stderr}`)),
    );
  });
}

/** SIGTERM, wait for the exit (SIGKILL after STOP_TIMEOUT_MS); returns {code, signal}. */
async function stopRelay({ child, exited }) {
  if (child.exitCode !== null || child.signalCode !== null) return exited;
  child.kill('SIGTERM');
  let timer;
  const result = await Promise.race([
    exited,
    new Promise((res) => {
      timer = setTimeout(() => res(null), STOP_TIMEOUT_MS);
    }),
  ]);
  clearTimeout(timer);
  if (result !== null) return result;
  child.kill('SIGKILL');
  return { ...(await exited), killed: true };
}

/**
 * Creates a fresh database, starts the relay on it and returns `{ url, db, dbName, stop() }`.
 * `stop()` stops the relay (SIGTERM, then SIGKILL) and drops the database.
 */
export async function startRelay() {
  const dbName = `pgrelay_browser_${randomBytes(6).toString('hex')}`;
  await withAdmin((admin) => admin.query(`CREATE DATABASE "${dbName}"`));
  const u = new URL(ADMIN_URL);
  u.pathname = `/${dbName}`;
  const dbUrl = u.toString();
  const dropDb = () => withAdmin((admin) => admin.query(`DROP DATABASE IF EXISTS "${dbName}" WITH (FORCE)`));
  let proc;
  let db;
  try {
    proc = await spawnRelay(dbUrl);
    await waitReady(proc.port, proc.stderr);
    db = new pg.Client({ connectionString: dbUrl });
    await db.connect();
  } catch (err) {
    if (proc) await stopRelay(proc).catch(() => {});
    if (db) await db.end().catch(() => {});
    await dropDb().catch(() => {});
    throw err;
  }
  let stopped = false;
  return {
    dbName,
    db,
    url: `http://127.0.0.1:${proc.port}`,
    stderr: () => proc.stderr(),
    async stop() {
      if (stopped) return;
      stopped = true;
      const r = await stopRelay(proc).catch((err) => ({ err }));
      await db.end().catch(() => {});
      await dropDb();
      if (r.err || r.killed || r.code !== 0) {
        throw new Error(`pgrelay did not stop cleanly: ${JSON.stringify(r)}; stderr:\n${proc.stderr()}`);
      }
    },
  };
}

/**
 * One relay and one headless Chromium for the calling test file: `const ctx = useRelayAndBrowser();`
 * then `ctx.relay` / `ctx.browser` inside tests. Both are stopped (and the database dropped) in
 * `after`.
 */
export function useRelayAndBrowser() {
  const ctx = { relay: null, browser: null };
  const hook = { timeout: 120_000 };
  before(async () => {
    ctx.relay = await startRelay();
    try {
      ctx.browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, timeout: 60_000 });
    } catch (err) {
      throw new Error(
        `cannot start Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH): ${err.message}`,
      );
    }
  }, hook);
  after(async () => {
    await ctx.browser?.close().catch(() => {});
    await ctx.relay?.stop();
  }, hook);
  return ctx;
}

/**
 * A fresh browser context for one test, closed afterwards. Uncaught page errors fail the test:
 * `fn(context, pageErrors)` runs, then `pageErrors` must be empty.
 */
export async function withContext(browser, fn) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  context.setDefaultTimeout(SHOW_TIMEOUT_MS);
  const pageErrors = [];
  context.on('weberror', (e) => pageErrors.push(e.error().message));
  try {
    await fn(context, pageErrors);
    if (pageErrors.length) throw new Error(`uncaught errors in the page: ${pageErrors.join(' | ')}`);
  } finally {
    await context.close().catch(() => {});
  }
}

/** Saves a full-page screenshot to artifacts/<name>.png and prints its path. */
export async function screenshot(page, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  console.log(`screenshot: ${file}`);
  return file;
}

// ---- writes to the reference schema -------------------------------------------------------

export async function insertProfile(db, username = `sql_${randomBytes(4).toString('hex')}`) {
  const { rows } = await db.query('insert into public.profiles (username) values ($1) returning id', [username]);
  return rows[0].id;
}

export async function insertPoll(db, { question, options, status = 'active' }) {
  const { rows } = await db.query(
    'insert into public.polls (question, options, status) values ($1, $2::jsonb, $3) returning id',
    [question, JSON.stringify(options), status],
  );
  return Number(rows[0].id);
}

/** A vote written straight into user_votes (no hold needed: cast_vote is not involved). */
export async function insertVote(db, { pollId, userId, optionIndex }) {
  await db.query(
    'insert into public.user_votes (poll_id, user_id, option_index, hold_ms) values ($1, $2, $3, 3200)',
    [pollId, userId, optionIndex],
  );
}
