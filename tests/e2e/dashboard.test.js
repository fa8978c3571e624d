// The dashboard against the real gateway in headless Chromium: live prices on cards and
// chart, colour classes that follow price moves, news, and a gateway restart.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { Gateway, barHistory, freePort, launchBrowser, news, screenshot, trade, waitFor } from './support.js';

const browser = await launchBrowser();
after(() => browser.close());

async function gatewayFor(env) {
  const port = await freePort();
  const origin = `http://127.0.0.1:${port}`;
  // The dashboard's own origin is listed as in a real deployment (the WebSocket upgrade checks
  // Origin against the same list).
  return Gateway.start({ port, env: { TICKGATE__SERVER__ALLOWED_ORIGINS: origin, ...env } });
}

test('prices from the simulator update the ticker cards and the chart', async () => {
  const gateway = await gatewayFor({ TICKGATE__SIMULATOR__ENABLED: 'true', TICKGATE__SIMULATOR__TRADES_PER_SECOND: '25' });
  try {
    // History for the chart's first paint. Cosmetic: if the simulator already wrote a bar for
    // a later minute the hub refuses older ones, which is fine here.
    await gateway.publish(barHistory('AAPL', 226)).catch(() => {});
    const page = await browser.newPage();
    await page.goto(`${gateway.url}/`);
    const card = page.locator('.ticker[data-symbol="AAPL"]');
    const price = card.locator('.price');
    await waitFor(async () => (await price.textContent()) !== '—', { what: 'a first AAPL price' });
    const first = await price.textContent();
    await waitFor(async () => (await price.textContent()) !== first, { what: 'the AAPL price to change' });
    assert.equal(await page.locator('#conn-text').textContent(), 'live');

    const chart = page.locator('.chart[data-symbol="AAPL"]');
    await waitFor(async () => Number(await chart.getAttribute('data-points')) >= 1, { what: 'a candle on the chart' });
    const close = await chart.getAttribute('data-last-close');
    await waitFor(async () => (await chart.getAttribute('data-last-close')) !== close, { what: 'the chart to move' });
    assert.ok(await chart.locator('canvas').count() > 0, 'the chart draws on a canvas');

    // Every card gets a price and some of them a direction colour.
    await waitFor(async () => (await page.locator('.ticker .price', { hasText: /\d/ }).count()) === 8, { what: 'all eight cards priced' });
    await waitFor(async () => (await page.locator('.ticker.up, .ticker.down').count()) > 0, { what: 'coloured cards' });

    await gateway.publish([news('Chipmaker beats estimates on data-centre demand', ['NVDA']), news('Index rebalance announced for Friday', ['SPY'])]);
    await gateway.publish({ T: 'alert', id: 1, level: 'warning', msg: 'Simulated market: prices are synthetic', t: new Date().toISOString() });
    await page.locator('#news li', { hasText: 'Chipmaker beats' }).waitFor();
    await page.locator('.alert', { hasText: 'Simulated market' }).waitFor();
    await page.waitForTimeout(1500);
    await screenshot(page, 'dashboard.png', { fullPage: true });
    assert.deepEqual(page.consoleMessages.filter((m) => m.startsWith('pageerror')), []);
  } finally {
    await gateway.stop();
  }
});

test('card colours follow each move against the previous price and the first price has none', async () => {
  const gateway = await gatewayFor({ TICKGATE__SIMULATOR__ENABLED: 'false' });
  try {
    const page = await browser.newPage();
    await page.goto(`${gateway.url}/`);
    await page.locator('#conn-text', { hasText: 'live' }).waitFor();
    const card = page.locator('.ticker[data-symbol="MSFT"]');
    const expect = async (text, direction) => {
      await waitFor(async () => (await card.locator('.price').textContent()) === text, { what: `MSFT at ${text}` });
      const classes = (await card.getAttribute('class')).split(/\s+/);
      assert.equal(classes.includes('up'), direction === 'up', `up class at ${text}: ${classes}`);
      assert.equal(classes.includes('down'), direction === 'down', `down class at ${text}: ${classes}`);
    };
    assert.equal(await card.locator('.price').textContent(), '—');
    await gateway.publish(trade('MSFT', 100));
    await expect('100.00', null);
    await gateway.publish(trade('MSFT', 101.25));
    await expect('101.25', 'up');
    await gateway.publish(trade('MSFT', 99.5));
    await expect('99.50', 'down');
    await gateway.publish(trade('MSFT', 99.75));
    await expect('99.75', 'up');
    await gateway.publish(trade('MSFT', 99.75, 5));
    // Same price again: neither up nor down.
    await waitFor(async () => (await card.getAttribute('data-direction')) === 'flat', { what: 'a flat move' });
    await expect('99.75', null);
    // Other cards are untouched.
    assert.equal(await page.locator('.ticker[data-symbol="AAPL"] .price').textContent(), '—');

    // Upstream status events drive the connection indicator.
    const status = (sc) => ({ T: 's', S: '*', sc, sm: `test ${sc}`, t: new Date().toISOString() });
    await gateway.publish(status('upstream_down'));
    await page.locator('#conn-state[data-state="upstream-down"]', { hasText: 'upstream down' }).waitFor({ timeout: 15000 });
    await gateway.publish(status('upstream_ok'));
    await page.locator('#conn-state[data-state="live"]', { hasText: 'live' }).waitFor({ timeout: 15000 });
  } finally {
    await gateway.stop();
  }
});

test('news appears, and after a gateway restart the page shows reconnecting then resumes without losing news', async () => {
  const gateway = await gatewayFor({ TICKGATE__SIMULATOR__ENABLED: 'false' });
  try {
    const page = await browser.newPage();
    await page.goto(`${gateway.url}/`);
    await page.locator('#conn-text', { hasText: 'live' }).waitFor();
    await gateway.publish(news('Before the restart: Apple ships a new laptop', ['AAPL']));
    await page.locator('#news li', { hasText: 'Before the restart' }).waitFor({ timeout: 15000 });

    await gateway.stop();
    await page.locator('#conn-text', { hasText: 'reconnecting' }).waitFor({ timeout: 15000 });
    assert.equal(await page.locator('#conn-state').getAttribute('data-state'), 'reconnecting');

    await gateway.start();
    // Published as soon as the gateway is back, most likely before the page reconnects: it
    // must arrive anyway (by replay or by the fresh snapshot after a reset).
    await gateway.publish(news('After the restart: Microsoft raises guidance', ['MSFT']));
    await page.locator('#conn-text', { hasText: 'live' }).waitFor({ timeout: 30000 });
    await page.locator('#news li', { hasText: 'After the restart' }).waitFor({ timeout: 15000 });
    await gateway.publish(news('Live again: a third headline', ['AAPL']));
    await page.locator('#news li', { hasText: 'Live again' }).waitFor({ timeout: 15000 });
    assert.equal(await page.locator('#news li', { hasText: 'Before the restart' }).count(), 1, 'old news is kept, not duplicated');
    assert.equal(await page.locator('#news li', { hasText: 'After the restart' }).count(), 1);
  } finally {
    await gateway.stop();
  }
});

test('the dashboard is usable from the keyboard and switches between light and dark themes', async () => {
  const gateway = await gatewayFor({ TICKGATE__SIMULATOR__ENABLED: 'true', TICKGATE__SIMULATOR__TRADES_PER_SECOND: '5' });
  try {
    const page = await browser.newPage();
    await page.emulateMedia({ colorScheme: 'light' });
    await page.goto(`${gateway.url}/`);
    await page.locator('.ticker[data-symbol="AAPL"][aria-pressed="true"]').waitFor();

    // Tab through the page to the MSFT card and select it with Enter.
    let focused = '';
    for (let i = 0; i < 30 && focused !== 'MSFT'; i++) {
      await page.keyboard.press('Tab');
      focused = await page.evaluate(() => document.activeElement?.dataset?.symbol ?? '');
    }
    assert.equal(focused, 'MSFT', 'the MSFT card is reachable with Tab');
    await page.keyboard.press('Enter');
    await page.locator('.ticker[data-symbol="MSFT"][aria-pressed="true"]').waitFor();
    await page.locator('.chart[data-symbol="MSFT"]').waitFor();
    assert.equal(await page.locator('.chart[data-symbol="AAPL"]').count(), 0, 'plain select replaces the chart');
    await page.locator('.ticker[data-symbol="NVDA"]').click({ modifiers: ['Shift'] });
    await page.locator('.chart[data-symbol="NVDA"]').waitFor();
    assert.equal(await page.locator('.chart').count(), 2, 'shift-select adds a chart');

    const background = () => page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    const light = await background();
    const toggle = page.locator('#theme-toggle');
    assert.equal(await toggle.getAttribute('aria-pressed'), 'false');
    await toggle.focus();
    await page.keyboard.press('Enter');
    assert.equal(await page.evaluate(() => document.documentElement.dataset.theme), 'dark');
    assert.equal(await toggle.getAttribute('aria-pressed'), 'true');
    assert.notEqual(await background(), light);
    await page.waitForTimeout(1500);
    await screenshot(page, 'dashboard-dark.png');

    // The choice survives a reload; the system preference applies when nothing was chosen.
    await page.reload();
    assert.equal(await page.evaluate(() => document.documentElement.dataset.theme), 'dark');
    await page.evaluate(() => localStorage.removeItem('tickgate-theme'));
    await page.emulateMedia({ colorScheme: 'dark' });
    await page.reload();
    assert.equal(await page.locator('#theme-toggle').getAttribute('aria-pressed'), 'true');
  } finally {
    await gateway.stop();
  }
});
