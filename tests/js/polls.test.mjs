// docs/app.md client patterns 3, 4 and 5, channel names and bindings exactly as the app writes
// them:
//   3. channel('polls-changes'): `*` on polls and `*` on user_votes (seed: usePolls)
//   4. channel('statistics-updates'): INSERT on user_votes, polls, profiles (seed: useStatistics)
//   5. channel('app-updates'): INSERT on user_votes + UPDATE on polls with
//      filter 'status=eq.active' (seed: createEfficientSubscription)

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
  changeRow,
  assertChange,
  insertProfile,
  insertPoll,
  insertVote,
  TEST_TIMEOUT_MS,
} from './helpers.mjs';
import { pollsChanges, statisticsUpdates, appUpdates } from './channels.mjs';

const ctx = useRelay();

describe('pattern 3: polls-changes (* on polls, * on user_votes)', () => {
  for (const vsn of VSNS) {
    describe(vsnLabel(vsn), () => {
      test('each binding gets exactly its own table\'s inserts, updates and deletes', { timeout: TEST_TIMEOUT_MS }, async () => {
        const { db } = ctx.relay;
        await withClient(ctx.relay, vsn, async (client) => {
          const polls = recorder('polls');
          const votes = recorder('user_votes');
          await subscribed(pollsChanges(client, polls, votes));

          // profiles has no binding on this channel.
          const userId = await insertProfile(db);

          const pollId = await insertPoll(db, { status: 'active', createdBy: userId });
          assertChange(await polls.next('INSERT polls'), {
            eventType: 'INSERT',
            table: 'polls',
            newRow: await readRow(db, 'polls', pollId),
          });

          const voteId = await insertVote(db, { pollId, userId, optionIndex: 1 });
          assertChange(await votes.next('INSERT user_votes'), {
            eventType: 'INSERT',
            table: 'user_votes',
            newRow: await readRow(db, 'user_votes', voteId),
          });

          const boost = await changeRow(
            db,
            'polls',
            pollId,
            'update public.polls set boost_count = boost_count + 1 where id = $1',
          );
          assertChange(await polls.next('UPDATE polls'), {
            eventType: 'UPDATE',
            table: 'polls',
            newRow: boost.after,
            oldRow: boost.before,
          });

          const revote = await changeRow(
            db,
            'user_votes',
            voteId,
            'update public.user_votes set option_index = 2 where id = $1',
          );
          assertChange(await votes.next('UPDATE user_votes'), {
            eventType: 'UPDATE',
            table: 'user_votes',
            newRow: revote.after,
            oldRow: revote.before,
          });

          await db.query('delete from public.user_votes where id = $1', [voteId]);
          assertChange(await votes.next('DELETE user_votes'), {
            eventType: 'DELETE',
            table: 'user_votes',
            oldRow: revote.after,
          });

          const lastPoll = await readRow(db, 'polls', pollId);
          await db.query('delete from public.polls where id = $1', [pollId]);
          assertChange(await polls.next('DELETE polls'), {
            eventType: 'DELETE',
            table: 'polls',
            oldRow: lastPoll,
          });

          await polls.quiet('no other event at the polls binding');
          await votes.quiet('no other event at the user_votes binding');
          assert.ok(polls.events.every((e) => e.table === 'polls'));
          assert.ok(votes.events.every((e) => e.table === 'user_votes'));
        });
      });
    });
  }
});

describe('pattern 4: statistics-updates (INSERT on user_votes, polls, profiles)', () => {
  for (const vsn of VSNS) {
    describe(vsnLabel(vsn), () => {
      test('inserts reach the right callback; updates and deletes reach none', { timeout: TEST_TIMEOUT_MS }, async () => {
        const { db } = ctx.relay;
        await withClient(ctx.relay, vsn, async (client) => {
          const votes = recorder('user_votes');
          const polls = recorder('polls');
          const profiles = recorder('profiles');
          await subscribed(statisticsUpdates(client, votes, polls, profiles));

          const userId = await insertProfile(db);
          assertChange(await profiles.next('INSERT profiles'), {
            eventType: 'INSERT',
            table: 'profiles',
            newRow: await readRow(db, 'profiles', userId),
          });

          const pollId = await insertPoll(db, { createdBy: userId });
          assertChange(await polls.next('INSERT polls'), {
            eventType: 'INSERT',
            table: 'polls',
            newRow: await readRow(db, 'polls', pollId),
          });

          const voteId = await insertVote(db, { pollId, userId });
          assertChange(await votes.next('INSERT user_votes'), {
            eventType: 'INSERT',
            table: 'user_votes',
            newRow: await readRow(db, 'user_votes', voteId),
          });

          await Promise.all([votes.quiet(), polls.quiet(), profiles.quiet()]);

          // UPDATE and DELETE on the same tables: no binding matches.
          await db.query('update public.profiles set display_name = $2 where id = $1', [userId, 'Renamed']);
          await db.query('update public.polls set boost_count = boost_count + 5 where id = $1', [pollId]);
          await db.query('update public.user_votes set option_index = 2 where id = $1', [voteId]);
          await db.query('delete from public.user_votes where id = $1', [voteId]);
          await db.query('delete from public.polls where id = $1', [pollId]);
          await db.query('delete from public.profiles where id = $1', [userId]);

          await Promise.all([
            votes.quiet('no UPDATE/DELETE of user_votes'),
            polls.quiet('no UPDATE/DELETE of polls'),
            profiles.quiet('no UPDATE/DELETE of profiles'),
          ]);

          // Still live afterwards: one more insert per table, each at its own callback only.
          const user2 = await insertProfile(db);
          const poll2 = await insertPoll(db, { createdBy: user2 });
          const vote2 = await insertVote(db, { pollId: poll2, userId: user2 });
          assertChange(await profiles.next('second INSERT profiles'), {
            eventType: 'INSERT',
            table: 'profiles',
            newRow: await readRow(db, 'profiles', user2),
          });
          assertChange(await polls.next('second INSERT polls'), {
            eventType: 'INSERT',
            table: 'polls',
            newRow: await readRow(db, 'polls', poll2),
          });
          assertChange(await votes.next('second INSERT user_votes'), {
            eventType: 'INSERT',
            table: 'user_votes',
            newRow: await readRow(db, 'user_votes', vote2),
          });
          await Promise.all([votes.quiet(), polls.quiet(), profiles.quiet()]);
        });
      });
    });
  }
});

describe("pattern 5: app-updates (INSERT user_votes + UPDATE polls filter 'status=eq.active')", () => {
  for (const vsn of VSNS) {
    describe(vsnLabel(vsn), () => {
      test('an UPDATE of an active poll arrives, of a draft poll does not', { timeout: TEST_TIMEOUT_MS }, async () => {
        const { db } = ctx.relay;
        await withClient(ctx.relay, vsn, async (client) => {
          const votes = recorder('user_votes INSERT');
          const polls = recorder('polls UPDATE status=eq.active');
          await subscribed(appUpdates(client, votes, polls));

          const userId = await insertProfile(db);
          // INSERTs of polls (active or draft) match no binding.
          const activeId = await insertPoll(db, { status: 'active', createdBy: userId });
          const draftId = await insertPoll(db, { status: 'draft', createdBy: userId });
          await polls.quiet('no event for poll INSERTs');

          const draftEdit = await changeRow(
            db,
            'polls',
            draftId,
            "update public.polls set question = 'Edited draft?' where id = $1",
          );
          assert.equal(draftEdit.after.status, 'draft');
          await polls.quiet('no event for an UPDATE of a draft poll');

          const boost = await changeRow(
            db,
            'polls',
            activeId,
            'update public.polls set boost_count = boost_count + 1 where id = $1',
          );
          assertChange(await polls.next('UPDATE of the active poll'), {
            eventType: 'UPDATE',
            table: 'polls',
            newRow: boost.after,
            oldRow: boost.before,
          });

          const voteId = await insertVote(db, { pollId: activeId, userId });
          assertChange(await votes.next('INSERT user_votes'), {
            eventType: 'INSERT',
            table: 'user_votes',
            newRow: await readRow(db, 'user_votes', voteId),
          });
          // UPDATE/DELETE of votes: the user_votes binding is INSERT only.
          await db.query('update public.user_votes set option_index = 1 where id = $1', [voteId]);
          await db.query('delete from public.user_votes where id = $1', [voteId]);
          await votes.quiet('no UPDATE/DELETE of user_votes');
          await polls.quiet('nothing at the polls binding for vote changes');
        });
      });

      test('a poll leaving or entering status active arrives (old or new row matches)', { timeout: TEST_TIMEOUT_MS }, async () => {
        const { db } = ctx.relay;
        await withClient(ctx.relay, vsn, async (client) => {
          const votes = recorder('user_votes INSERT');
          const polls = recorder('polls UPDATE status=eq.active');
          await subscribed(appUpdates(client, votes, polls));

          const activeId = await insertPoll(db, { status: 'active' });
          const draftId = await insertPoll(db, { status: 'draft' });

          // active -> closed: the old row matches (pgrelay's documented behaviour).
          const close = await changeRow(
            db,
            'polls',
            activeId,
            "update public.polls set status = 'closed' where id = $1",
          );
          const closed = await polls.next('UPDATE active -> closed');
          assertChange(closed, {
            eventType: 'UPDATE',
            table: 'polls',
            newRow: close.after,
            oldRow: close.before,
          });
          assert.equal(closed.old.status, 'active');
          assert.equal(closed.new.status, 'closed');

          // A closed poll updated again matches neither image.
          await db.query('update public.polls set boost_count = boost_count + 1 where id = $1', [activeId]);
          await polls.quiet('no event for an UPDATE of a closed poll');

          // draft -> active: the new row matches.
          const open = await changeRow(
            db,
            'polls',
            draftId,
            "update public.polls set status = 'active' where id = $1",
          );
          const opened = await polls.next('UPDATE draft -> active');
          assertChange(opened, {
            eventType: 'UPDATE',
            table: 'polls',
            newRow: open.after,
            oldRow: open.before,
          });
          assert.equal(opened.new.status, 'active');

          // DELETE of an active poll: the polls binding is UPDATE only.
          await db.query('delete from public.polls where id = $1', [draftId]);
          await polls.quiet('no event for DELETE of an active poll');
          await votes.quiet();
        });
      });
    });
  }
});
