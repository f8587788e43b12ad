// The vote-hold flow (docs/app.md, "The 3-second vote hold", "Live statistics") end to end
// with supabase-js:
// a client holds the vote button — a presence track({user_id, poll_id}) on `button-presence`,
// which makes the relay run the user's button_holds row — for 3 s, then casts its vote through
// the HTTP API; the vote reaches `polls-changes` subscribers and the `statistics` live topic
// pushes the new totals. Releasing after 1 s and voting is refused (422), and so is a second
// vote (409).

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
  assertChange,
  insertProfile,
  insertPoll,
  sleep,
  TEST_TIMEOUT_MS,
} from './helpers.mjs';
import { pollsChanges } from './channels.mjs';

const ctx = useRelay();

/** `POST /api/v1/polls/{id}/votes` as `userId` (auth is off: the X-User-Id header). */
async function castVote(relayUrl, pollId, userId, optionIndex) {
  const res = await fetch(`${relayUrl}/api/v1/polls/${pollId}/votes`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-user-id': userId },
    body: JSON.stringify({ option_index: optionIndex }),
  });
  return { status: res.status, body: await res.json() };
}

/** The seed's hold channel; `hold(pollId)` / `release()` track and untrack the user. */
async function holdButton(client, userId) {
  const channel = client.channel('button-presence');
  await subscribed(channel);
  return {
    async hold(pollId) {
      assert.equal(await channel.track({ user_id: userId, poll_id: Number(pollId) }), 'ok');
    },
    async release() {
      assert.equal(await channel.untrack(), 'ok');
    },
  };
}

/** Waits until the user's hold row on `pollId` reaches the wanted `is_active`. */
async function holdRow(db, userId, pollId, active) {
  for (let i = 0; i < 250; i++) {
    const { rows } = await db.query(
      `select is_active, ended_at from public.button_holds
        where user_id = $1 and poll_id = $2 order by started_at desc limit 1`,
      [userId, pollId],
    );
    if (rows.length && rows[0].is_active === active) return rows[0];
    await sleep(20);
  }
  throw new Error(`the hold of ${userId} on poll ${pollId} never became is_active=${active}`);
}

describe('vote hold: hold 3 s → cast → polls-changes and statistics; early release → 422; again → 409', () => {
  for (const vsn of VSNS) {
    describe(vsnLabel(vsn), () => {
      test('the whole flow through supabase-js and the HTTP API', { timeout: TEST_TIMEOUT_MS }, async () => {
        const { db, url } = ctx.relay;
        const voter = await insertProfile(db);
        const pollId = await insertPoll(db, { status: 'active' });
        const otherPoll = await insertPoll(db, { status: 'active' });

        await withClient(ctx.relay, vsn, async (watcherClient) => {
          await withClient(ctx.relay, vsn, async (voterClient) => {
            // The watcher: the seed's polls-changes channel and the statistics live topic.
            const polls = recorder('polls');
            const votes = recorder('user_votes');
            await subscribed(pollsChanges(watcherClient, polls, votes));
            const stats = recorder('statistics');
            await subscribed(
              watcherClient.channel('statistics').on('broadcast', { event: 'update' }, stats.cb),
            );
            // The current value arrives on join; writes made just before (the poll and profile
            // above) may still be inside the debounce window, and then arrive as an update.
            const truth = (await db.query('select * from public.app_stats')).rows[0];
            const want = Object.fromEntries(Object.entries(truth).map(([k, v]) => [k, Number(v)]));
            let initial;
            for (;;) {
              const value = (await stats.next('the statistics value sent on join')).payload;
              assert.equal(value.name, 'statistics');
              assert.equal(value.rows.length, 1);
              initial = value.rows[0];
              if (JSON.stringify(initial) === JSON.stringify({ ...initial, ...want })) break;
            }
            assert.deepEqual(initial, want);

            // Hold for 3 s, cast, release — as the demo page does.
            const button = await holdButton(voterClient, voter);
            await button.hold(pollId);
            await holdRow(db, voter, pollId, true);
            await sleep(3_100);
            const cast = await castVote(url, pollId, voter, 2);
            assert.equal(cast.status, 201, JSON.stringify(cast.body));
            assert.equal(cast.body.poll_id, Number(pollId));
            assert.equal(cast.body.user_id, voter);
            assert.equal(cast.body.option_index, 2);
            assert.ok(cast.body.hold_ms >= 3_000 && cast.body.hold_ms < 10_000, `hold_ms ${cast.body.hold_ms}`);
            await button.release();
            const ended = await holdRow(db, voter, pollId, false);
            assert.ok(ended.ended_at, 'release ends the hold');

            // The vote reaches the polls-changes subscriber, field by field.
            assertChange(await votes.next('INSERT user_votes'), {
              eventType: 'INSERT',
              table: 'user_votes',
              newRow: await readRow(db, 'user_votes', cast.body.id),
            });
            // ... and the statistics topic pushes the new totals.
            const after = (await stats.next('statistics after the vote')).payload;
            assert.deepEqual(after, { name: 'statistics', rows: [{ ...initial, votes: initial.votes + 1 }] });

            // Release after 1 s: refused, nothing stored, nothing pushed.
            await button.hold(otherPoll);
            await holdRow(db, voter, otherPoll, true);
            await sleep(1_000);
            await button.release();
            await holdRow(db, voter, otherPoll, false);
            const early = await castVote(url, otherPoll, voter, 0);
            assert.equal(early.status, 422, JSON.stringify(early.body));
            assert.equal(early.body.code, 'HoldTooShort');
            assert.match(early.body.error, /hold/i);

            // A second vote on the first poll: already voted.
            const again = await castVote(url, pollId, voter, 0);
            assert.equal(again.status, 409, JSON.stringify(again.body));
            assert.equal(again.body.code, 'AlreadyVoted');

            const { rows } = await db.query(
              'select poll_id::int, option_index from public.user_votes where user_id = $1',
              [voter],
            );
            assert.deepEqual(rows, [{ poll_id: Number(pollId), option_index: 2 }]);
            await votes.quiet('no other vote event');
            await stats.quiet('no statistics push for refused votes');
          });
        });
      });
    });
  }
});
