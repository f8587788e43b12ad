// The demo page (/demo) in headless Chromium, two pages = two users, against the real relay:
// hold-to-vote, the big hold button, and the fallback to HTTP polling when the socket fails.

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';

import {
  useRelayAndBrowser,
  withContext,
  shows,
  until,
  sleep,
  screenshot,
  insertPoll,
  insertProfile,
  insertVote,
  TEST_TIMEOUT_MS,
} from './helpers.mjs';

const ctx = useRelayAndBrowser();

/** Fallback polling interval the pages run with (?poll_ms=). */
const POLL_MS = 500;

/** Opens /demo in a new page of `context`; resolves once it is live and has a guest user. */
async function openDemo(context, { beforeGoto } = {}) {
  const page = await context.newPage();
  await beforeGoto?.(page);
  await page.goto(`${ctx.relay.url}/demo?poll_ms=${POLL_MS}`);
  await shows(page.getByTestId('mode'), 'Live', 'the mode indicator');
  await shows(page.getByTestId('user'), /^You are guest-[0-9a-f]{8}$/, 'the user line');
  const user = await page.evaluate(() => JSON.parse(sessionStorage.getItem('pgrelay-demo-user')));
  assert.match(user.id, /^[0-9a-f-]{36}$/);
  return { page, user };
}

/** Moves the mouse onto the element and presses the button (released with page.mouse.up()). */
async function press(page, testId) {
  await page.getByTestId(testId).hover();
  await page.mouse.down();
}

async function counts(page, pollId, n) {
  const out = [];
  for (let i = 0; i < n; i++) out.push((await page.getByTestId(`count-${pollId}-${i}`).textContent()).trim());
  return out;
}

async function votesOn(db, pollId) {
  const { rows } = await db.query(
    'select user_id::text, option_index, hold_ms from public.user_votes where poll_id = $1 order by id',
    [pollId],
  );
  return rows;
}

describe('/demo', () => {
  test('a vote held for 3 s in one page shows in the other; early release, 409 and 422 cast nothing', { timeout: TEST_TIMEOUT_MS }, async () => {
    const { db } = ctx.relay;
    const pollId = await insertPoll(db, { question: 'Best colour?', options: ['red', 'green', 'blue'] });
    await withContext(ctx.browser, async (context) => {
      const a = await openDemo(context);
      const b = await openDemo(context);
      assert.notEqual(a.user.id, b.user.id, 'two pages are two users');
      for (const p of [a, b]) {
        await shows(p.page.getByTestId(`question-${pollId}`), 'Best colour?', 'the question');
        await shows(p.page.getByTestId(`total-${pollId}`), '0', 'the total');
        assert.deepEqual(await counts(p.page, pollId, 3), ['0', '0', '0']);
      }
      const statusA = a.page.getByTestId(`status-${pollId}`);
      const statusB = b.page.getByTestId(`status-${pollId}`);

      // Page a holds "green": the vote is cast at 3 s, while the button is still down.
      const pressedAt = Date.now();
      await press(a.page, `vote-${pollId}-1`);
      await shows(statusA, 'Keep holding “green”…', 'page a status while holding');
      await shows(statusA, 'Vote counted for “green”.', 'page a status after 3 s');
      const heldMs = Date.now() - pressedAt;
      await a.page.mouse.up();
      assert.ok(heldMs >= 3000, `the vote was cast after ${heldMs} ms of holding`);
      // Page b (another user) sees it live.
      await shows(b.page.getByTestId(`count-${pollId}-1`), '1', 'page b: votes for green');
      await shows(b.page.getByTestId(`total-${pollId}`), '1', 'page b: total');
      await shows(b.page.getByTestId('stat-votes'), '1', 'page b: statistics votes');
      assert.deepEqual(await counts(b.page, pollId, 3), ['0', '1', '0']);
      const [vote] = await votesOn(db, pollId);
      assert.equal(vote.user_id, a.user.id);
      assert.equal(vote.option_index, 1);
      assert.ok(vote.hold_ms >= 3000 && vote.hold_ms < 6000, `hold_ms ${vote.hold_ms}`);
      await screenshot(a.page, 'demo-vote-page1');
      await screenshot(b.page, 'demo-vote-page2');

      // Page b holds "red" for 1 s and lets go: cancelled, nothing cast, its hold ended.
      await press(b.page, `vote-${pollId}-0`);
      await shows(statusB, 'Keep holding “red”…', 'page b status while holding');
      await sleep(1000);
      await b.page.mouse.up();
      await shows(statusB, 'Cancelled: hold for 3 seconds to vote.', 'page b status after an early release');
      await sleep(3000); // longer than a vote would have needed
      assert.deepEqual(await counts(a.page, pollId, 3), ['0', '1', '0']);
      assert.equal((await votesOn(db, pollId)).length, 1);
      const { rows: holdsB } = await db.query(
        `select is_active, extract(epoch from ended_at - started_at) * 1000 as ms
           from public.button_holds where user_id = $1 and poll_id = $2`,
        [b.user.id, pollId],
      );
      assert.equal(holdsB.length, 1);
      assert.equal(holdsB[0].is_active, false);
      assert.ok(holdsB[0].ms > 500 && holdsB[0].ms < 3000, `page b's hold lasted ${holdsB[0].ms} ms`);
      await screenshot(b.page, 'demo-vote-cancelled');

      // Page a holds again: the server refuses a second vote (409) and the page shows its text.
      await press(a.page, `vote-${pollId}-2`);
      await shows(statusA, `user ${a.user.id} already voted on poll ${pollId}`, 'page a status after a second vote');
      await a.page.mouse.up();

      // 422: with a 5 s threshold (a DBA's setting), page b's 3 s hold is too short.
      await db.query("update public.app_settings set value = '5000' where name = 'vote_hold_min_ms'");
      try {
        await press(b.page, `vote-${pollId}-2`);
        const refusal = await shows(
          statusB,
          new RegExp(`^hold of \\d+ ms on poll ${pollId} is shorter than the required 5000 ms$`),
          'page b status after a hold shorter than the threshold',
        );
        const held = Number(refusal.match(/\d+/)[0]);
        assert.ok(held >= 3000 && held < 5000, `the server measured ${held} ms`);
        await b.page.mouse.up();
      } finally {
        await db.query("update public.app_settings set value = '3000' where name = 'vote_hold_min_ms'");
      }
      await screenshot(b.page, 'demo-vote-refused');
      assert.equal((await votesOn(db, pollId)).length, 1);
      assert.deepEqual(await counts(b.page, pollId, 3), ['0', '1', '0']);
      await shows(b.page.getByTestId('stat-votes'), '1', 'page b: statistics votes');
    });
  });

  test('holding the big button in one page shows 1 holder in the other, then 0', { timeout: TEST_TIMEOUT_MS }, async () => {
    const { db } = ctx.relay;
    await withContext(ctx.browser, async (context) => {
      const a = await openDemo(context);
      const b = await openDemo(context);
      await shows(b.page.getByTestId('holder-count'), '0', 'page b holder count before');

      await press(a.page, 'big-button');
      await shows(a.page.getByTestId('button-status'), 'Holding…', 'page a button status');
      await shows(b.page.getByTestId('holder-count'), '1', 'page b holder count while page a holds');
      await shows(b.page.getByTestId('stat-holders'), '1', 'page b: holding now');
      await shows(a.page.getByTestId('button-elapsed'), /^\d+\.\d s$/, 'the time held');
      assert.equal(await a.page.getByTestId('big-button').getAttribute('aria-pressed'), 'true');
      const { rows: active } = await db.query(
        'select user_id::text, poll_id from public.button_holds where is_active',
      );
      assert.deepEqual(active, [{ user_id: a.user.id, poll_id: null }]);
      await screenshot(a.page, 'demo-button-held-page1');
      await screenshot(b.page, 'demo-button-held-page2');

      await a.page.mouse.up();
      await shows(a.page.getByTestId('button-status'), 'Released.', 'page a button status');
      await shows(b.page.getByTestId('holder-count'), '0', 'page b holder count after the release');
      await shows(a.page.getByTestId('holder-count'), '0', 'page a holder count after the release');
      const { rows: ended } = await db.query(
        'select is_active, ended_at is not null as ended from public.button_holds where user_id = $1',
        [a.user.id],
      );
      assert.deepEqual(ended, [{ is_active: false, ended: true }]);
      await screenshot(b.page, 'demo-button-released-page2');
    });
  });

  test('with its socket refused the page polls the API and stays fresh, then goes live again', { timeout: TEST_TIMEOUT_MS }, async () => {
    const { db } = ctx.relay;
    const pollId = await insertPoll(db, { question: 'Tea or coffee?', options: ['tea', 'coffee'] });
    const voter = await insertProfile(db);
    await withContext(ctx.browser, async (context) => {
      // Every WebSocket of the page goes through this route: passed to the relay until
      // `blocked`, then refused (closed before it reaches the relay).
      let blocked = false;
      let refused = 0;
      const passed = [];
      const { page } = await openDemo(context, {
        beforeGoto: (p) =>
          p.routeWebSocket(/\/realtime\/v1\/websocket/, (ws) => {
            if (blocked) {
              refused += 1;
              ws.close({ code: 1011, reason: 'refused by the test' });
              return;
            }
            passed.push({ ws, server: ws.connectToServer() });
          }),
      });
      assert.equal(passed.length, 1, 'one socket');
      const mode = page.getByTestId('mode');
      const { rows: [before] } = await db.query('select * from public.app_stats');
      await shows(page.getByTestId('stat-votes'), String(before.votes), 'votes before');

      // Kill the socket (both ends) and refuse every reconnect.
      blocked = true;
      for (const { ws, server } of passed) {
        server.close({ code: 1001, reason: 'killed by the test' });
        ws.close({ code: 1011, reason: 'killed by the test' });
      }
      await shows(mode, `Fallback: polling every ${POLL_MS / 1000} s`, 'the mode indicator');
      assert.equal(await mode.getAttribute('data-mode'), 'fallback');

      // Changes now reach the page only through polling.
      await insertVote(db, { pollId, userId: voter, optionIndex: 1 });
      await shows(page.getByTestId(`count-${pollId}-1`), '1', 'votes for coffee (polled)');
      await shows(page.getByTestId(`total-${pollId}`), '1', 'total (polled)');
      await shows(page.getByTestId('stat-votes'), String(Number(before.votes) + 1), 'statistics votes (polled)');
      assert.deepEqual(await counts(page, pollId, 2), ['0', '1']);
      const { rows: [hold] } = await db.query(
        'insert into public.button_holds (user_id) values ($1) returning id',
        [voter],
      );
      await shows(page.getByTestId('holder-count'), '1', 'holder count (polled)');
      await shows(page.getByTestId('freshness'), /^polled at /, 'the freshness line');
      await until(() => refused >= 1, 15_000, 'a reconnect attempt (refused)');
      assert.equal(await mode.getAttribute('data-mode'), 'fallback');
      assert.equal(passed.length, 1, 'no socket reached the relay while blocked');
      // Holding needs the socket: the page says so instead of pretending.
      await press(page, 'big-button');
      await shows(
        page.getByTestId('button-status'),
        'Holding needs the live connection, which is down: try again once it is back.',
        'the button status in fallback mode',
      );
      await page.mouse.up();
      await screenshot(page, 'demo-fallback');

      // The socket is allowed again: the client reconnects on its own and the page goes live.
      blocked = false;
      await shows(mode, 'Live', 'the mode indicator after the socket is back', 30_000);
      assert.ok(passed.length >= 2, 'a new socket reached the relay');
      await db.query('update public.button_holds set is_active = false, ended_at = now() where id = $1', [hold.id]);
      await shows(page.getByTestId('holder-count'), '0', 'holder count (live)');
      await insertVote(db, { pollId, userId: await insertProfile(db), optionIndex: 0 });
      await shows(page.getByTestId(`count-${pollId}-0`), '1', 'votes for tea (live)');
      await shows(page.getByTestId('freshness'), /^live since /, 'the freshness line');
      await screenshot(page, 'demo-live-again');
    });
  });

  test('the page loads nothing from other hosts', { timeout: TEST_TIMEOUT_MS }, async () => {
    await withContext(ctx.browser, async (context) => {
      const requests = [];
      context.on('request', (r) => requests.push(r.url()));
      const { page } = await openDemo(context);
      const origin = new URL(ctx.relay.url).origin;
      const foreign = requests.filter((u) => new URL(u).origin !== origin && !u.startsWith('ws://127.0.0.1'));
      assert.deepEqual(foreign, []);
      assert.ok(requests.includes(`${origin}/vendor/supabase.js`), 'the vendored supabase-js');
      assert.equal(await page.evaluate(() => typeof window.supabase.createClient), 'function');
    });
  });
});
