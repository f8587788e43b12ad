// docs/app.md client pattern 1: channel('button-sessions') with `*` on button_holds (seed:
// useSessionManager). Press = insert, release = ended_at/is_active update, cleanup = delete;
// heartbeats (only last_heartbeat changes) must not reach the client.

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
  insertHold,
  TEST_TIMEOUT_MS,
} from './helpers.mjs';
import { buttonSessions } from './channels.mjs';

const ctx = useRelay();

describe('pattern 1: button-sessions (* on button_holds)', () => {
  for (const vsn of VSNS) {
    describe(vsnLabel(vsn), () => {
      test('press (insert), release (ended_at/is_active) and delete reach the callback', { timeout: TEST_TIMEOUT_MS }, async () => {
        const { db } = ctx.relay;
        await withClient(ctx.relay, vsn, async (client) => {
          const rec = recorder('button-sessions');
          await subscribed(buttonSessions(client, rec));

          const userId = await insertProfile(db);
          const holdId = await insertHold(db, { userId });
          const inserted = await readRow(db, 'button_holds', holdId);
          assertChange(await rec.next('INSERT button_holds'), {
            eventType: 'INSERT',
            table: 'button_holds',
            newRow: inserted,
          });
          assert.equal(inserted.is_active, true);

          const release = await changeRow(
            db,
            'button_holds',
            holdId,
            'update public.button_holds set ended_at = now(), is_active = false where id = $1',
          );
          const upd = await rec.next('UPDATE button_holds (release)');
          assertChange(upd, {
            eventType: 'UPDATE',
            table: 'button_holds',
            newRow: release.after,
            oldRow: release.before,
          });
          assert.equal(upd.new.is_active, false);
          assert.equal(typeof upd.new.ended_at, 'string');
          assert.equal(upd.old.ended_at, null);

          const beforeDelete = await readRow(db, 'button_holds', holdId);
          await db.query('delete from public.button_holds where id = $1', [holdId]);
          assertChange(await rec.next('DELETE button_holds'), {
            eventType: 'DELETE',
            table: 'button_holds',
            oldRow: beforeDelete,
          });

          await rec.quiet('nothing after the delete');
        });
      });

      test('a heartbeat-only update (last_heartbeat = now()) delivers nothing', { timeout: TEST_TIMEOUT_MS }, async () => {
        const { db } = ctx.relay;
        await withClient(ctx.relay, vsn, async (client) => {
          const rec = recorder('button-sessions');
          await subscribed(buttonSessions(client, rec));

          const holdId = await insertHold(db);
          assertChange(await rec.next('INSERT button_holds'), {
            eventType: 'INSERT',
            table: 'button_holds',
            newRow: await readRow(db, 'button_holds', holdId),
          });

          // Two heartbeats, as the seed's useHeartbeat does every 3 s.
          for (let i = 0; i < 2; i++) {
            const hb = await changeRow(
              db,
              'button_holds',
              holdId,
              'update public.button_holds set last_heartbeat = now() where id = $1',
            );
            assert.notEqual(hb.after.last_heartbeat, hb.before.last_heartbeat, 'heartbeat moved');
          }
          await rec.quiet('no event for heartbeat-only updates');

          // The channel is still live: the next real change arrives, and it is the first event.
          const end = await changeRow(
            db,
            'button_holds',
            holdId,
            'update public.button_holds set ended_at = now(), is_active = false where id = $1',
          );
          assertChange(await rec.next('UPDATE button_holds after heartbeats'), {
            eventType: 'UPDATE',
            table: 'button_holds',
            newRow: end.after,
            oldRow: end.before,
          });
          await rec.quiet();
        });
      });
    });
  }
});
