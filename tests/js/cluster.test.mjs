// Several relays sharing Redis act as one: presence and broadcasts cross relays, a killed
// relay's members leave everywhere, and a Redis outage degrades each relay to a single node
// that keeps serving its own clients, then converges again.
//
// Uses the Redis at TEST_REDIS_URL (default redis://127.0.0.1:6379) with a key prefix of its
// own, and for the outage a redis-server it starts on a free port.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import net from 'node:net';

import {
  VSNS,
  vsnLabel,
  startRelay,
  startPeerRelay,
  makeClient,
  subscribed,
  closeClient,
  insertProfile,
  readRow,
  assertChange,
  sleep,
  TEST_TIMEOUT_MS,
} from './helpers.mjs';

const REDIS_URL = process.env.TEST_REDIS_URL || 'redis://127.0.0.1:6379';
/** A killed relay's members must be gone everywhere within this. */
const DEAD_RELAY_LEAVES_MS = 15_000;
/** Presence must converge within this after Redis returns. */
const CONVERGE_MS = 15_000;

/** Polls an async predicate every 20 ms until it holds, or fails after `ms`. */
async function until(pred, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await pred()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

const clusterEnv = (url, prefix) => ({ PGRELAY_REDIS_URL: url, PGRELAY_REDIS_PREFIX: prefix });
const newPrefix = () => `pgrelay_test_${randomBytes(5).toString('hex')}`;

/**
 * A supabase-js member of `topic` on the relay at `url`: presence key `key`, acknowledged
 * broadcasts, every broadcast it receives recorded. `track()` is up to the test.
 */
async function member(url, vsn, topic, key) {
  const client = makeClient(url, vsn);
  const got = [];
  const channel = client
    .channel(topic, { config: { presence: { key }, broadcast: { ack: true, self: false } } })
    .on('presence', { event: 'sync' }, () => {})
    .on('broadcast', { event: '*' }, (m) => got.push(m));
  await subscribed(channel);
  const keys = () => Object.keys(channel.presenceState()).sort();
  return { client, channel, got, keys };
}

describe('two relays sharing Redis', () => {
  let a;
  let b;
  const prefix = newPrefix();
  before(async () => {
    a = await startRelay({ env: clusterEnv(REDIS_URL, prefix) });
    b = await startPeerRelay(a.dbUrl, clusterEnv(REDIS_URL, prefix));
  });
  after(async () => {
    await b?.stop();
    await a?.stop();
  });

  for (const vsn of VSNS) {
    test(`${vsnLabel(vsn)}: presence and broadcasts cross relays, in order`, { timeout: TEST_TIMEOUT_MS }, async () => {
      const topic = `room-${randomBytes(4).toString('hex')}`;
      const alice = await member(a.url, vsn, topic, 'alice');
      const bob = await member(b.url, vsn, topic, 'bob');
      try {
        assert.equal(await alice.channel.track({ name: 'Alice' }), 'ok');
        assert.equal(await bob.channel.track({ name: 'Bob' }), 'ok');
        for (const m of [alice, bob]) {
          await until(async () => m.keys().join() === 'alice,bob', 5_000, 'both members on both relays');
        }
        const bobSeenByAlice = alice.channel.presenceState().bob;
        assert.equal(bobSeenByAlice.length, 1, 'one meta for bob');
        assert.equal(bobSeenByAlice[0].name, 'Bob');
        assert.equal(typeof bobSeenByAlice[0].presence_ref, 'string');
        assert.equal(bob.channel.presenceState().alice[0].name, 'Alice');

        // A socket broadcast on A reaches B; the ack comes once Redis has it.
        assert.equal(
          await alice.channel.send({ type: 'broadcast', event: 'cursor', payload: { x: 1, who: 'alice' } }),
          'ok',
        );
        await until(async () => bob.got.length === 1, 5_000, 'bob to get the broadcast from relay A');
        assert.deepEqual(bob.got[0], { type: 'broadcast', event: 'cursor', payload: { x: 1, who: 'alice' } });

        // Order per sender and topic: 30 sends without waiting in between.
        const acks = await Promise.all(
          Array.from({ length: 30 }, (_, i) =>
            alice.channel.send({ type: 'broadcast', event: 'seq', payload: { i } }),
          ),
        );
        assert.deepEqual(new Set(acks), new Set(['ok']));
        await until(async () => bob.got.length === 31, 5_000, 'bob to get 30 more');
        assert.deepEqual(bob.got.slice(1).map((m) => m.payload.i), [...Array(30).keys()]);

        // The REST batch endpoint on B reaches A's member.
        const res = await fetch(`${b.url}/realtime/v1/api/broadcast`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', apikey: 'any-anon-key' },
          body: JSON.stringify({ messages: [{ topic, event: 'rest', payload: { via: 'b' } }] }),
        });
        assert.equal(res.status, 202);
        await until(async () => alice.got.length === 1, 5_000, 'alice to get the REST broadcast sent to relay B');
        assert.deepEqual(alice.got[0], { type: 'broadcast', event: 'rest', payload: { via: 'b' } });
        await until(async () => bob.got.length === 32, 5_000, 'bob, on relay B, to get it too');
        assert.deepEqual(bob.got[31], alice.got[0]);

        // Leaves cross too.
        assert.equal(await bob.channel.untrack(), 'ok');
        await until(async () => alice.keys().join() === 'alice', 5_000, 'bob to leave on relay A');
      } finally {
        await closeClient(alice.client);
        await closeClient(bob.client);
      }
    });
  }

  test('relay-run holds: the holder count on button-presence is right on both relays', { timeout: TEST_TIMEOUT_MS }, async () => {
    const users = [await insertProfile(a.db), await insertProfile(a.db), await insertProfile(a.db)];
    const on = [a.url, a.url, b.url];
    const holders = [];
    try {
      for (let i = 0; i < 3; i++) {
        const h = await member(on[i], undefined, 'button-presence', '');
        assert.equal(await h.channel.track({ user_id: users[i] }), 'ok');
        holders.push(h);
      }
      for (const h of holders) {
        await until(async () => h.keys().length === 3, 10_000, 'every holder to count 3');
      }
      const { rows } = await a.db.query(
        'select count(*)::int as n from button_holds where user_id = any($1) and is_active',
        [users],
      );
      assert.equal(rows[0].n, 3, 'each relay runs the holds of its own sockets');
      await closeClient(holders[2].client);
      for (const h of holders.slice(0, 2)) {
        await until(async () => h.keys().length === 2, 10_000, 'A to count 2 after the holder on B left');
      }
    } finally {
      for (const h of holders) await closeClient(h.client);
    }
  });

  test('a relay killed with SIGKILL: its members leave on the others within 15 s', { timeout: TEST_TIMEOUT_MS }, async () => {
    const c = await startPeerRelay(a.dbUrl, clusterEnv(REDIS_URL, prefix));
    const topic = `room-${randomBytes(4).toString('hex')}`;
    const alice = await member(a.url, undefined, topic, 'alice');
    const carol = await member(c.url, undefined, topic, 'carol');
    try {
      await alice.channel.track({ at: 'a' });
      await carol.channel.track({ at: 'c' });
      await until(async () => alice.keys().join() === 'alice,carol', 5_000, 'carol on relay A');
      await c.kill();
      const t0 = Date.now();
      await until(async () => alice.keys().join() === 'alice', DEAD_RELAY_LEAVES_MS, 'carol to leave after relay C died');
      console.log(`# killed relay's member left after ${Date.now() - t0} ms`);
    } finally {
      await closeClient(alice.client);
      carol.client.removeAllChannels().catch(() => {});
    }
  });
});

/** A free TCP port on loopback. */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** A throw-away redis-server on `port` that keeps nothing on disk. */
async function startRedis(port) {
  const child = spawn(
    process.env.REDIS_SERVER || 'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    { stdio: 'ignore' },
  );
  const exited = new Promise((res) => child.once('exit', res));
  child.once('error', () => {});
  await until(
    () =>
      new Promise((res) => {
        const s = net.connect(port, '127.0.0.1', () => {
          s.end();
          res(true);
        });
        s.once('error', () => res(false));
      }),
    10_000,
    `redis-server on port ${port} (is redis-server installed?)`,
  );
  return {
    async kill() {
      child.kill('SIGKILL');
      await exited;
    },
  };
}

async function metric(url, name) {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line === undefined ? undefined : Number(line.split(' ')[1]);
}

describe('Redis stopped and restarted', () => {
  test('each relay keeps serving its own clients, and presence converges when Redis returns', { timeout: 90_000 }, async () => {
    const port = await freePort();
    let redis = await startRedis(port);
    const env = clusterEnv(`redis://127.0.0.1:${port}`, newPrefix());
    const a = await startRelay({ env });
    const b = await startPeerRelay(a.dbUrl, env);
    const topic = `room-${randomBytes(4).toString('hex')}`;
    const members = [];
    try {
      const alice = await member(a.url, undefined, topic, 'alice');
      const anna = await member(a.url, undefined, topic, 'anna');
      const bob = await member(b.url, undefined, topic, 'bob');
      members.push(alice, anna, bob);
      for (const m of members) await m.channel.track({ k: 1 });
      for (const m of members) {
        await until(async () => m.keys().join() === 'alice,anna,bob', 5_000, 'all three everywhere');
      }
      const changes = [];
      const rows = alice.client
        .channel('profiles-during-outage')
        .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'profiles' }, (p) => changes.push(p));
      await subscribed(rows);

      await redis.kill();
      await until(
        async () => (await (await fetch(`${a.url}/ready`)).text()).includes('redis: unreachable'),
        10_000,
        "/ready's body to say Redis is unreachable",
      );
      assert.equal((await fetch(`${a.url}/ready`)).status, 200, 'Redis down does not fail readiness');
      assert.equal(await metric(a.url, 'pgrelay_redis_up'), 0);

      // Local delivery never stops: broadcasts between A's own clients, and row changes.
      assert.equal(await alice.channel.send({ type: 'broadcast', event: 'local', payload: { n: 1 } }), 'ok');
      await until(async () => anna.got.length === 1, 5_000, 'anna to get alice broadcast during the outage');
      assert.deepEqual(anna.got[0], { type: 'broadcast', event: 'local', payload: { n: 1 } });
      const id = await insertProfile(a.db);
      await until(async () => changes.length === 1, 5_000, 'the row change during the outage');
      assertChange(changes[0], { eventType: 'INSERT', table: 'profiles', newRow: await readRow(a.db, 'profiles', id) });
      assert.ok((await metric(a.url, 'pgrelay_cluster_broadcasts_dropped_total')) >= 1, 'the broadcast that could not cross is counted');
      assert.equal(bob.got.length, 0, 'nothing crossed during the outage');

      // With nobody to vouch for them, the other relay's members leave: each relay is a
      // single node until Redis returns.
      await until(async () => alice.keys().join() === 'alice,anna', 20_000, 'bob to leave on relay A');
      await until(async () => bob.keys().join() === 'bob', 20_000, 'A members to leave on relay B');

      // Redis returns (empty: it kept nothing): presence converges on both relays.
      redis = await startRedis(port);
      const t0 = Date.now();
      for (const m of members) {
        await until(async () => m.keys().join() === 'alice,anna,bob', CONVERGE_MS, 'all three everywhere again');
      }
      console.log(`# presence converged ${Date.now() - t0} ms after Redis returned`);
      for (const r of [a, b]) {
        await until(async () => (await metric(r.url, 'pgrelay_redis_up')) === 1, 5_000, 'pgrelay_redis_up 1');
      }
      // Broadcasts cross again (a send before the subscription is back is dropped: retry).
      await until(
        async () => {
          assert.equal(await bob.channel.send({ type: 'broadcast', event: 'back', payload: { n: 2 } }), 'ok');
          await sleep(200);
          return alice.got.some((m) => m.event === 'back');
        },
        10_000,
        'broadcasts to cross again',
      );
      assert.deepEqual(alice.got.find((m) => m.event === 'back'), { type: 'broadcast', event: 'back', payload: { n: 2 } });
    } finally {
      for (const m of members) await closeClient(m.client);
      await b.stop().catch(() => {});
      await a.stop().catch(() => {});
      await redis.kill();
    }
  });
});
