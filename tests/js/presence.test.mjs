// docs/app.md client pattern 2: channel('button-presence') with presence sync, counting holders
// from presenceState(); plus broadcast between clients.
//
// On the hold channel a track({user_id}) also makes the relay run a button_holds row for the
// holder (started on track, ended on untrack or disconnect).

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createClient } from '@supabase/supabase-js';
import WebSocket from 'ws';

import {
  VSNS,
  vsnLabel,
  useRelay,
  subscribed,
  insertProfile,
  closeClient,
  sleep,
  TEST_TIMEOUT_MS,
} from './helpers.mjs';

const ctx = useRelay();

/** Polls an async predicate every 20 ms until it holds, or fails after `ms`. */
async function until(pred, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await pred()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

/** A supabase-js client whose WebSocket we can reach, to kill it without a close frame. */
function trackedClient(url, vsn) {
  const sockets = [];
  class Tracked extends WebSocket {
    constructor(...args) {
      super(...args);
      sockets.push(this);
    }
  }
  const client = createClient(url, 'any-anon-key', {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    realtime: { transport: Tracked, ...(vsn ? { vsn } : {}) },
  });
  return { client, sockets };
}

/** The seed's useSessionManager presence channel, tracking `userId` once subscribed. */
function holder(url, vsn, userId) {
  const { client, sockets } = trackedClient(url, vsn);
  const state = { count: 0, counts: [], tracked: false, dead: false };
  const channel = client
    .channel('button-presence')
    .on('presence', { event: 'sync' }, () => {
      state.count = Object.keys(channel.presenceState()).length;
      state.counts.push(state.count);
    });
  const ready = subscribed(channel, {
    onStatus: async (status) => {
      if (status === 'SUBSCRIBED' && !state.dead && !state.tracked) {
        state.tracked = true;
        const r = await channel.track({ user_id: userId, online_at: new Date().toISOString() });
        assert.equal(r, 'ok', 'track() resolves ok');
      }
    },
  });
  return { client, sockets, channel, state, ready };
}

async function holdsOf(db, userId) {
  const res = await db.query(
    'select is_active, ended_at is not null as ended from button_holds where user_id = $1 order by started_at',
    [userId],
  );
  return res.rows;
}

describe('pattern 2: button-presence counts holders', () => {
  for (const vsn of VSNS) {
    test(`${vsnLabel(vsn)}: three holders see 3; a killed socket and an untrack bring it down`, { timeout: TEST_TIMEOUT_MS }, async () => {
      const { db, url } = ctx.relay;
      const users = [];
      for (let i = 0; i < 3; i++) users.push(await insertProfile(db));
      const holders = users.map((u) => holder(url, vsn, u));
      try {
        await Promise.all(holders.map((h) => h.ready));
        await until(
          async () => holders.every((h) => h.state.count === 3),
          10_000,
          'every holder to count 3',
        );
        for (const u of users) {
          await until(async () => (await holdsOf(db, u)).some((r) => r.is_active), 5_000, `an active hold for ${u}`);
        }

        // Holder 3's socket is destroyed without a close frame.
        const third = holders[2];
        third.state.dead = true;
        for (const s of third.sockets) s._socket?.destroy();
        await until(
          async () => holders[0].state.count === 2 && holders[1].state.count === 2,
          10_000,
          'the others to count 2',
        );
        await until(
          async () => (await holdsOf(db, users[2])).every((r) => !r.is_active && r.ended),
          5_000,
          'the hold of the dropped holder to be ended',
        );

        // Holder 2 untracks.
        assert.equal(await holders[1].channel.untrack(), 'ok');
        await until(async () => holders[0].state.count === 1, 10_000, 'holder 1 to count 1');
        await until(
          async () => (await holdsOf(db, users[1])).every((r) => !r.is_active),
          5_000,
          'the untracked hold to be ended',
        );
        const mine = await holdsOf(db, users[0]);
        assert.deepEqual(mine.map((r) => r.is_active), [true], 'holder 1 still holds');
      } finally {
        for (const h of holders) await closeClient(h.client);
      }
    });
  }
});

describe('broadcast between clients', () => {
  for (const vsn of VSNS) {
    test(`${vsnLabel(vsn)}: send() reaches the others, not the sender; httpSend() answers 202`, { timeout: TEST_TIMEOUT_MS }, async () => {
      const { url } = ctx.relay;
      const a = trackedClient(url, vsn).client;
      const b = trackedClient(url, vsn).client;
      try {
        const gotA = [];
        const gotB = [];
        const chA = a.channel('room1').on('broadcast', { event: 'cursor' }, (m) => gotA.push(m));
        const chB = b.channel('room1').on('broadcast', { event: 'cursor' }, (m) => gotB.push(m));
        await Promise.all([subscribed(chA), subscribed(chB)]);
        assert.equal(await chA.send({ type: 'broadcast', event: 'cursor', payload: { x: 42 } }), 'ok');
        await until(async () => gotB.length === 1, 5_000, 'b to receive the broadcast');
        assert.deepEqual(gotB[0], { type: 'broadcast', event: 'cursor', payload: { x: 42 } });
        const r = await chB.httpSend('cursor', { x: 7 });
        assert.deepEqual(r, { success: true });
        await until(async () => gotA.length === 1 && gotB.length === 2, 5_000, 'both to receive the REST broadcast');
        assert.deepEqual(gotA[0].payload, { x: 7 });
        await sleep(300);
        assert.equal(gotA.length, 1, 'the sender does not get its own send() (self: false)');
      } finally {
        await closeClient(a);
        await closeClient(b);
      }
    });
  }
});
