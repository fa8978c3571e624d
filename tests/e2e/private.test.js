// Private streams in the browser: the dashboard's WebSocket is cut mid-trade (a proxy between
// the browser and the gateway destroys the connection and refuses new ones for a while), the
// same user's other session buys meanwhile, and after the dashboard reconnects its fills table
// shows that fill exactly once: the client resumed its trade updates from the last seq.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Gateway, freePort, launchBrowser, waitFor } from './support.js';
import { TcpProxy } from './proxy.js';

let gateway;
let proxy;
let page;
let dataDir;
const browser = await launchBrowser();

before(async () => {
  dataDir = await mkdtemp(path.join(os.tmpdir(), 'tickgate-e2e-private-'));
  gateway = await Gateway.start({
    port: await freePort(),
    env: {
      TICKGATE__SIMULATOR__ENABLED: 'true',
      TICKGATE__SIMULATOR__TRADES_PER_SECOND: '5',
      TICKGATE__STORE__ENABLED: 'true',
      TICKGATE__STORE__DATA_DIR: dataDir,
    },
  });
  proxy = await TcpProxy.start(gateway.port);
  page = await browser.newPage();
  // Through the proxy: the page's origin is the proxy's, which the gateway sees as its own.
  await page.goto(`${proxy.url}/`);
  await page.locator('#conn-text', { hasText: 'live' }).waitFor();
});

after(async () => {
  await browser.close();
  await proxy?.close();
  await gateway?.stop();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

const fillRows = () => page.locator('#fills tbody tr');

test('fills that happen while the dashboard is disconnected show up once it reconnects', async () => {
  await page.fill('#login-user', 'demo');
  await page.fill('#login-password', 'demo-password');
  await page.press('#login-password', 'Enter');
  await page.locator('#ws-state[data-state="live"]').waitFor({ timeout: 30000 });

  // A first trade from the dashboard itself.
  await page.selectOption('#order-type', 'market');
  await page.selectOption('#order-tif', 'day');
  await page.fill('#order-qty', '2');
  await page.click('#order-submit');
  await waitFor(async () => (await fillRows().count()) > 0, { what: 'the first fill' });
  const before = await fillRows().count();

  // The connection dies mid-session and stays down for a while.
  proxy.pause();
  assert.ok(proxy.cut() > 0, 'the dashboard had connections through the proxy');
  await page.locator('#ws-state[data-state="reconnecting"]').waitFor({ timeout: 15000 });

  // Meanwhile the same user trades from another session (straight to the gateway).
  const other = await browser.newPage();
  await other.goto(`${gateway.url}/`);
  const executionIds = await other.evaluate(async () => {
    const { TradingClient } = await import('/js/trading.js');
    const client = new TradingClient({ base: '' });
    await client.login('demo', 'demo-password');
    const fills = [];
    let orderId = null;
    const done = new Promise((resolve) => {
      client.addEventListener('trade_update', (event) => {
        const update = event.detail;
        if (update.order.id === orderId && update.execution_id) fills.push(update.execution_id);
        if (update.order.id === orderId && update.order.status === 'filled') resolve();
      });
    });
    client.subscribe({ trade_updates: true });
    await new Promise((resolve) => {
      client.addEventListener('trade_updates_live', resolve, { once: true });
      client.connect();
    });
    const ack = await client.placeOrder({ symbol: 'AAPL', qty: '7', side: 'buy', type: 'market', time_in_force: 'day' });
    orderId = ack.order.id;
    await done;
    client.close();
    return fills;
  });
  await other.close();
  assert.ok(executionIds.length > 0, 'the other session got its fills');

  // Back online: the dashboard reconnects, resumes after its last seq and shows the fills.
  proxy.resume();
  await page.locator('#ws-state[data-state="live"]').waitFor({ timeout: 45000 });
  for (const id of executionIds) {
    await page.locator(`#fills tbody tr[data-execution-id="${id}"]`).waitFor({ timeout: 15000 });
    assert.equal(await page.locator(`#fills tbody tr[data-execution-id="${id}"]`).count(), 1, 'shown once');
  }
  assert.equal(await fillRows().count(), before + executionIds.length, 'nothing else repeated or lost');
  const position = page.locator('#positions tbody tr[data-symbol="AAPL"]');
  await waitFor(async () => (await position.locator('td').nth(1).textContent()).replace(/\.0+$/, '') === '9', { what: 'the position of both buys' });
  assert.deepEqual(page.consoleMessages.filter((m) => m.startsWith('pageerror')), []);
});
