// The inspector page (/) in headless Chromium: it connects, joins a channel with a binding, and
// shows live changes and the relay's figures. (Its HTML is checked without a browser in
// tests/it/inspector.rs.)

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { useRelayAndBrowser, withContext, shows, until, screenshot, TEST_TIMEOUT_MS } from './helpers.mjs';

const ctx = useRelayAndBrowser();

describe('inspector (/)', () => {
  test('connects, joins with a binding, shows live inserts and the relay figures', { timeout: TEST_TIMEOUT_MS }, async () => {
    const { db, url } = ctx.relay;
    await withContext(ctx.browser, async (context) => {
      const page = await context.newPage();
      await page.goto(`${url}/?autoconnect=1&channel=browser&event=INSERT&table=profiles`);
      await shows(page.locator('#status'), 'connected', 'the connection status');
      await shows(page.locator('#channels .pill').first(), 'joined', 'the channel state');
      await shows(
        page.locator('.entry.system').first(),
        /Subscribed to PostgreSQL/,
        'the system message of the join',
      );

      await db.query("insert into public.profiles (username) values ('chromium-1')");
      const insert = page.locator('.entry.INSERT').filter({ hasText: '"username": "chromium-1"' });
      await until(async () => (await insert.count()) === 1, 10_000, 'the INSERT of chromium-1 in the log');
      const text = await insert.textContent();
      assert.match(text, /realtime:browser/);
      assert.match(text, /public\.profiles/);

      await until(
        async () => (await page.locator('#figures-body tr[data-metric]').count()) > 5,
        10_000,
        'the relay figures',
      );
      await shows(
        page.locator('tr[data-metric=pgrelay_connections] .v'),
        '1',
        'the connections figure',
      );
      // How changes reach the relay: the default mode, with the doorbell on while writes are quiet.
      await shows(
        page.locator('tr[data-metric=pgrelay_ingest_mode] .v'),
        /^adaptive · (NOTIFY doorbell on|tailing the log)$/,
        'the ingest mode',
      );
      await shows(
        page.locator('tr[data-metric=pgrelay_notify_lock_waiters] .v'),
        /^\d+$/,
        'the NOTIFY-lock waiters',
      );
      await screenshot(page, 'inspector');
    });
  });
});
