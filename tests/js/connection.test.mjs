// docs/app.md client patterns 6 and 7:
//   6. channel('connection-monitor') with .on('system', {}, cb) and the subscribe status
//      callback (seed: useRealtimeConnection)
//   7. removeChannel() of each seed channel, and the client's automatic reconnect after the
//      relay restarts (same port)

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';

import {
  VSNS,
  vsnLabel,
  useRelay,
  withClient,
  subscribed,
  recorder,
  readRow,
  waitFor,
  assertChange,
  insertProfile,
  insertPoll,
  insertVote,
  insertHold,
  QUIET_MS,
  sleep,
  TEST_TIMEOUT_MS,
} from './helpers.mjs';
import {
  buttonSessions,
  pollsChanges,
  statisticsUpdates,
  appUpdates,
  connectionMonitor,
} from './channels.mjs';

const ctx = useRelay();

const SUBSCRIBED_OK = {
  channel: 'connection-monitor',
  extension: 'postgres_changes',
  message: 'Subscribed to PostgreSQL',
  status: 'ok',
};

describe('pattern 6: connection-monitor (system listener + status callback)', () => {
  for (const vsn of VSNS) {
    describe(vsnLabel(vsn), () => {
      test('status SUBSCRIBED, and the system callback gets "Subscribed to PostgreSQL" when the channel has a postgres_changes binding', { timeout: TEST_TIMEOUT_MS }, async () => {
        const { db } = ctx.relay;
        await withClient(ctx.relay, vsn, async (client) => {
          const system = recorder('system');
          const changes = recorder('polls *');
          const statuses = [];
          await subscribed(connectionMonitor(client, system, { table: 'polls', changesRec: changes }), {
            onStatus: (status) => statuses.push(status),
          });
          assert.deepEqual(await system.next('system message after the join'), SUBSCRIBED_OK);
          await system.quiet('exactly one system message per join');
          assert.deepEqual(statuses, ['SUBSCRIBED']);

          // The binding delivers; system messages are not mixed in.
          const pollId = await insertPoll(db);
          assertChange(await changes.next('INSERT polls'), {
            eventType: 'INSERT',
            table: 'polls',
            newRow: await readRow(db, 'polls', pollId),
          });
          await system.quiet();
          assert.deepEqual(statuses, ['SUBSCRIBED']);
        });
      });

      test('as the seed writes it (system listener only): SUBSCRIBED and no system message', { timeout: TEST_TIMEOUT_MS }, async () => {
        await withClient(ctx.relay, vsn, async (client) => {
          const system = recorder('system');
          const statuses = [];
          const channel = client
            .channel('connection-monitor')
            .on('system', {}, system.cb);
          await subscribed(channel, { onStatus: (status) => statuses.push(status) });
          assert.equal(channel.state, 'joined');
          await system.quiet('no system message for a join without postgres_changes bindings');
          assert.deepEqual(statuses, ['SUBSCRIBED']);
        });
      });

      test('a binding on an unknown table: joined, and a system payload with status error', { timeout: TEST_TIMEOUT_MS }, async () => {
        const { db } = ctx.relay;
        await withClient(ctx.relay, vsn, async (client) => {
          const system = recorder('system');
          const changes = recorder('nope *');
          const statuses = [];
          await subscribed(connectionMonitor(client, system, { table: 'nope', changesRec: changes }), {
            onStatus: (status) => statuses.push(status),
          });
          assert.deepEqual(await system.next('system error message'), {
            channel: 'connection-monitor',
            extension: 'postgres_changes',
            message:
              'Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: [event: *, schema: public, table: nope, filters: []]',
            status: 'error',
          });
          // Changes elsewhere do not reach the failed binding; the channel stays as it is.
          await insertPoll(db);
          await insertProfile(db);
          await Promise.all([system.quiet(), changes.quiet('no change for a failed binding')]);
          assert.deepEqual(statuses, ['SUBSCRIBED']);
        });
      });
    });
  }
});

// Each seed channel with: how to make one change per binding, and which recorder it reaches.
const SEED_CHANNELS = [
  {
    name: 'button-sessions',
    build(client) {
      const recs = { holds: recorder('button_holds *') };
      return { channel: buttonSessions(client, recs.holds), recs };
    },
    async change(db, recs) {
      await insertHold(db);
      return [[recs.holds, 'button_holds']];
    },
  },
  {
    name: 'polls-changes',
    build(client) {
      const recs = { polls: recorder('polls *'), votes: recorder('user_votes *') };
      return { channel: pollsChanges(client, recs.polls, recs.votes), recs };
    },
    async change(db, recs) {
      const userId = await insertProfile(db);
      const pollId = await insertPoll(db, { createdBy: userId });
      await insertVote(db, { pollId, userId });
      return [
        [recs.polls, 'polls'],
        [recs.votes, 'user_votes'],
      ];
    },
  },
  {
    name: 'statistics-updates',
    build(client) {
      const recs = {
        votes: recorder('user_votes INSERT'),
        polls: recorder('polls INSERT'),
        profiles: recorder('profiles INSERT'),
      };
      return { channel: statisticsUpdates(client, recs.votes, recs.polls, recs.profiles), recs };
    },
    async change(db, recs) {
      const userId = await insertProfile(db);
      const pollId = await insertPoll(db, { createdBy: userId });
      await insertVote(db, { pollId, userId });
      return [
        [recs.profiles, 'profiles'],
        [recs.polls, 'polls'],
        [recs.votes, 'user_votes'],
      ];
    },
  },
  {
    name: 'app-updates',
    build(client) {
      const recs = { votes: recorder('user_votes INSERT'), polls: recorder('polls UPDATE active') };
      return { channel: appUpdates(client, recs.votes, recs.polls), recs };
    },
    async change(db, recs) {
      const userId = await insertProfile(db);
      const pollId = await insertPoll(db, { status: 'active', createdBy: userId });
      await db.query('update public.polls set boost_count = boost_count + 1 where id = $1', [pollId]);
      await insertVote(db, { pollId, userId });
      return [
        [recs.polls, 'polls'],
        [recs.votes, 'user_votes'],
      ];
    },
  },
  {
    name: 'connection-monitor',
    build(client) {
      const recs = { system: recorder('system'), polls: recorder('polls *') };
      return {
        channel: connectionMonitor(client, recs.system, { table: 'polls', changesRec: recs.polls }),
        recs,
      };
    },
    async change(db, recs) {
      await insertPoll(db);
      return [[recs.polls, 'polls']];
    },
  },
];

async function expectDelivered(expected, what) {
  for (const [rec, table] of expected) {
    const ev = await rec.next(`${what}: change on ${table}`);
    assert.equal(ev.table, table, `${what}: event at "${rec.name}" is for ${table}`);
  }
}

describe('pattern 7: removeChannel()', () => {
  for (const vsn of VSNS) {
    describe(vsnLabel(vsn), () => {
      for (const spec of SEED_CHANNELS) {
        test(`removeChannel(${spec.name}) resolves 'ok', reports CLOSED and stops delivery`, { timeout: TEST_TIMEOUT_MS }, async () => {
          const { db } = ctx.relay;
          await withClient(ctx.relay, vsn, async (client) => {
            const { channel, recs } = spec.build(client);
            const statuses = [];
            await subscribed(channel, { onStatus: (s) => statuses.push(s) });
            await expectDelivered(await spec.change(db, recs), 'before removeChannel');
            await sleep(QUIET_MS); // let a late system message land before the check below
            for (const rec of Object.values(recs)) rec.drain();

            const result = await waitFor(client.removeChannel(channel), 12_000, 'removeChannel()');
            assert.equal(result, 'ok');
            assert.ok(
              !client.getChannels().includes(channel),
              'the channel is gone from getChannels()',
            );
            await waitFor(() => statuses.includes('CLOSED'), 2_000, 'status CLOSED');
            assert.deepEqual(statuses, ['SUBSCRIBED', 'CLOSED']);

            await spec.change(db, recs);
            await Promise.all(
              Object.values(recs).map((rec) => rec.quiet('nothing after removeChannel')),
            );
          });
        });
      }

      test('all seed channels on one socket: each removal stops only that channel', { timeout: TEST_TIMEOUT_MS }, async () => {
        const { db } = ctx.relay;
        await withClient(ctx.relay, vsn, async (client) => {
          const live = SEED_CHANNELS.map((spec) => ({ spec, ...spec.build(client) }));
          await Promise.all(live.map(({ channel }) => subscribed(channel)));
          await sleep(QUIET_MS);
          for (const { recs } of live) for (const rec of Object.values(recs)) rec.drain();

          const removed = [];
          while (live.length) {
            const victim = live.shift();
            assert.equal(
              await waitFor(client.removeChannel(victim.channel), 12_000, `removeChannel(${victim.spec.name})`),
              'ok',
            );
            removed.push(victim);
            for (const { spec, recs } of live) {
              await expectDelivered(await spec.change(db, recs), `${spec.name} after removing ${victim.spec.name}`);
            }
            await victim.spec.change(db, victim.recs);
            await sleep(QUIET_MS);
            for (const { spec, recs } of removed) {
              for (const rec of Object.values(recs)) {
                await rec.quiet(`nothing at removed ${spec.name}`, 0);
              }
            }
            // Remaining channels may also have seen the removed channel's writes; not checked.
            for (const { recs } of live) for (const rec of Object.values(recs)) rec.drain();
          }
          assert.deepEqual(client.getChannels(), []);
        });
      });
    });
  }
});

describe('pattern 7: automatic reconnect after the relay restarts', () => {
  for (const vsn of VSNS) {
    describe(vsnLabel(vsn), () => {
      test('channels report CHANNEL_ERROR/CLOSED, then SUBSCRIBED by themselves, and a change committed after the restart arrives', { timeout: 90_000 }, async () => {
        const { db } = ctx.relay;
        await withClient(ctx.relay, vsn, async (client) => {
          const polls = recorder('polls *');
          const votes = recorder('user_votes *');
          const system = recorder('system');
          const monitorChanges = recorder('connection-monitor polls *');
          const pcStatuses = [];
          const cmStatuses = [];
          await Promise.all([
            subscribed(pollsChanges(client, polls, votes), { onStatus: (s) => pcStatuses.push(s) }),
            subscribed(connectionMonitor(client, system, { table: 'polls', changesRec: monitorChanges }), {
              onStatus: (s) => cmStatuses.push(s),
            }),
          ]);
          assert.deepEqual(await system.next('system ok after the first join'), SUBSCRIBED_OK);

          await ctx.relay.restart();

          // CHANNEL_ERROR (socket closed) or CLOSED, then SUBSCRIBED again: no app code involved.
          const rejoined = (statuses) => {
            const down = statuses.findIndex((s, i) => i > 0 && (s === 'CHANNEL_ERROR' || s === 'CLOSED'));
            return down > 0 && statuses.indexOf('SUBSCRIBED', down) > down;
          };
          await waitFor(() => rejoined(pcStatuses), 30_000, 'polls-changes to rejoin').catch((err) => {
            throw new Error(`${err.message}; statuses: ${JSON.stringify(pcStatuses)}`);
          });
          await waitFor(() => rejoined(cmStatuses), 30_000, 'connection-monitor to rejoin').catch((err) => {
            throw new Error(`${err.message}; statuses: ${JSON.stringify(cmStatuses)}`);
          });
          assert.equal(pcStatuses[0], 'SUBSCRIBED');
          assert.ok(
            pcStatuses.every((s) => ['SUBSCRIBED', 'CHANNEL_ERROR', 'CLOSED'].includes(s)),
            `statuses: ${pcStatuses}`,
          );
          assert.deepEqual(await system.next('system ok after the rejoin', 10_000), SUBSCRIBED_OK);

          // A change committed after the restart reaches both channels, once each.
          const pollId = await insertPoll(db);
          const row = await readRow(db, 'polls', pollId);
          assertChange(await polls.next('INSERT polls after the restart'), {
            eventType: 'INSERT',
            table: 'polls',
            newRow: row,
          });
          assertChange(await monitorChanges.next('INSERT polls after the restart'), {
            eventType: 'INSERT',
            table: 'polls',
            newRow: row,
          });
          await Promise.all([polls.quiet(), votes.quiet(), monitorChanges.quiet(), system.quiet()]);
        });
      });
    });
  }
});
