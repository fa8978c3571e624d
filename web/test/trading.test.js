import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { TradingClient, errorField, mergeSubscription } from '../js/trading.js';
import { Backoff } from '../js/backoff.js';
import { FakeWebSocket, ManualTimers, jsonResponse, settle } from './fakes.js';

beforeEach(() => {
  FakeWebSocket.instances = [];
});

function setup({ ticketStatus = 200, expiresIn, refreshStatus = 200, bookMaxRate } = {}) {
  const timers = new ManualTimers();
  const calls = [];
  let tickets = 0;
  let refreshes = 0;
  const fetch = async (url, init) => {
    calls.push([url, init]);
    // Without `expiresIn` the token has no lifetime, so no refresh timer joins the queue.
    if (url.endsWith('/v1/auth/token')) return jsonResponse(200, { access_token: 'jwt-1', token_type: 'bearer', expires_in: expiresIn });
    if (url.endsWith('/v1/auth/refresh')) {
      if (refreshStatus !== 200) return jsonResponse(refreshStatus, { code: 40100000, message: 'token has expired' });
      refreshes += 1;
      return jsonResponse(200, { access_token: `jwt-r${refreshes}`, token_type: 'Bearer', expires_in: expiresIn });
    }
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
    bookMaxRate,
  });
  const seen = [];
  for (const type of ['state', 'book', 'resync', 'portfolio', 'error', 'auth_required', 'trade_update', 'trade_updates_reset', 'trade_updates_gap', 'token']) {
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

const update = (seq, event = 'fill') => ({ T: 'trade_update', seq, event, order: { id: `o${seq}` } });
const passed = (seen) => seen.filter(([type]) => type === 'trade_update').map(([, detail]) => detail.seq);

test('after a reconnect trade updates resume after the last seq, each passed on exactly once', async () => {
  const context = setup();
  const socket = await connected(context);
  context.client.subscribe({ trade_updates: true });
  assert.deepEqual(socket.sent.at(-1), { action: 'subscribe', trade_updates: true });
  socket.receive({ T: 'trade_updates_live', since: null, seq: 0, replayed: 0 }, update(1), update(2));
  socket.drop();
  context.timers.runNext();
  await settle();
  const again = FakeWebSocket.instances.at(-1);
  again.open();
  again.receive({ T: 'success', msg: 'authenticated' });
  assert.deepEqual(again.sent.at(-1), { action: 'subscribe', trade_updates: { since: 2 } });
  // An overlapping replay (2 again) is dropped; the missed 3 and 4 pass, then live 5.
  again.receive(update(2), update(3), update(4), { T: 'trade_updates_live', since: 2, seq: 4, replayed: 2 }, update(5));
  assert.deepEqual(passed(context.seen), [1, 2, 3, 4, 5]);
  assert.equal(context.client.lastSeq, 5);
});

test('a client that saw no update yet resumes from the seq the server announced', async () => {
  const context = setup();
  const socket = await connected(context);
  context.client.subscribe({ trade_updates: true });
  socket.receive({ T: 'trade_updates_live', since: null, seq: 41, replayed: 0 });
  socket.drop();
  context.timers.runNext();
  await settle();
  const again = FakeWebSocket.instances.at(-1);
  again.open();
  again.receive({ T: 'success', msg: 'authenticated' });
  assert.deepEqual(again.sent.at(-1), { action: 'subscribe', trade_updates: { since: 41 } });
});

test('a skipped seq asks for a replay once and a reset replaces the position in the sequence', async () => {
  const context = setup();
  const socket = await connected(context);
  context.client.subscribe({ trade_updates: true });
  socket.receive(update(1), update(3), update(4));
  assert.deepEqual(passed(context.seen), [1]);
  const replays = socket.sent.filter((f) => f.trade_updates?.since !== undefined);
  assert.deepEqual(replays, [{ action: 'subscribe', trade_updates: { since: 1 } }], 'one request for the gap');
  assert.deepEqual(context.seen.find(([type]) => type === 'trade_updates_gap')[1], { expected: 2, got: 3 });
  socket.receive(update(2), update(3), update(4));
  assert.deepEqual(passed(context.seen), [1, 2, 3, 4]);
  socket.receive({ T: 'trade_updates_reset', reason: 'too_old', since: 4, seq: 90, orders: [], positions: [], account: {} });
  assert.equal(context.client.lastSeq, 90);
  socket.receive(update(90), update(91));
  assert.deepEqual(passed(context.seen), [1, 2, 3, 4, 91]);
});

test('the token is refreshed before it expires and handed to the open session in place', async () => {
  const context = setup({ expiresIn: 3 });
  const socket = await connected(context);
  assert.deepEqual(context.timers.delays(), [2400], 'a fifth of the lifetime before expiry');
  context.timers.runNext();
  await settle();
  const [url, init] = context.calls.at(-1);
  assert.equal(url, 'http://gw:8080/v1/auth/refresh');
  assert.equal(init.headers.Authorization, 'Bearer jwt-1');
  assert.equal(context.client.token, 'jwt-r1');
  assert.deepEqual(socket.sent.at(-1), { action: 'auth', token: 'jwt-r1' });
  assert.deepEqual(context.timers.delays(), [2400], 'the next refresh is scheduled');
  assert.equal(FakeWebSocket.instances.length, 1, 'no reconnect');
});

test('a refused refresh asks for a new login', async () => {
  const context = setup({ expiresIn: 3, refreshStatus: 401 });
  await connected(context);
  context.timers.runNext();
  await settle();
  assert.ok(context.seen.some(([type]) => type === 'auth_required'));
  assert.equal(context.client.token, 'jwt-1');
});

test('with a book rate, order books are subscribed in a message of their own carrying max_rate', async () => {
  const context = setup({ bookMaxRate: 5 });
  const socket = await connected(context);
  context.client.subscribe({ trade_updates: true, orderbooks: ['AAPL'] });
  assert.deepEqual(socket.sent.slice(1), [
    { action: 'subscribe', orderbooks: ['AAPL'], max_rate: 5 },
    { action: 'subscribe', trade_updates: true },
  ]);
  socket.drop();
  context.timers.runNext();
  await settle();
  const again = FakeWebSocket.instances.at(-1);
  again.open();
  again.receive({ T: 'success', msg: 'authenticated' });
  assert.deepEqual(again.sent.slice(1), [
    { action: 'subscribe', orderbooks: ['AAPL'], max_rate: 5 },
    { action: 'subscribe', trade_updates: true },
  ]);
});
