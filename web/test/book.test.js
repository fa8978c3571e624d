import { test } from 'node:test';
import assert from 'node:assert/strict';
import { OrderBook, canonicalDecimal } from '../js/book.js';

const snapshot = { T: 'o', S: 'AAPL', seq: 1, snapshot: true, b: [['126.54', '300'], ['126.50', '100']], a: [['126.56', '200'], ['126.60', '50']] };

test('a snapshot fills both sides sorted best first', () => {
  const book = new OrderBook('AAPL');
  assert.deepEqual(book.apply(snapshot), { applied: true });
  assert.deepEqual(book.bidLevels(), [['126.54', '300'], ['126.50', '100']]);
  assert.deepEqual(book.askLevels(1), [['126.56', '200']]);
});

test('deltas set absolute sizes, add levels and remove levels at size zero', () => {
  const book = new OrderBook('AAPL');
  book.apply(snapshot);
  assert.deepEqual(book.apply({ T: 'o', S: 'AAPL', seq: 2, b: [['126.54', '0'], ['126.55', '10']], a: [['126.6', '75']] }), { applied: true });
  assert.deepEqual(book.bidLevels(), [['126.55', '10'], ['126.50', '100']]);
  assert.deepEqual(book.askLevels(), [['126.56', '200'], ['126.6', '75']]);
  assert.equal(book.seq, 2);
});

test('a skipped seq is a gap: the book goes stale and ignores deltas until a snapshot', () => {
  const book = new OrderBook('AAPL');
  book.apply(snapshot);
  assert.deepEqual(book.apply({ T: 'o', S: 'AAPL', seq: 3, b: [['1', '1']], a: [] }), { applied: false, gap: true, expected: 2, got: 3 });
  assert.ok(book.stale);
  assert.deepEqual(book.apply({ T: 'o', S: 'AAPL', seq: 4, b: [['1', '1']], a: [] }), { applied: false, gap: false });
  assert.deepEqual(book.bidLevels()[0], ['126.54', '300']);
  book.apply({ ...snapshot, seq: 9, b: [['127', '5']] });
  assert.equal(book.stale, false);
  assert.deepEqual(book.apply({ T: 'o', S: 'AAPL', seq: 10, b: [], a: [] }), { applied: true });
});

test('a repeated seq is also a gap', () => {
  const book = new OrderBook('AAPL');
  book.apply(snapshot);
  assert.equal(book.apply({ T: 'o', S: 'AAPL', seq: 1, b: [], a: [] }).gap, true);
});

test('a delta before any snapshot is ignored without asking for a resync', () => {
  const book = new OrderBook('AAPL');
  assert.deepEqual(book.apply({ T: 'o', S: 'AAPL', seq: 5, b: [['1', '1']], a: [] }), { applied: false, gap: false });
});

test('prices written with different trailing zeros are one level', () => {
  assert.equal(canonicalDecimal('126.500'), '126.5');
  assert.equal(canonicalDecimal('126.00'), '126');
  assert.equal(canonicalDecimal('0.10'), '0.1');
  assert.equal(canonicalDecimal('007'), '7');
});
