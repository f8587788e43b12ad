// Every published table × INSERT/UPDATE/DELETE reaches a `*` subscriber with the row as the
// database has it; filtered subscribers get only matching rows (docs/app.md, "Any change
// reaches the clients").

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
  insertHold,
  TEST_TIMEOUT_MS,
} from './helpers.mjs';

const ctx = useRelay();

// Per table: create a row (its prerequisites live in other, unsubscribed tables) and an UPDATE.
const TABLES = {
  profiles: {
    insert: (db) => insertProfile(db),
    update: "update public.profiles set display_name = 'Changed name' where id = $1",
  },
  polls: {
    insert: (db) => insertPoll(db, { status: 'draft' }),
    update: "update public.polls set status = 'active', options = '[\"a\",\"b\"]'::jsonb where id = $1",
  },
  user_votes: {
    insert: async (db) => {
      const userId = await insertProfile(db);
      const pollId = await insertPoll(db);
      return insertVote(db, { pollId, userId, optionIndex: 0 });
    },
    update: 'update public.user_votes set option_index = 2, hold_ms = 4100 where id = $1',
  },
  button_holds: {
    insert: async (db) => insertHold(db, { userId: await insertProfile(db), pollId: await insertPoll(db) }),
    update: 'update public.button_holds set ended_at = now(), is_active = false where id = $1',
  },
};

function starOn(client, name, table, rec, filter) {
  return client.channel(name).on(
    'postgres_changes',
    { event: '*', schema: 'public', table, ...(filter ? { filter } : {}) },
    rec.cb,
  );
}

describe('all tables × insert/update/delete reach a * subscriber', () => {
  for (const vsn of VSNS) {
    describe(vsnLabel(vsn), () => {
      for (const [table, ops] of Object.entries(TABLES)) {
        test(`${table}: INSERT, UPDATE, DELETE`, { timeout: TEST_TIMEOUT_MS }, async () => {
          const { db } = ctx.relay;
          await withClient(ctx.relay, vsn, async (client) => {
            const rec = recorder(`${table} *`);
            await subscribed(starOn(client, `all-${table}`, table, rec));

            const id = await ops.insert(db);
            const inserted = await readRow(db, table, id);
            assertChange(await rec.next(`INSERT ${table}`), { eventType: 'INSERT', table, newRow: inserted });

            const { before, after } = await changeRow(db, table, id, ops.update);
            assertChange(await rec.next(`UPDATE ${table}`), {
              eventType: 'UPDATE',
              table,
              newRow: after,
              oldRow: before,
            });

            await db.query(`delete from public.${table} where id = $1`, [id]);
            assertChange(await rec.next(`DELETE ${table}`), { eventType: 'DELETE', table, oldRow: after });

            await rec.quiet(`nothing else (writes to other tables do not reach the ${table} binding)`);
          });
        });
      }
    });
  }
});

describe('filters', () => {
  for (const vsn of VSNS) {
    describe(vsnLabel(vsn), () => {
      test('a subscriber whose filter does not match receives nothing', { timeout: TEST_TIMEOUT_MS }, async () => {
        const { db } = ctx.relay;
        await withClient(ctx.relay, vsn, async (client) => {
          const userId = await insertProfile(db);
          const pollA = await insertPoll(db, { createdBy: userId });
          const pollB = await insertPoll(db, { createdBy: userId });

          const filtered = recorder(`user_votes * poll_id=eq.${pollB}`);
          const control = recorder('user_votes * (no filter)');
          await subscribed(starOn(client, 'votes-of-b', 'user_votes', filtered, `poll_id=eq.${pollB}`));
          await subscribed(starOn(client, 'all-votes', 'user_votes', control));

          // Votes on poll A: insert, update, delete — the control sees all three.
          const voteId = await insertVote(db, { pollId: pollA, userId });
          const inserted = await readRow(db, 'user_votes', voteId);
          assertChange(await control.next('INSERT'), { eventType: 'INSERT', table: 'user_votes', newRow: inserted });
          const upd = await changeRow(db, 'user_votes', voteId, 'update public.user_votes set option_index = 1 where id = $1');
          assertChange(await control.next('UPDATE'), {
            eventType: 'UPDATE',
            table: 'user_votes',
            newRow: upd.after,
            oldRow: upd.before,
          });
          await db.query('delete from public.user_votes where id = $1', [voteId]);
          assertChange(await control.next('DELETE'), { eventType: 'DELETE', table: 'user_votes', oldRow: upd.after });

          await filtered.quiet('nothing for votes on another poll');

          // A vote on poll B does reach it (the filter itself works).
          const voteB = await insertVote(db, { pollId: pollB, userId });
          const rowB = await readRow(db, 'user_votes', voteB);
          assertChange(await filtered.next('INSERT on poll B'), { eventType: 'INSERT', table: 'user_votes', newRow: rowB });
          assertChange(await control.next('INSERT on poll B'), { eventType: 'INSERT', table: 'user_votes', newRow: rowB });
          await Promise.all([filtered.quiet(), control.quiet()]);
        });
      });

      test("polls-filtered (seed: * on polls, filter 'status=eq.active') gets only active polls", { timeout: TEST_TIMEOUT_MS }, async () => {
        const { db } = ctx.relay;
        await withClient(ctx.relay, vsn, async (client) => {
          const rec = recorder('polls * status=eq.active');
          // As the seed's efficientPollSubscription writes it.
          const channel = client
            .channel('polls-filtered')
            .on(
              'postgres_changes',
              {
                event: '*',
                schema: 'public',
                table: 'polls',
                filter: 'status=eq.active', // Server-side filtering
              },
              rec.cb,
            );
          await subscribed(channel);

          // A draft poll: insert, edit, delete — nothing.
          const draftId = await insertPoll(db, { status: 'draft' });
          await db.query("update public.polls set question = 'Still a draft?' where id = $1", [draftId]);
          await db.query('delete from public.polls where id = $1', [draftId]);
          await rec.quiet('nothing for a draft poll');

          // An active poll: insert, update, delete — all three (deletes are filtered on the old row).
          const activeId = await insertPoll(db, { status: 'active' });
          const inserted = await readRow(db, 'polls', activeId);
          const ins = await rec.next('INSERT active poll');
          assertChange(ins, { eventType: 'INSERT', table: 'polls', newRow: inserted });
          assert.equal(ins.new.status, 'active');
          const upd = await changeRow(db, 'polls', activeId, 'update public.polls set boost_count = boost_count + 3 where id = $1');
          assertChange(await rec.next('UPDATE active poll'), {
            eventType: 'UPDATE',
            table: 'polls',
            newRow: upd.after,
            oldRow: upd.before,
          });
          await db.query('delete from public.polls where id = $1', [activeId]);
          assertChange(await rec.next('DELETE active poll'), { eventType: 'DELETE', table: 'polls', oldRow: upd.after });
          await rec.quiet();
        });
      });
    });
  }
});
