import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ResumeCursor, parseCursor } from '../js/cursor.js';

test('cursors parse as epoch and sequence and anything else is rejected', () => {
  assert.deepEqual(parseCursor('1732-42'), { epoch: '1732', seq: 42 });
  assert.equal(parseCursor('abc'), null);
  assert.equal(parseCursor(''), null);
  assert.equal(parseCursor(undefined), null);
});

test('events after the cursor are new and replayed ones at or before it are duplicates', () => {
  const cursor = new ResumeCursor();
  assert.equal(cursor.observe('7-1'), 'new');
  assert.equal(cursor.observe('7-2'), 'new');
  assert.equal(cursor.observe('7-2'), 'duplicate');
  assert.equal(cursor.observe('7-1'), 'duplicate');
  assert.equal(cursor.observe('7-5'), 'new');
  assert.equal(cursor.id, '7-5');
});

test('an event from another epoch moves the cursor and is reported as an epoch change', () => {
  const cursor = new ResumeCursor('7-900');
  assert.equal(cursor.observe('8-3'), 'epoch');
  assert.equal(cursor.id, '8-3');
  assert.equal(cursor.observe('8-4'), 'new');
});

test('a snapshot cursor is accepted even when it is older, because the server states it', () => {
  const cursor = new ResumeCursor('7-900');
  assert.ok(cursor.accept('9-10'));
  assert.equal(cursor.observe('9-10'), 'duplicate');
  assert.equal(cursor.observe('9-11'), 'new');
  assert.equal(cursor.accept('junk'), false);
  assert.equal(cursor.id, '9-11');
});

test('the resume URL carries the cursor as last_event_id and keeps other parameters', () => {
  const cursor = new ResumeCursor();
  assert.equal(cursor.resumeUrl('/v1/stream/news?symbols=AAPL'), '/v1/stream/news?symbols=AAPL');
  cursor.observe('3-14');
  assert.equal(cursor.resumeUrl('/v1/stream/news?symbols=AAPL'), '/v1/stream/news?symbols=AAPL&last_event_id=3-14');
  assert.equal(
    cursor.resumeUrl('http://gw:8080/v1/stream/alerts?last_event_id=1-1'),
    'http://gw:8080/v1/stream/alerts?last_event_id=3-14',
  );
});
