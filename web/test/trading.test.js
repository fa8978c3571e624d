import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { TradingClient, errorField, mergeSubscription } from '../js/trading.js';
import { Backoff } from '../js/backoff.js';
import { FakeWebSocket, ManualTimers, jsonResponse, settle } from './fakes.js';

beforeEach(() => {
  FakeWebSocket.instances = [];
});

function setup({ ticketStatus = 200 } = {}) {
  const timers = new ManualTimers();
  const calls = [];
  let tickets = 0;
  const fetch = async (url, init) => {
    calls.push([url, init]);
    if (url.endsWith('/v1/auth/token')) return jsonResponse(200, { access_token: 'jwt-1', token_type: 'bearer', expires_in: 3600 });
    if (url.endsWith('/v1/auth/ticket')) {
      if (ticketStatus !== 200) return jsonResponse(ticketStatus, { code: 40100000, message: 'token has expired' });
      tickets += 1;
      return jsonResponse(200, { ticket: `t-${tickets}`, expires_in_ms: 30000 });
    }
    throw new Error(`unexpected ${url}`);
  };
  const client = new TradingClient({
    base: 'http://gw:8080',
    WebSocket: FakeWebSocket,
    fetch,
    backoff: new Backoff({ random: () => 1 }),
    setTimeout: timers.setTimeout,
    clearTimeout: timers.clearTimeout,
  });
  const seen = [];
  for (const type of ['state', 'book', 'resync', 'portfolio', 'error', 'auth_required', 'trade_update']) {
    client.addEventListener(type, (event) => seen.push([type, event.detail]));
  }
  return { client, timers, calls, seen };
}

async function connected(context) {
  const { client } = context;
  await client.login('demo', 'demo-password');
  client.connect();
  await settle();
  const socket = FakeWebSocket.instances.at(-1);
  socket.open();
  socket.receive({ T: 'success', msg: 'connected' });
  socket.receive({ T: 'success', msg: 'authenticated' });
  return socket;
}

test('login posts credentials and the socket authenticates with a single-use ticket, not the token', async () => {
  const context = setup();
  const socket = await connected(context);
  const [, init] = context.calls[0];
  assert.deepEqual(JSON.parse(init.body), { username: 'demo', password: 'demo-password' });
  assert.equal(context.calls[1][1].headers.Authorization, 'Bearer jwt-1');
  assert.equal(socket.url, 'ws://gw:8080/v1/stream');
  assert.deepEqual(socket.sent[0], { action: 'auth', token: 't-1' });
  assert.equal(context.client.state, 'live');
});

test('after a drop the client reconnects with a fresh ticket and resubscribes the whole set', async () => {
  const context = setup();
  const socket = await connected(context);
  context.client.subscribe({ trade_updates: true, portfolio: true });
  context.client.subscribe({ orderbooks: ['AAPL'] });
  context.client.subscribe({ orderbooks: ['MSFT'] });
  context.client.unsubscribe({ orderbooks: ['MSFT'] });
  assert.deepEqual(socket.sent.slice(1).map((f) => f.action), ['subscribe', 'subscribe', 'subscribe', 'unsubscribe']);
  socket.drop();
  assert.equal(context.client.state, 'reconnecting');
  assert.deepEqual(context.timers.delays(), [1000]);
  context.timers.runNext();
  await settle();
  const again = FakeWebSocket.instances.at(-1);
  assert.notEqual(again, socket);
  again.open();
  assert.deepEqual(again.sent[0], { action: 'auth', token: 't-2' });
  again.receive({ T: 'success', msg: 'authenticated' });
  assert.deepEqual(again.sent[1], { action: 'subscribe', trade_updates: true, portfolio: true, orderbooks: ['AAPL'] });
});

test('reconnect delays double while the server stays away and reset after success', async () => {
  const context = setup();
  const socket = await connected(context);
  socket.drop();
  const delays = [];
  for (let i = 0; i < 6; i++) {
    delays.push(context.timers.delays()[0]);
    context.timers.runNext();
    await settle();
    FakeWebSocket.instances.at(-1).drop();
  }
  assert.deepEqual(delays, [1000, 2000, 4000, 8000, 16000, 30000]);
  context.timers.runNext();
  await settle();
  const last = FakeWebSocket.instances.at(-1);
  last.open();
  last.receive({ T: 'success', msg: 'authenticated' });
  last.drop();
  assert.deepEqual(context.timers.delays(), [1000]);
});

test('a book gap sends a resync for that symbol and the next snapshot repairs the book', async () => {
  const context = setup();
  const socket = await connected(context);
  socket.receive({ T: 'o', S: 'AAPL', seq: 1, snapshot: true, b: [['100', '5']], a: [['101', '5']] });
  socket.receive({ T: 'o', S: 'AAPL', seq: 2, b: [['100', '7']], a: [] });
  socket.receive({ T: 'o', S: 'AAPL', seq: 4, b: [['100', '0']], a: [] });
  assert.deepEqual(socket.sent.at(-1), { action: 'resync', orderbooks: ['AAPL'] });
  const resync = context.seen.find(([t]) => t === 'resync');
  assert.deepEqual(resync[1], { symbol: 'AAPL', expected: 3, got: 4 });
  assert.deepEqual(context.client.books.get('AAPL').bidLevels(), [['100', '7']]);
  socket.receive({ T: 'o', S: 'AAPL', seq: 5, snapshot: true, b: [['99', '1']], a: [['101', '5']] });
  assert.deepEqual(context.client.books.get('AAPL').bidLevels(), [['99', '1']]);
  assert.equal(context.seen.filter(([t]) => t === 'book').length, 3);
});

test('orders resolve on their ack and reject with the field a validation error names', async () => {
  const context = setup();
  const socket = await connected(context);
  const placed = context.client.placeOrder({ symbol: 'AAPL', qty: '1', side: 'buy', type: 'market', time_in_force: 'day' });
  const frame = socket.sent.at(-1);
  assert.equal(frame.action, 'order');
  socket.receive({ T: 'order_ack', id: frame.id, order: { id: 'o-1', status: 'new' } });
  assert.equal((await placed).order.id, 'o-1');

  const refused = context.client.placeOrder({ symbol: 'AAPL', qty: '1', side: 'buy', type: 'limit', time_in_force: 'day' });
  socket.receive({ T: 'error', id: socket.sent.at(-1).id, code: 40010001, msg: 'limit_price is required for limit orders' });
  await assert.rejects(refused, (error) => error.code === 40010001 && error.field === 'limit_price');
});

test('requests pending when the socket drops are rejected instead of hanging', async () => {
  const context = setup();
  const socket = await connected(context);
  const cancel = context.client.cancelOrder('o-1');
  assert.deepEqual(socket.sent.at(-1).order_id, 'o-1');
  socket.drop();
  await assert.rejects(cancel, /connection lost/);
});

test('a refused token stops reconnecting and asks for a new login', async () => {
  const context = setup({ ticketStatus: 401 });
  await context.client.login('demo', 'demo-password');
  context.client.connect();
  await settle();
  await settle();
  assert.ok(context.seen.some(([t]) => t === 'auth_required'));
  assert.equal(context.timers.queue.length, 0);
  assert.equal(FakeWebSocket.instances.length, 0);
});

test('validation messages map to the order field they name', () => {
  assert.equal(errorField({ msg: 'qty must be a positive number' }), 'qty');
  assert.equal(errorField({ msg: 'stop_price is required for stop orders' }), 'stop_price');
  assert.equal(errorField({ msg: 'invalid order: time_in_force must be one of day, gtc' }), 'time_in_force');
  assert.equal(errorField({ msg: 'insufficient buying power' }), null);
  assert.equal(errorField({ field: 'side', msg: 'anything' }), 'side');
});

test('an empty subscription change sends nothing', async () => {
  const context = setup();
  const socket = await connected(context);
  const before = socket.sent.length;
  context.client.subscribe({ orderbooks: [] });
  context.client.unsubscribe({});
  assert.equal(socket.sent.length, before);
});

test('subscription sets merge additively and subtract on unsubscribe', () => {
  let set = mergeSubscription({}, { orderbooks: ['AAPL', 'MSFT'], portfolio: true }, true);
  set = mergeSubscription(set, { orderbooks: ['MSFT'] }, false);
  assert.deepEqual(set, { trade_updates: false, portfolio: true, orderbooks: ['AAPL'], trades: [], quotes: [] });
});
