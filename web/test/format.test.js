import { test } from 'node:test';
import assert from 'node:assert/strict';
import { barToCandle, foldTrade, formatPrice, priceDirection, signOf } from '../js/format.js';

test('the first price has no direction and later ones compare with the previous price', () => {
  assert.equal(priceDirection(undefined, 100), null);
  assert.equal(priceDirection(100, 101), 'up');
  assert.equal(priceDirection(101, 99.5), 'down');
  assert.equal(priceDirection(99.5, 99.5), 'flat');
});

test('trades fold into the candle of their minute and a new minute opens a new candle', () => {
  const first = foldTrade(null, { p: 10, t: '2026-01-02T14:30:05Z' });
  assert.deepEqual(first, { time: Date.parse('2026-01-02T14:30:00Z') / 1000, open: 10, high: 10, low: 10, close: 10 });
  const second = foldTrade(first, { p: 12, t: '2026-01-02T14:30:40Z' });
  const third = foldTrade(second, { p: 9, t: '2026-01-02T14:30:59Z' });
  assert.deepEqual(third, { ...first, high: 12, low: 9, close: 9 });
  const next = foldTrade(third, { p: 11, t: '2026-01-02T14:31:00Z' });
  assert.equal(next.time, first.time + 60);
  assert.equal(next.open, 11);
  assert.equal(foldTrade(next, { p: 1, t: '2026-01-02T14:29:00Z' }), null, 'older trades are not drawn');
});

test('bars become candles keyed by their start minute', () => {
  assert.deepEqual(barToCandle({ o: 1, h: 3, l: 0.5, c: 2, t: '2026-01-02T14:30:00Z' }), {
    time: Date.parse('2026-01-02T14:30:00Z') / 1000, open: 1, high: 3, low: 0.5, close: 2,
  });
});

test('prices keep their decimals and P&L signs come from decimal strings', () => {
  assert.equal(formatPrice(126.5), '126.50');
  assert.equal(formatPrice(1234.125), '1,234.125');
  assert.equal(signOf('-3.20'), -1);
  assert.equal(signOf('0.00'), 0);
  assert.equal(signOf('12'), 1);
});

test('decimal strings are padded for display without float rounding', async () => {
  const { padDecimal } = await import('../js/format.js');
  assert.equal(padDecimal('226.2'), '226.20');
  assert.equal(padDecimal('0'), '0.00');
  assert.equal(padDecimal('-7.4'), '-7.40');
  assert.equal(padDecimal('0.123456'), '0.123456');
  assert.equal(padDecimal('99999999999999999.1'), '99999999999999999.10');
  assert.equal(padDecimal('n/a'), 'n/a');
});
