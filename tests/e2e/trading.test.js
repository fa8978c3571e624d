// Trading from the dashboard against the real gateway: log in with the built-in issuer, see
// the Level 2 book update, get a validation error next to its field, place and cancel a limit
// order, and place a market order whose fill and position (with live P&L) show up.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Gateway, barHistory, freePort, launchBrowser, news, screenshot, waitFor } from './support.js';

let gateway;
let page;
const browser = await launchBrowser();

before(async () => {
  const port = await freePort();
  gateway = await Gateway.start({
    port,
    env: {
      TICKGATE__SERVER__ALLOWED_ORIGINS: `http://127.0.0.1:${port}`,
      TICKGATE__SIMULATOR__ENABLED: 'true',
      TICKGATE__SIMULATOR__TRADES_PER_SECOND: '10',
      // A fixed secret keeps the login token valid across the restart in the last test.
      TICKGATE__AUTH__HS256_SECRET: 'e2e-only-secret-0123456789abcdef0123456789',
    },
  });
  await gateway.publish(barHistory('AAPL', 227.5)).catch(() => {});
  page = await browser.newPage();
  await page.goto(`${gateway.url}/`);
  await page.locator('#conn-text', { hasText: 'live' }).waitFor();
});

after(async () => {
  await browser.close();
  await gateway?.stop();
});

const rows = (selector) => page.locator(`${selector} tbody tr`);


test('the demo user logs in and the session goes live over the WebSocket', async () => {
  await page.fill('#login-password', 'wrong-password');
  await page.click('#login-form button[type="submit"]');
  await waitFor(async () => (await page.locator('#login-error').textContent()).length > 0, { what: 'a login error' });
  assert.equal(await page.locator('#order-form').isHidden(), true);

  await page.fill('#login-user', 'demo');
  await page.fill('#login-password', 'demo-password');
  await page.press('#login-password', 'Enter');
  await page.locator('#ws-state[data-state="live"]').waitFor({ timeout: 30000 });
  assert.equal(await page.locator('#order-form').isVisible(), true);
  await waitFor(async () => (await page.locator('#account dd').count()) > 0, { what: 'the account summary' });
});

test('the Level 2 book for the selected symbol renders and updates', async () => {
  await waitFor(async () => (await page.locator('#book-bids tr').count()) > 0 && (await page.locator('#book-asks tr').count()) > 0, { what: 'book levels' });
  const bestBid = Number(await page.locator('#book-bids tr').first().locator('td').nth(1).textContent());
  const bestAsk = Number(await page.locator('#book-asks tr').first().locator('td').first().textContent());
  assert.ok(bestBid < bestAsk, `bid ${bestBid} below ask ${bestAsk}`);
  const seq = Number(await page.locator('#book').getAttribute('data-seq'));
  await waitFor(async () => Number(await page.locator('#book').getAttribute('data-seq')) > seq, { what: 'a book update' });
});

test('a server validation error is shown next to the field it is about', async () => {
  await page.selectOption('#order-type', 'limit');
  await page.fill('#order-limit', '');
  await page.fill('#order-qty', '5');
  await page.click('#order-submit');
  await waitFor(async () => (await page.locator('#err-limit_price').textContent()).length > 0, { what: 'an error next to the limit price' });
  assert.equal(await page.locator('#order-limit').getAttribute('aria-invalid'), 'true');
  assert.equal(await rows('#open-orders').count(), 0, 'a rejected order creates nothing');

  await page.fill('#order-limit', '');
  await page.fill('#order-qty', '-3');
  await page.selectOption('#order-type', 'market');
  await page.click('#order-submit');
  await waitFor(async () => (await page.locator('#err-qty').textContent()).length > 0, { what: 'an error next to the quantity' });
});

test('a limit order appears in open orders and can be canceled from there', async () => {
  const last = Number((await page.locator('.ticker[data-symbol="AAPL"] .price').textContent()).replace(/,/g, ''));
  const limit = (Math.floor(last * 0.9 * 100) / 100).toFixed(2);
  await page.selectOption('#order-type', 'limit');
  await page.fill('#order-qty', '3');
  await page.fill('#order-limit', limit);
  await page.selectOption('#order-tif', 'gtc');
  await page.click('#order-submit');
  const row = page.locator('#open-orders tbody tr', { hasText: limit });
  await row.waitFor({ timeout: 15000 });
  assert.match(await row.textContent(), /AAPL.*buy.*limit/s);
  assert.equal(await page.locator('#err-limit_price').textContent(), '');
  await row.getByRole('button', { name: /Cancel/ }).click();
  await row.waitFor({ state: 'detached', timeout: 15000 });
});

test('a market order fills, and the position shows with a P&L that moves with the market', async () => {
  await page.selectOption('#order-type', 'market');
  await page.selectOption('#order-tif', 'day');
  await page.fill('#order-qty', '10');
  await page.click('#order-submit');
  await page.locator('#fills tbody tr', { hasText: 'AAPL' }).first().waitFor({ timeout: 15000 });
  const position = page.locator('#positions tbody tr[data-symbol="AAPL"]');
  await position.waitFor({ timeout: 15000 });
  assert.equal((await position.locator('td').nth(1).textContent()).replace(/\.0+$/, ''), '10');
  const pl = position.locator('td').nth(5);
  const first = await pl.textContent();
  await waitFor(async () => (await pl.textContent()) !== first, { timeoutMs: 60000, what: 'the unrealized P&L to change' });

  // A resting order for the picture: a GTC buy well below the market stays open.
  const last = Number((await page.locator('.ticker[data-symbol="AAPL"] .price').textContent()).replace(/,/g, ''));
  await page.selectOption('#order-type', 'limit');
  await page.fill('#order-qty', '5');
  await page.fill('#order-limit', (Math.floor(last * 0.95 * 100) / 100).toFixed(2));
  await page.selectOption('#order-tif', 'gtc');
  await page.click('#order-submit');
  await page.locator('#open-orders tbody tr').first().waitFor({ timeout: 15000 });
  await gateway.publish(news('Apple unveils new chips at its developer event', ['AAPL'])).catch(() => {});
  await page.waitForTimeout(1000);
  await screenshot(page, 'dashboard-trading.png', { fullPage: true });
  assert.deepEqual(page.consoleMessages.filter((m) => m.startsWith('pageerror')), []);
});

test('after a gateway restart the session reconnects with a fresh ticket and gets its book back', async () => {
  await gateway.stop();
  await page.locator('#ws-state[data-state="reconnecting"]').waitFor({ timeout: 15000 });
  await page.locator('#conn-state[data-state="reconnecting"]').waitFor({ timeout: 15000 });
  await page.evaluate(() => {
    document.querySelector('#book-bids').replaceChildren();
    delete document.querySelector('#book').dataset.seq;
  });
  await gateway.start();
  await page.locator('#ws-state[data-state="live"]').waitFor({ timeout: 45000 });
  // The book subscription was sent again without the page asking: levels come back.
  await waitFor(async () => (await page.locator('#book-bids tr').count()) > 0, { timeoutMs: 30000, what: 'the book after the restart' });
  const seq = Number(await page.locator('#book').getAttribute('data-seq'));
  await waitFor(async () => Number(await page.locator('#book').getAttribute('data-seq')) > seq, { what: 'book updates after the restart' });
  await page.locator('#conn-state[data-state="live"]').waitFor({ timeout: 30000 });
});
