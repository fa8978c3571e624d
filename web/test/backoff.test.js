import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Backoff, backoffCap, backoffDelay } from '../js/backoff.js';

test('the cap starts at one second and doubles per attempt up to thirty seconds', () => {
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 50].map((n) => backoffCap(n)), [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
});

test('jitter keeps every delay between half the cap and the cap', () => {
  for (let attempt = 0; attempt < 10; attempt++) {
    const cap = backoffCap(attempt);
    assert.equal(backoffDelay(attempt, { random: () => 0 }), cap / 2);
    assert.equal(backoffDelay(attempt, { random: () => 1 }), cap);
    const middle = backoffDelay(attempt, { random: () => 0.5 });
    assert.ok(middle > cap / 2 && middle < cap, `${middle} within (${cap / 2}, ${cap})`);
  }
});

test('a real random source spreads delays instead of repeating one value', () => {
  const delays = new Set(Array.from({ length: 50 }, () => backoffDelay(4)));
  assert.ok(delays.size > 10, `only ${delays.size} distinct delays`);
});

test('the stateful backoff grows per call and starts over after reset', () => {
  const backoff = new Backoff({ random: () => 1 });
  assert.deepEqual([backoff.next(), backoff.next(), backoff.next()], [1000, 2000, 4000]);
  for (let i = 0; i < 10; i++) backoff.next();
  assert.equal(backoff.next(), 30000);
  backoff.reset();
  assert.equal(backoff.next(), 1000);
});
