// Helpers for the supabase-js end-to-end tests: a throw-away database + relay process per test
// file, a supabase-js client configured for Node (the `ws` transport), bounded waits, and
// field-by-field assertions on postgres_changes payloads.
//
// Nothing here modifies supabase-js: `transport` and `vsn` are documented client options.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { before, after } from 'node:test';

import pg from 'pg';
import WebSocket from 'ws';
import { createClient } from '@supabase/supabase-js';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = path.resolve(here, '..', '..');

const ADMIN_URL = process.env.TEST_DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/postgres';
const RELAY_BIN = process.env.PGRELAY_BIN || path.join(REPO_ROOT, 'target', 'debug', 'pgrelay');
const STARTUP_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 10_000;
const LISTENING_RE = /pgrelay listening addr=(\S+)/;

/** The vsn values every test runs with: the client default (2.0.0) and the JSON-object 1.0.0. */
export const VSNS = [undefined, '1.0.0'];
export const vsnLabel = (vsn) => `vsn ${vsn ?? '2.0.0 (default)'}`;

/** Bound for "nothing arrives" checks. */
export const QUIET_MS = 500;
/** Bound for "this arrives" checks. */
export const EVENT_TIMEOUT_MS = 5_000;

export const COMMIT_TS_RE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

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

function dbUrlFor(dbName) {
  const u = new URL(ADMIN_URL);
  u.pathname = `/${dbName}`;
  return u.toString();
}

async function withAdmin(fn) {
  const admin = new pg.Client({ connectionString: ADMIN_URL });
  await admin.connect();
  try {
    return await fn(admin);
  } finally {
    await admin.end();
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Resolves with the value of `target` (a promise, or a predicate polled every 10 ms until it
 * returns something truthy), or rejects after `ms` with "timed out after N ms waiting for <what>".
 */
export function waitFor(target, ms, what) {
  let timer;
  let settled = false;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)),
      ms,
    );
  });
  let work;
  if (typeof target === 'function') {
    work = new Promise((resolve, reject) => {
      const poll = () => {
        let v;
        try {
          v = target();
        } catch (err) {
          reject(err);
          return;
        }
        if (v) resolve(v);
        else if (!settled) setTimeout(poll, 10);
      };
      poll();
    });
  } else {
    work = Promise.resolve(target);
  }
  return Promise.race([work, timeout]).finally(() => {
    settled = true;
    clearTimeout(timer);
  });
}

/** Polls `GET /ready` until it answers 200 (database set up, LISTEN active). */
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
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A relay child process; resolves once it listens and `/ready` says it is ready. */
async function spawnRelay(dbUrl, port, env = {}) {
  const proc = await spawnRelayProcess(dbUrl, port, env);
  await waitReady(proc.port, proc.stderr);
  return proc;
}

/** A relay child process; resolves once it logged its listening address. */
function spawnRelayProcess(dbUrl, port, extraEnv = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(RELAY_BIN, ['serve', '--listen', `127.0.0.1:${port}`], {
      cwd: REPO_ROOT,
      env: {
        ...process.env,
        DATABASE_URL: dbUrl,
        RUST_LOG: process.env.PGRELAY_TEST_RUST_LOG || 'info',
        ...extraEnv,
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
      finish(
        new Error(
          `pgrelay did not log its listening address within ${STARTUP_TIMEOUT_MS} ms; stderr:\n${stderr}`,
        ),
      );
    }, STARTUP_TIMEOUT_MS);
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk) => {
      stderr += chunk;
      if (process.env.PGRELAY_TEST_VERBOSE) process.stderr.write(chunk);
      const m = LISTENING_RE.exec(stderr);
      if (m && !done) {
        const addr = m[1].replace(/[,"]+$/, '');
        const actualPort = Number(addr.slice(addr.lastIndexOf(':') + 1));
        finish(null, { child, exited, port: actualPort, stderr: () => stderr });
      }
    });
    child.once('error', (err) => finish(
        new Error(
          `cannot spawn ${RELAY_BIN}: ${err.message} (run \`cargo build\` in the repository root, or set PGRELAY_BIN)`,
        ),
      ));
    exited.then(({ code, signal }) =>
      finish(
        new Error(
          `pgrelay exited (code ${code}, signal ${signal}) before listening; stderr:\n${stderr}`,
        ),
      ),
    );
  });
}

/** SIGTERM, wait for exit (SIGKILL after STOP_TIMEOUT_MS); returns {code, signal}. */
async function stopRelay(proc) {
  const { child, exited } = proc;
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
  if (result === null) {
    child.kill('SIGKILL');
    const r = await exited;
    throw new Error(
      `pgrelay did not exit within ${STOP_TIMEOUT_MS} ms of SIGTERM (killed: ${JSON.stringify(r)}); stderr:\n${proc.stderr()}`,
    );
  }
  return result;
}

/**
 * Another relay on an existing database (`relay.dbUrl`), with extra environment `env`:
 * `{ url, port, stop(), kill(), stderr() }`. `stop()` is SIGTERM (expects exit 0), `kill()`
 * SIGKILL.
 */
export async function startPeerRelay(dbUrl, env = {}) {
  const proc = await spawnRelay(dbUrl, 0, env);
  return {
    port: proc.port,
    url: `http://127.0.0.1:${proc.port}`,
    stderr: () => proc.stderr(),
    async stop() {
      const r = await stopRelay(proc);
      assert.equal(r.code, 0, `pgrelay exit on SIGTERM: ${JSON.stringify(r)}; stderr:\n${proc.stderr()}`);
    },
    async kill() {
      proc.child.kill('SIGKILL');
      await proc.exited;
    },
  };
}

/**
 * Creates a fresh database, starts the relay on it (with extra environment `env`) and returns
 * `{ url, port, db, dbName, dbUrl, stop(), restart(), stderr() }`.
 */
export async function startRelay({ port = 0, env = {} } = {}) {
  const dbName = `pgrelay_js_${randomBytes(6).toString('hex')}`;
  await withAdmin((admin) => admin.query(`CREATE DATABASE "${dbName}"`));
  const dbUrl = dbUrlFor(dbName);
  let proc;
  let db;
  let stopped = false;

  const dropDb = () =>
    withAdmin((admin) => admin.query(`DROP DATABASE IF EXISTS "${dbName}" WITH (FORCE)`));

  try {
    proc = await spawnRelay(dbUrl, port, env);
    db = new pg.Client({ connectionString: dbUrl });
    await db.connect();
  } catch (err) {
    if (proc) await stopRelay(proc).catch(() => {});
    if (db) await db.end().catch(() => {});
    await dropDb().catch(() => {});
    throw err;
  }

  const relay = {
    dbName,
    dbUrl,
    db,
    port: proc.port,
    url: `http://127.0.0.1:${proc.port}`,
    stderr: () => proc.stderr(),
    /** SIGTERM the relay, wait for its exit (expects code 0), drop the database. Idempotent. */
    async stop() {
      if (stopped) return;
      stopped = true;
      let exitErr = null;
      try {
        const r = await stopRelay(proc);
        if (r.code !== 0) {
          exitErr = new Error(
            `pgrelay exited with ${JSON.stringify(r)} on SIGTERM; stderr:\n${proc.stderr()}`,
          );
        }
      } catch (err) {
        exitErr = err;
      }
      await db.end().catch(() => {});
      await dropDb();
      if (exitErr) throw exitErr;
    },
    /** Stop the relay process (database kept) and start it again on the same port. */
    async restart() {
      const r = await stopRelay(proc);
      assert.equal(r.code, 0, `pgrelay exit on SIGTERM: ${JSON.stringify(r)}`);
      proc = await spawnRelay(dbUrl, relay.port, env);
      assert.equal(proc.port, relay.port, 'restarted relay listens on the same port');
    },
  };
  return relay;
}

/** supabase-js client for the relay at `url`; `vsn` undefined = the client default (2.0.0). */
export function makeClient(url, vsn) {
  return createClient(url, 'any-anon-key', {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    realtime: {
      transport: WebSocket,
      ...(vsn ? { vsn } : {}),
    },
  });
}

/**
 * Subscribes `channel`; resolves on SUBSCRIBED, rejects on CHANNEL_ERROR / TIMED_OUT / CLOSED
 * (or after `timeout` ms). `onStatus(status, err)` sees every status, also later ones
 * (rejoins after a reconnect).
 */
export function subscribed(channel, { timeout = 10_000, onStatus } = {}) {
  return waitFor(
    new Promise((resolve, reject) => {
      channel.subscribe((status, err) => {
        onStatus?.(status, err);
        if (status === 'SUBSCRIBED') resolve(status);
        else if (status === 'CHANNEL_ERROR' || status === 'TIMED_OUT' || status === 'CLOSED') {
          reject(
            new Error(
              `channel ${channel.topic} reported ${status}${err ? `: ${err.message ?? err}` : ''}`,
              { cause: err },
            ),
          );
        }
      });
    }),
    timeout + 1_000,
    `${channel.topic} to report SUBSCRIBED`,
  );
}

/**
 * Records every call of a callback. `rec.cb` is the callback; `rec.next(what, pred)` resolves
 * with the first recorded (or future) event after the last consumed one that matches `pred`;
 * `rec.quiet(what)` asserts that nothing (unconsumed) arrives within QUIET_MS.
 */
export function recorder(name) {
  const events = [];
  let consumed = 0;
  const rec = {
    name,
    events,
    cb: (payload) => {
      events.push(payload);
    },
    /** Next event (strictly in order) within `ms`; consumes it. */
    async next(what = 'an event', ms = EVENT_TIMEOUT_MS) {
      await waitFor(() => events.length > consumed, ms, `${what} at callback "${name}"`);
      return events[consumed++];
    },
    /** Asserts that no event beyond the consumed ones arrives within `ms`. */
    async quiet(what = 'no event', ms = QUIET_MS) {
      await sleep(ms);
      assert.deepEqual(
        events.slice(consumed),
        [],
        `callback "${name}" expected ${what} but received ${events.length - consumed} event(s)`,
      );
    },
    /** Marks everything received so far as consumed. */
    drain() {
      consumed = events.length;
    },
  };
  return rec;
}

/** Row `id` of `table` as jsonb (the same encoding the relay's trigger uses), or null. */
export async function readRow(db, table, id) {
  const { rows } = await db.query(`select to_jsonb(t) as row from public.${table} t where id = $1`, [
    id,
  ]);
  return rows.length ? rows[0].row : null;
}

/**
 * Field-by-field check of a postgres_changes payload as supabase-js hands it to a callback.
 */
export function assertChange(payload, { eventType, table, schema = 'public', newRow, oldRow }) {
  assert.ok(payload && typeof payload === 'object', 'payload is an object');
  assert.deepEqual(
    Object.keys(payload).sort(),
    ['commit_timestamp', 'errors', 'eventType', 'new', 'old', 'schema', 'table'],
    'payload keys',
  );
  assert.equal(payload.eventType, eventType, 'eventType');
  assert.equal(payload.schema, schema, 'schema');
  assert.equal(payload.table, table, 'table');
  assert.equal(payload.errors, null, 'errors');
  assert.equal(typeof payload.commit_timestamp, 'string', 'commit_timestamp is a string');
  assert.match(payload.commit_timestamp, COMMIT_TS_RE, 'commit_timestamp format');
  const ts = Date.parse(payload.commit_timestamp);
  assert.ok(
    Math.abs(Date.now() - ts) < 60_000,
    `commit_timestamp ${payload.commit_timestamp} is close to now`,
  );
  assert.deepEqual(payload.new, newRow ?? {}, `${eventType} ${table}: new`);
  assert.deepEqual(payload.old, oldRow ?? {}, `${eventType} ${table}: old`);
}

// ---- writes to the reference schema (sql/V1__reference_schema.sql) -------------------------

let counter = 0;
const uniq = () => `${Date.now().toString(36)}_${(counter++).toString(36)}_${randomBytes(3).toString('hex')}`;

export async function insertProfile(db, fields = {}) {
  const username = fields.username ?? `user_${uniq()}`;
  const { rows } = await db.query(
    `insert into public.profiles (username, display_name) values ($1, $2) returning id`,
    [username, fields.display_name ?? `User ${username}`],
  );
  return rows[0].id;
}

export async function insertPoll(db, { status = 'active', createdBy = null, question } = {}) {
  const { rows } = await db.query(
    `insert into public.polls (question, options, status, created_by)
     values ($1, $2::jsonb, $3, $4) returning id`,
    [question ?? `Question ${uniq()}?`, JSON.stringify(['yes', 'no', 'maybe']), status, createdBy],
  );
  return rows[0].id;
}

export async function insertVote(db, { pollId, userId, optionIndex = 0, holdMs = 3200 }) {
  const { rows } = await db.query(
    `insert into public.user_votes (poll_id, user_id, option_index, hold_ms)
     values ($1, $2, $3, $4) returning id`,
    [pollId, userId, optionIndex, holdMs],
  );
  return rows[0].id;
}

export async function insertHold(db, { userId = null, pollId = null } = {}) {
  const { rows } = await db.query(
    `insert into public.button_holds (user_id, poll_id) values ($1, $2) returning id`,
    [userId, pollId],
  );
  return rows[0].id;
}

/** Runs `sql` (which must touch exactly one row of `table` with id $1) and returns old/new rows. */
export async function changeRow(db, table, id, sql, params = []) {
  const before = await readRow(db, table, id);
  const res = await db.query(sql, [id, ...params]);
  assert.equal(res.rowCount, 1, `${sql} touched one row`);
  const after = await readRow(db, table, id);
  return { before, after };
}

/** Tear down a client: remove its channels (bounded) and close its socket. */
export async function closeClient(client) {
  if (!client) return;
  await waitFor(client.removeAllChannels(), 12_000, 'removeAllChannels()').catch(() => {});
  await client.realtime.disconnect?.();
}

/**
 * One relay (and database) for the calling test file: `const ctx = useRelay();` then
 * `ctx.relay` inside tests. Stopped (and the database dropped) in `after`.
 */
export function useRelay() {
  const ctx = { relay: null };
  before(async () => {
    ctx.relay = await startRelay();
  });
  after(async () => {
    await ctx.relay?.stop();
  });
  return ctx;
}

/** Runs `fn(client)` with a fresh supabase-js client, always tearing it down afterwards. */
export async function withClient(relay, vsn, fn) {
  const client = makeClient(relay.url, vsn);
  try {
    return await fn(client);
  } finally {
    await closeClient(client);
  }
}

/** Per-test timeout (ms) for node:test. */
export const TEST_TIMEOUT_MS = 60_000;
