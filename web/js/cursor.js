// Resume bookkeeping for a Server-Sent Events feed (PROTOCOL.md §2).
//
// Every event carries `id: <epoch>-<seq>`. While an EventSource retries by itself the browser
// sends the last id as `Last-Event-ID`; when we have to open a brand-new EventSource (after
// the browser gave up, or after a 407 slow-client close) the cursor goes in
// `?last_event_id=` instead. Events at or before the cursor of the same epoch are duplicates
// (a replay overlapping what we already have) and are dropped; an event from another epoch
// only arrives after a reset snapshot, which moves the cursor to the new epoch.

/** Parses `"<epoch>-<seq>"`; returns `null` for anything else. */
export function parseCursor(text) {
  if (typeof text !== 'string') return null;
  const match = /^\s*(\d+)-(\d+)\s*$/.exec(text);
  if (!match) return null;
  return { epoch: match[1], seq: Number(match[2]) };
}

export class ResumeCursor {
  constructor(initial = null) {
    this.last = null;
    this.lastText = null;
    if (initial) this.accept(initial);
  }

  /** The id to resume from, or `null` before the first event. */
  get id() {
    return this.lastText;
  }

  /**
   * Classifies an event id and moves the cursor when the event is new.
   * Returns `"new"`, `"duplicate"` (same epoch, not after the cursor), `"epoch"` (another
   * epoch: accepted, the caller should expect or have seen a reset) or `"none"` (no id).
   */
  observe(idText) {
    const cursor = parseCursor(idText);
    if (!cursor) return 'none';
    if (this.last && cursor.epoch === this.last.epoch) {
      if (cursor.seq <= this.last.seq) return 'duplicate';
      this.last = cursor;
      this.lastText = idText.trim();
      return 'new';
    }
    const kind = this.last ? 'epoch' : 'new';
    this.last = cursor;
    this.lastText = idText.trim();
    return kind;
  }

  /** Accepts a cursor unconditionally (a snapshot, which states the feed's position). */
  accept(idText) {
    const cursor = parseCursor(idText);
    if (!cursor) return false;
    this.last = cursor;
    this.lastText = idText.trim();
    return true;
  }

  /** `url` with `last_event_id` set to the cursor (for a fresh EventSource), as a string. */
  resumeUrl(url) {
    const target = new URL(url, 'http://placeholder.invalid');
    target.searchParams.delete('last_event_id');
    if (this.lastText) target.searchParams.set('last_event_id', this.lastText);
    if (target.origin === 'http://placeholder.invalid' && !/^[a-z]+:/i.test(String(url))) {
      return target.pathname + target.search;
    }
    return target.toString();
  }
}
