// FeedClient: one public Server-Sent Events feed of the gateway (PROTOCOL.md §2) as typed
// events on an EventTarget.
//
// The browser's EventSource reconnects by itself and sends `Last-Event-ID`, so the server
// replays what we missed. This wrapper adds what EventSource does not do: it drops replayed
// duplicates, turns `snapshot` events into state (including the `reset` case, where the server
// says it could not resume and sends a fresh picture), reports connection and upstream state
// from `status` events, surfaces server `error` events (407 slow client), and, when the
// browser gives up for good (the EventSource is CLOSED), reopens the feed itself with
// exponential backoff, carrying the cursor in `?last_event_id=`. A 4xx on that path is a
// request the server will never accept (unknown symbol, say): it is reported, not retried.
// A market feed opened with `maxRate` is throttled by the server: its ids are resume points,
// so the duplicate filter is off for it.

import { Backoff } from './backoff.js';
import { ResumeCursor } from './cursor.js';

const DATA_EVENTS = ['trade', 'quote', 'bar', 'status', 'news', 'alert'];
const FROM_THE_START = '0-0';

/** Joins a base URL (may be '' for same origin) and a path with query parameters. */
export function feedUrl(base, path, params = {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined || value === null || value === '') continue;
    query.set(key, Array.isArray(value) ? value.join(',') : String(value));
  }
  const text = query.toString().replace(/%2C/g, ',').replace(/%2A/g, '*');
  return `${String(base ?? '').replace(/\/$/, '')}${path}${text ? `?${text}` : ''}`;
}

export const marketUrl = (base, { symbols = '*', types, maxRate } = {}) =>
  feedUrl(base, '/v1/stream/market', { symbols, types, max_rate: maxRate });

/** Whether a feed URL asks for a throttled stream (`max_rate`, PROTOCOL.md "Throttled streams"). */
export function isThrottled(url) {
  return /[?&]max_rate=[^&]/.test(String(url));
}
export const newsUrl = (base, { symbols } = {}) => feedUrl(base, '/v1/stream/news', { symbols });
export const alertsUrl = (base) => feedUrl(base, '/v1/stream/alerts');

/**
 * Events (all `CustomEvent`s, payload in `detail`):
 * - `trade`, `quote`, `bar`, `status`, `news`, `alert`: one wire object each.
 * - `snapshot`: the snapshot object (`{reset, reason?, cursor, trades, quotes, bars, statuses}` or
 *   `{..., news}`); `reset` additionally when `detail.reset` is true.
 * - `error`: a server `error` event (`{T:"error", code, msg}`) or a fatal HTTP error
 *   (`{code, message, status}`) after which the client stops.
 * - `state`: `{connection, upstream}`; connection is `connecting`, `live`, `reconnecting` or
 *   `closed`; upstream is `ok` or `down` (from `upstream_down`/`upstream_ok` status events, and
 *   on a cluster from `cluster_down`/`cluster_ok`: the node lost Redis and is back).
 */
export class FeedClient extends EventTarget {
  constructor(url, options = {}) {
    super();
    this.url = url;
    this.EventSourceImpl = options.EventSource ?? globalThis.EventSource;
    this.fetchImpl = options.fetch ?? globalThis.fetch?.bind(globalThis);
    this.backoff = options.backoff ?? new Backoff();
    this.setTimer = options.setTimeout ?? ((fn, ms) => setTimeout(fn, ms));
    this.clearTimer = options.clearTimeout ?? ((id) => clearTimeout(id));
    this.withCredentials = Boolean(options.withCredentials);
    // News and alerts feeds send no snapshot on a fresh connect. `recent: true` asks for the
    // recent items anyway by resuming from the oldest possible cursor: the server cannot
    // resume from there, says so with a reset snapshot, and that snapshot lists them.
    this.cursor = new ResumeCursor(options.lastEventId ?? (options.recent ? FROM_THE_START : null));
    // On a throttled stream an id is a resume point shared by several events, not an event's
    // own sequence, so it cannot tell a duplicate: every event is passed on (a repeat after
    // a resume is a trade or quote already shown, the newest value winning anyway).
    this.throttled = isThrottled(url);
    this.connection = 'closed';
    this.upstream = 'ok';
    this.source = null;
    this.timer = null;
    this.stopped = true;
  }

  /** Opens the feed. Idempotent. */
  start() {
    if (!this.stopped) return this;
    this.stopped = false;
    this.open(this.cursor.id ? this.cursor.resumeUrl(this.url) : this.url);
    return this;
  }

  /** Closes the feed for good (until `start()` again). */
  close() {
    this.stopped = true;
    if (this.timer !== null) this.clearTimer(this.timer);
    this.timer = null;
    this.detach();
    this.setState('closed');
  }

  open(url) {
    this.detach();
    this.setState(this.connection === 'closed' ? 'connecting' : 'reconnecting');
    const source = new this.EventSourceImpl(url, { withCredentials: this.withCredentials });
    this.source = source;
    source.onopen = () => {
      if (source !== this.source) return;
      this.backoff.reset();
      this.setState('live');
    };
    source.onerror = (event) => {
      if (source !== this.source) return;
      // A server `event: error` arrives as a MessageEvent with data; a connection problem as
      // a plain Event. Only the latter is handled here.
      if (event && typeof event.data === 'string') return;
      if (source.readyState === 2 /* CLOSED */) {
        this.detach();
        this.scheduleReopen();
      } else {
        this.setState('reconnecting');
      }
    };
    for (const name of DATA_EVENTS) {
      source.addEventListener(name, (event) => this.onData(source, name, event));
    }
    source.addEventListener('snapshot', (event) => this.onSnapshot(source, event));
    source.addEventListener('error', (event) => {
      if (source !== this.source || typeof event.data !== 'string') return;
      const payload = parseJson(event.data);
      if (payload) this.emit('error', payload);
    });
  }

  detach() {
    if (this.source) {
      this.source.onopen = null;
      this.source.onerror = null;
      this.source.close();
      this.source = null;
    }
  }

  /** The browser gave up: find out why, then reopen with backoff unless the server said no. */
  async scheduleReopen() {
    if (this.stopped) return;
    this.setState('reconnecting');
    const url = this.cursor.resumeUrl(this.url);
    const fatal = await this.probe(url);
    if (this.stopped) return;
    if (fatal) {
      this.emit('error', fatal);
      this.close();
      return;
    }
    const delay = this.backoff.next();
    this.timer = this.setTimer(() => {
      this.timer = null;
      if (!this.stopped) this.open(url);
    }, delay);
  }

  /** Returns an error object when the server answers the feed URL with a 4xx, else null. */
  async probe(url) {
    if (!this.fetchImpl) return null;
    const controller = typeof AbortController === 'function' ? new AbortController() : null;
    try {
      const response = await this.fetchImpl(url, {
        headers: { Accept: 'text/event-stream' },
        signal: controller?.signal,
        credentials: this.withCredentials ? 'include' : 'same-origin',
      });
      if (response.status >= 400 && response.status < 500) {
        const body = parseJson(await response.text()) ?? {};
        return { status: response.status, code: body.code ?? response.status, message: body.message ?? response.statusText };
      }
      return null;
    } catch {
      return null;
    } finally {
      controller?.abort();
    }
  }

  onData(source, name, event) {
    if (source !== this.source) return;
    if (this.cursor.observe(event.lastEventId) === 'duplicate' && !this.throttled) return;
    const payload = parseJson(event.data);
    if (!payload) return;
    if (name === 'status') this.onStatus(payload);
    this.emit(name, payload);
  }

  onSnapshot(source, event) {
    if (source !== this.source) return;
    const payload = parseJson(event.data);
    if (!payload) return;
    this.cursor.accept(payload.cursor ?? event.lastEventId);
    this.backoff.reset();
    this.setState('live');
    this.emit('snapshot', payload);
    if (payload.reset) this.emit('reset', payload);
  }

  onStatus(status) {
    if (status.S !== '*' && status.S !== undefined) return;
    if (status.sc === 'upstream_down' || status.sc === 'cluster_down') this.setUpstream('down');
    else if (status.sc === 'upstream_ok' || status.sc === 'cluster_ok') this.setUpstream('ok');
    // `reset` (cluster: the feed's log started afresh) ends the stream like `shutdown`; the
    // reconnect gets a reset snapshot.
    else if (status.sc === 'shutdown' || status.sc === 'reset') this.setState('reconnecting');
  }

  setState(connection) {
    if (connection === this.connection) return;
    this.connection = connection;
    this.emit('state', { connection, upstream: this.upstream });
  }

  setUpstream(upstream) {
    if (upstream === this.upstream) return;
    this.upstream = upstream;
    this.emit('state', { connection: this.connection, upstream });
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}
