import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { FeedClient, marketUrl, newsUrl } from '../js/sse.js';
import { Backoff } from '../js/backoff.js';
import { FakeEventSource, ManualTimers, jsonResponse, settle } from './fakes.js';

beforeEach(() => {
  FakeEventSource.instances = [];
});

function client(options = {}) {
  const timers = new ManualTimers();
  const feed = new FeedClient(options.url ?? '/v1/stream/news', {
    EventSource: FakeEventSource,
    fetch: options.fetch ?? (async () => jsonResponse(200, {})),
    backoff: new Backoff({ random: () => 1 }),
    setTimeout: timers.setTimeout,
    clearTimeout: timers.clearTimeout,
  });
  const seen = [];
  for (const type of ['news', 'trade', 'snapshot', 'reset', 'state', 'error', 'status']) {
    feed.addEventListener(type, (event) => seen.push([type, event.detail]));
  }
  return { feed, timers, seen };
}

test('feed URLs list symbols and types with plain commas', () => {
  assert.equal(marketUrl('http://gw', { symbols: ['AAPL', 'MSFT'], types: 'trades' }), 'http://gw/v1/stream/market?symbols=AAPL,MSFT&types=trades');
  assert.equal(marketUrl(''), '/v1/stream/market?symbols=*');
  assert.equal(newsUrl('http://gw/'), 'http://gw/v1/stream/news');
});

test('data events are typed and replayed duplicates are dropped', () => {
  const { feed, seen } = client();
  feed.start();
  const source = FakeEventSource.instances[0];
  source.open();
  source.deliver('news', { id: 1, headline: 'a' }, '5-1');
  source.deliver('news', { id: 2, headline: 'b' }, '5-2');
  source.deliver('news', { id: 2, headline: 'b' }, '5-2');
  const news = seen.filter(([t]) => t === 'news').map(([, d]) => d.id);
  assert.deepEqual(news, [1, 2]);
  assert.equal(feed.cursor.id, '5-2');
});

test('a reset snapshot is announced as snapshot and reset and moves the cursor', () => {
  const { feed, seen } = client();
  feed.start();
  const source = FakeEventSource.instances[0];
  source.deliver('news', { id: 1 }, '5-1');
  source.deliver('snapshot', { reset: true, reason: 'cursor is from another epoch', cursor: '6-3', news: [{ id: 9 }] }, '6-3');
  const types = seen.map(([t]) => t);
  assert.ok(types.includes('snapshot') && types.includes('reset'));
  assert.equal(feed.cursor.id, '6-3');
  source.deliver('news', { id: 10 }, '6-4');
  assert.equal(seen.at(-1)[1].id, 10);
});

test('connection state goes connecting, live, reconnecting, live as the browser retries', () => {
  const { feed, seen } = client();
  feed.start();
  const source = FakeEventSource.instances[0];
  source.open();
  source.fail(false);
  source.open();
  const states = seen.filter(([t]) => t === 'state').map(([, d]) => d.connection);
  assert.deepEqual(states, ['connecting', 'live', 'reconnecting', 'live']);
  assert.equal(FakeEventSource.instances.length, 1, 'the browser retries on the same EventSource');
});

test('upstream status events set upstream down and back to ok', () => {
  const { feed, seen } = client({ url: '/v1/stream/market?symbols=*' });
  feed.start();
  const source = FakeEventSource.instances[0];
  source.open();
  source.deliver('status', { T: 's', S: '*', sc: 'upstream_down', sm: 'x', t: 'now' }, '1-1');
  source.deliver('status', { T: 's', S: '*', sc: 'upstream_ok', sm: 'x', t: 'now' }, '1-2');
  const upstream = seen.filter(([t]) => t === 'state').map(([, d]) => d.upstream);
  assert.deepEqual(upstream.slice(-2), ['down', 'ok']);
});

test('cluster statuses set upstream down and ok, and a reset reconnects', () => {
  const { feed, seen } = client({ url: '/v1/stream/market?symbols=*' });
  feed.start();
  const source = FakeEventSource.instances[0];
  source.open();
  source.deliver('status', { T: 's', S: '*', sc: 'cluster_down', sm: 'x', t: 'now' });
  source.deliver('status', { T: 's', S: '*', sc: 'cluster_ok', sm: 'x', t: 'now' });
  const upstream = seen.filter(([t]) => t === 'state').map(([, d]) => d.upstream);
  assert.deepEqual(upstream.slice(-2), ['down', 'ok']);
  source.deliver('status', { T: 's', S: '*', sc: 'reset', sm: 'x', t: 'now' });
  const states = seen.filter(([t]) => t === 'state').map(([, d]) => d.connection);
  assert.equal(states.at(-1), 'reconnecting');
});

test('a server error event (407 slow client) is surfaced with its code', () => {
  const { feed, seen } = client();
  feed.start();
  FakeEventSource.instances[0].deliver('error', { T: 'error', code: 407, msg: 'slow client' });
  const errors = seen.filter(([t]) => t === 'error');
  assert.equal(errors.length, 1);
  assert.equal(errors[0][1].code, 407);
});

test('when the browser gives up the client reopens with backoff and the cursor in the URL', async () => {
  const { feed, timers } = client({ url: '/v1/stream/news?symbols=AAPL' });
  feed.start();
  const first = FakeEventSource.instances[0];
  first.open();
  first.deliver('news', { id: 1 }, '4-7');
  first.fail(true);
  await settle();
  assert.ok(first.closed);
  assert.deepEqual(timers.delays(), [1000]);
  timers.runNext();
  const second = FakeEventSource.instances[1];
  assert.equal(second.url, '/v1/stream/news?symbols=AAPL&last_event_id=4-7');
  second.fail(true);
  await settle();
  assert.deepEqual(timers.delays(), [2000], 'the second attempt waits longer');
  timers.runNext();
  FakeEventSource.instances[2].open();
  FakeEventSource.instances[2].fail(true);
  await settle();
  assert.deepEqual(timers.delays(), [1000], 'a successful open resets the backoff');
});

test('a 4xx answer after the browser gives up is reported and not retried', async () => {
  const { feed, timers, seen } = client({
    url: '/v1/stream/market?symbols=NOPE',
    fetch: async () => jsonResponse(400, { code: 40010003, message: 'unknown symbol(s): NOPE' }),
  });
  feed.start();
  FakeEventSource.instances[0].fail(true);
  await settle();
  await settle();
  assert.equal(timers.queue.length, 0);
  const error = seen.find(([t]) => t === 'error');
  assert.equal(error[1].status, 400);
  assert.match(error[1].message, /NOPE/);
  assert.equal(feed.connection, 'closed');
});

test('close stops everything, including a pending reopen', async () => {
  const { feed, timers } = client();
  feed.start();
  FakeEventSource.instances[0].fail(true);
  await settle();
  assert.equal(timers.queue.length, 1);
  feed.close();
  assert.equal(timers.queue.length, 0);
  assert.equal(feed.connection, 'closed');
});

test('recent: true asks a news feed for its recent items on the first connect', () => {
  const feed = new FeedClient('/v1/stream/news?symbols=AAPL', { EventSource: FakeEventSource, recent: true });
  feed.start();
  assert.equal(FakeEventSource.instances[0].url, '/v1/stream/news?symbols=AAPL&last_event_id=0-0');
  FakeEventSource.instances[0].deliver('snapshot', { reset: true, cursor: '42-7', news: [] }, '42-7');
  assert.equal(feed.cursor.id, '42-7');
  feed.close();
});

test('a throttled market feed asks for max_rate and passes on events that share an id', () => {
  assert.equal(marketUrl('', { symbols: 'AAPL', maxRate: 10 }), '/v1/stream/market?symbols=AAPL&max_rate=10');
  const { feed, seen } = client({ url: marketUrl('', { symbols: '*', maxRate: 5 }) });
  assert.equal(feed.throttled, true);
  feed.start();
  const source = FakeEventSource.instances[0];
  source.open();
  // Held events leave in another order than their sequence, so ids are resume points: two
  // trades under one id are both new, and the cursor never moves back.
  source.deliver('trade', { S: 'MSFT', i: 1 }, '5-7');
  source.deliver('trade', { S: 'AAPL', i: 2 }, '5-7');
  source.deliver('trade', { S: 'AAPL', i: 3 }, '5-9');
  source.deliver('trade', { S: 'MSFT', i: 4 }, '5-9');
  assert.deepEqual(seen.filter(([t]) => t === 'trade').map(([, d]) => d.i), [1, 2, 3, 4]);
  assert.equal(feed.cursor.id, '5-9');
  // An unthrottled feed still drops a replayed duplicate.
  const plain = client({ url: marketUrl('', { symbols: '*' }) });
  assert.equal(plain.feed.throttled, false);
});
