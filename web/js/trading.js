// TradingClient: the authenticated WebSocket (`GET /v1/stream`, PROTOCOL.md §3) as typed
// events on an EventTarget, plus promise-returning order calls.
//
// Auth uses the ticket flow so the long-lived token never travels in a URL: the token from
// `POST /v1/auth/token` buys a single-use ticket at `POST /v1/auth/ticket` before every
// (re)connect. After an unexpected close the client reconnects with exponential backoff and
// jitter (1 s doubling to 30 s) and, once authenticated again, sends the whole subscription
// set it had, so callers subscribe once. Order books are checked for `seq` gaps; a gap asks the
// server for a fresh snapshot with `{"action":"resync","orderbooks":[symbol]}`.
//
// Trade updates carry a per-user `seq`. The client remembers the last one it passed on and
// resubscribes with `{"trade_updates":{"since":lastSeq}}` after a reconnect, so orders and
// fills that happened while it was away arrive first, each exactly once. Before the token
// expires it fetches a fresh one (`POST /v1/auth/refresh`, or `options.tokenProvider`) and
// hands it to the open session with `{"action":"auth","token":...}`, which keeps it open.

import { Backoff } from './backoff.js';
import { OrderBook } from './book.js';

const ORDER_FIELDS = ['client_order_id', 'time_in_force', 'limit_price', 'stop_price', 'symbol', 'qty', 'side', 'type'];

/**
 * The order field a server validation message is about (`"limit_price is required ..."`
 * → `limit_price`), or null. Prefers an explicit `field` on the error. Longer names are tried
 * first so `limit_price` wins over `type` in "limit_price is required for type limit".
 */
export function errorField(error) {
  if (error && typeof error.field === 'string') return error.field;
  const message = String(error?.msg ?? error?.message ?? '');
  let best = null;
  let bestAt = Infinity;
  for (const field of ORDER_FIELDS) {
    const match = new RegExp(`(^|[^a-z_])${field}($|[^a-z_])`).exec(message);
    if (match && match.index < bestAt) {
      best = field;
      bestAt = match.index;
    }
  }
  return best;
}

/** Merges a subscription change into a set description (`add` true) or removes it. */
export function mergeSubscription(current, change, add) {
  const next = {
    trade_updates: current.trade_updates ?? false,
    portfolio: current.portfolio ?? false,
    orderbooks: new Set(current.orderbooks ?? []),
    trades: new Set(current.trades ?? []),
    quotes: new Set(current.quotes ?? []),
  };
  for (const flag of ['trade_updates', 'portfolio']) {
    if (change[flag]) next[flag] = add;
  }
  for (const list of ['orderbooks', 'trades', 'quotes']) {
    for (const symbol of change[list] ?? []) {
      if (add) next[list].add(symbol);
      else next[list].delete(symbol);
    }
  }
  return {
    trade_updates: next.trade_updates,
    portfolio: next.portfolio,
    orderbooks: [...next.orderbooks],
    trades: [...next.trades],
    quotes: [...next.quotes],
  };
}

/** An order-level or stream-level error from the server, with the field it is about. */
export class TradingError extends Error {
  constructor(payload) {
    super(payload?.msg ?? payload?.message ?? 'request failed');
    this.name = 'TradingError';
    this.code = payload?.code ?? null;
    this.field = errorField(payload);
    this.payload = payload;
  }
}

/**
 * Events (`CustomEvent`, payload in `detail`):
 * - `state`: `{state}`: `disconnected`, `connecting`, `live`, `reconnecting`, `closed`.
 * - `authenticated`, `subscription` (the server's full set), `order_ack`, `trade_update`,
 *   `portfolio`: the wire objects. `trade_update`s come once each, in `seq` order, including
 *   those replayed after a reconnect.
 * - `trade_updates_reset`: the server could not replay (`reason` `too_old` or `ahead`);
 *   `orders`, `positions`, `account` are the state to rebuild from.
 * - `trade_updates_live`: `{since, seq, replayed}` after each (re)subscription.
 * - `trade_updates_gap`: `{expected, got}` when an update was skipped; a replay was requested.
 * - `token`: `{expires_in}` after the token was refreshed (and sent to the open session).
 * - `book`: `{symbol, book}` with an up-to-date `OrderBook` after every applied message.
 * - `resync`: `{symbol, expected, got}` when a gap was seen and a resync was requested.
 * - `error`: stream-level errors (`{T:"error", code, msg}`) and request errors nobody awaited.
 * - `auth_required`: the token was refused; log in again.
 * - `trade`, `quote`, `bar`, `news`: market data on this socket, as on SSE.
 */
export class TradingClient extends EventTarget {
  constructor(options = {}) {
    super();
    this.base = String(options.base ?? '').replace(/\/$/, '');
    this.WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
    this.fetchImpl = options.fetch ?? globalThis.fetch?.bind(globalThis);
    this.backoff = options.backoff ?? new Backoff();
    this.setTimer = options.setTimeout ?? ((fn, ms) => setTimeout(fn, ms));
    this.clearTimer = options.clearTimeout ?? ((id) => clearTimeout(id));
    this.requestTimeoutMs = options.requestTimeoutMs ?? 10000;
    this.location = options.location ?? globalThis.location;
    this.token = options.token ?? null;
    this.state = 'disconnected';
    this.socket = null;
    this.wanted = mergeSubscription({}, {}, true);
    // `max_rate` for order books (docs/websocket.md "Throttled subscriptions"): the server
    // then sends merged deltas at most this often per book. Null: every delta.
    this.bookMaxRate = Number.isInteger(options.bookMaxRate) ? options.bookMaxRate : null;
    this.books = new Map();
    this.pending = new Map();
    this.nextId = 1;
    this.timer = null;
    this.stopped = true;
    this.authenticated = false;
    // The last trade update `seq` passed on (null: none yet). Survives reconnects.
    this.lastSeq = Number.isInteger(options.lastSeq) ? options.lastSeq : null;
    this.resuming = false;
    this.tokenProvider = options.tokenProvider ?? null;
    this.refreshTimer = null;
    this.tokenExpiresAt = null;
    this.now = options.now ?? (() => Date.now());
    if (Number.isFinite(options.expiresIn)) this.setTokenLifetime(options.expiresIn);
  }

  /** Logs in with the built-in issuer; keeps the token in memory only. */
  async login(username, password) {
    const response = await this.fetchImpl(`${this.base}/v1/auth/token`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ username, password }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok || !body.access_token) {
      throw new TradingError({ code: body.code ?? response.status, message: body.message ?? 'login failed' });
    }
    this.token = body.access_token;
    this.setTokenLifetime(body.expires_in);
    return body;
  }

  /**
   * Schedules the token refresh: a fifth of the lifetime before expiry, at most a minute
   * before (a 3 s token is refreshed after 2.4 s, a one-hour token after 59 minutes).
   */
  setTokenLifetime(expiresInSeconds) {
    if (this.refreshTimer !== null) this.clearTimer(this.refreshTimer);
    this.refreshTimer = null;
    if (!Number.isFinite(expiresInSeconds) || expiresInSeconds <= 0) return;
    const lifetimeMs = expiresInSeconds * 1000;
    this.tokenExpiresAt = this.now() + lifetimeMs;
    const leadMs = Math.min(60000, lifetimeMs / 5);
    this.refreshTimer = this.setTimer(() => {
      this.refreshTimer = null;
      this.refreshToken().catch(() => {});
    }, lifetimeMs - leadMs);
  }

  /**
   * Fetches a fresh token and, when a session is open, sends it in place. Resolves with the
   * token response; on failure retries a few times while the old token is still valid, then
   * fires `auth_required` (the server will close the session at expiry).
   */
  async refreshToken() {
    let body;
    try {
      if (this.tokenProvider) {
        body = await this.tokenProvider(this.token);
      } else {
        const response = await this.fetchImpl(`${this.base}/v1/auth/refresh`, {
          method: 'POST',
          headers: { Authorization: `Bearer ${this.token}` },
        });
        body = await response.json().catch(() => ({}));
        if (!response.ok) {
          const error = new TradingError({ code: body.code ?? response.status, message: body.message ?? 'refresh refused' });
          error.status = response.status;
          throw error;
        }
      }
      if (!body?.access_token) throw new TradingError({ code: 500, message: 'no token in the refresh answer' });
    } catch (error) {
      const left = (this.tokenExpiresAt ?? 0) - this.now();
      if (error.status === 401 || error.status === 403 || left <= 1000) {
        this.emit('auth_required', { code: error.code, msg: error.message });
      } else {
        this.refreshTimer = this.setTimer(() => {
          this.refreshTimer = null;
          this.refreshToken().catch(() => {});
        }, Math.min(5000, left / 2));
      }
      throw error;
    }
    this.token = body.access_token;
    this.setTokenLifetime(body.expires_in);
    if (this.authenticated) this.send({ action: 'auth', token: this.token });
    this.emit('token', { expires_in: body.expires_in });
    return body;
  }

  /** Trades the token for a single-use ticket. */
  async ticket() {
    const response = await this.fetchImpl(`${this.base}/v1/auth/ticket`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${this.token}` },
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok || !body.ticket) {
      const error = new TradingError({ code: body.code ?? response.status, message: body.message ?? 'ticket refused' });
      error.status = response.status;
      throw error;
    }
    return body.ticket;
  }

  /** The WebSocket URL of the gateway (ws: or wss: matching the page or base). */
  streamUrl() {
    const origin = this.base || this.location?.origin || '';
    return `${origin.replace(/^http/, 'ws')}/v1/stream`;
  }

  /** Connects (and keeps reconnecting until `close()`). Needs a token. */
  connect() {
    if (!this.token) throw new Error('log in first (no token)');
    if (!this.stopped) return this;
    this.stopped = false;
    this.open();
    return this;
  }

  /** Closes for good; pending requests are rejected. */
  close() {
    this.stopped = true;
    if (this.timer !== null) this.clearTimer(this.timer);
    this.timer = null;
    if (this.refreshTimer !== null) this.clearTimer(this.refreshTimer);
    this.refreshTimer = null;
    const socket = this.socket;
    this.socket = null;
    if (socket) {
      socket.onclose = null;
      socket.close(1000, 'client closed');
    }
    this.failPending('connection closed');
    this.authenticated = false;
    this.setState('closed');
  }

  /** Forgets the token and closes. */
  logout() {
    this.close();
    this.token = null;
  }

  async open() {
    this.setState(this.state === 'disconnected' || this.state === 'closed' ? 'connecting' : 'reconnecting');
    let ticket;
    try {
      ticket = await this.ticket();
    } catch (error) {
      if (this.stopped) return;
      if (error.status === 401 || error.status === 403) {
        this.emit('auth_required', { code: error.code, msg: error.message });
        this.close();
        return;
      }
      this.scheduleReconnect();
      return;
    }
    if (this.stopped) return;
    const socket = new this.WebSocketImpl(this.streamUrl());
    this.socket = socket;
    socket.onopen = () => {
      if (socket !== this.socket) return;
      socket.send(JSON.stringify({ action: 'auth', token: ticket }));
    };
    socket.onmessage = (event) => {
      if (socket !== this.socket) return;
      this.onFrame(event.data);
    };
    socket.onclose = () => {
      if (socket !== this.socket) return;
      this.socket = null;
      this.authenticated = false;
      this.resuming = false;
      this.failPending('connection lost');
      for (const book of this.books.values()) book.stale = true;
      if (!this.stopped) this.scheduleReconnect();
    };
    socket.onerror = () => {};
  }

  scheduleReconnect() {
    this.setState('reconnecting');
    const delay = this.backoff.next();
    this.timer = this.setTimer(() => {
      this.timer = null;
      if (!this.stopped) this.open();
    }, delay);
  }

  onFrame(text) {
    let messages;
    try {
      messages = JSON.parse(text);
    } catch {
      return;
    }
    for (const message of Array.isArray(messages) ? messages : [messages]) {
      this.onMessage(message);
    }
  }

  onMessage(message) {
    if (!message || typeof message !== 'object') return;
    const request = typeof message.id === 'string' ? this.pending.get(message.id) : undefined;
    switch (message.T) {
      case 'success':
        if (message.msg === 'authenticated') {
          this.authenticated = true;
          this.backoff.reset();
          this.setState('live');
          this.emit('authenticated', message);
          this.sendSubscription();
        }
        break;
      case 'error':
        if (request) {
          this.settle(message.id, null, new TradingError(message));
        } else {
          this.emit('error', message);
          // 402 means the ticket was refused; a fresh one comes with the next attempt.
        }
        return;
      case 'subscription':
        this.emit('subscription', message);
        break;
      case 'order_ack':
        this.emit('order_ack', message);
        break;
      case 'trade_update':
        this.onTradeUpdate(message);
        break;
      case 'trade_updates_reset':
        // The server could not replay what was missed: this is the state to start over from.
        this.lastSeq = message.seq;
        this.resuming = false;
        this.emit('trade_updates_reset', message);
        break;
      case 'trade_updates_live':
        // Everything up to `seq` was sent (or was in the reset); live updates follow.
        if (this.lastSeq === null || this.lastSeq < message.seq) this.lastSeq = message.seq;
        this.resuming = false;
        this.emit('trade_updates_live', message);
        break;
      case 'portfolio':
        this.emit('portfolio', message);
        break;
      case 'o':
        this.onBook(message);
        break;
      case 't':
        this.emit('trade', message);
        break;
      case 'q':
        this.emit('quote', message);
        break;
      case 'b':
        this.emit('bar', message);
        break;
      case 'n':
        this.emit('news', message);
        break;
      default:
        this.emit('message', message);
    }
    if (request) this.settle(message.id, message, null);
  }

  /** Passes each update on once, in `seq` order; a gap asks the server to replay it. */
  onTradeUpdate(message) {
    const seq = message.seq;
    if (Number.isInteger(seq) && this.lastSeq !== null) {
      if (seq <= this.lastSeq) return;
      if (seq > this.lastSeq + 1) {
        if (!this.resuming) {
          this.resuming = true;
          this.send({ action: 'subscribe', trade_updates: { since: this.lastSeq } });
          this.emit('trade_updates_gap', { expected: this.lastSeq + 1, got: seq });
        }
        return;
      }
    }
    if (Number.isInteger(seq)) this.lastSeq = seq;
    this.emit('trade_update', message);
  }

  onBook(message) {
    const symbol = message.S;
    let book = this.books.get(symbol);
    if (!book) {
      book = new OrderBook(symbol);
      this.books.set(symbol, book);
    }
    const result = book.apply(message);
    if (result.gap) {
      this.send({ action: 'resync', orderbooks: [symbol] });
      this.emit('resync', { symbol, expected: result.expected, got: result.got });
      return;
    }
    if (result.applied) this.emit('book', { symbol, book });
  }

  /** Adds to the subscription set (kept across reconnects). */
  subscribe(change) {
    this.wanted = mergeSubscription(this.wanted, change, true);
    const parts = pick(change);
    if (this.authenticated) this.sendSubscribe(parts);
  }

  /** Sends a subscribe; order books go in a message of their own when they have a rate, since
   * a `max_rate` applies to every kind of channel its message names. */
  sendSubscribe(parts) {
    const { orderbooks, ...rest } = parts;
    if (orderbooks && this.bookMaxRate !== null) {
      this.send({ action: 'subscribe', orderbooks, max_rate: this.bookMaxRate });
      if (Object.keys(rest).length > 0) this.send({ action: 'subscribe', ...rest });
      return;
    }
    if (Object.keys(parts).length > 0) this.send({ action: 'subscribe', ...parts });
  }

  /** Removes from the subscription set. */
  unsubscribe(change) {
    this.wanted = mergeSubscription(this.wanted, change, false);
    for (const symbol of change.orderbooks ?? []) this.books.delete(symbol);
    const parts = pick(change);
    if (this.authenticated && Object.keys(parts).length > 0) this.send({ action: 'unsubscribe', ...parts });
  }

  sendSubscription() {
    const set = pick(this.wanted);
    if (set.trade_updates && this.lastSeq !== null) set.trade_updates = { since: this.lastSeq };
    this.sendSubscribe(set);
  }

  /** Submits an order; resolves with the `order_ack` message, rejects with a TradingError. */
  placeOrder(data) {
    return this.request({ action: 'order', data });
  }

  /** Cancels by order id (or `{client_order_id}`). */
  cancelOrder(ref) {
    const target = typeof ref === 'string' ? { order_id: ref } : ref;
    return this.request({ action: 'cancel', ...target });
  }

  /** Replaces an open order's qty, prices or time in force. */
  replaceOrder(orderId, data) {
    return this.request({ action: 'replace', order_id: orderId, data });
  }

  request(frame) {
    if (!this.authenticated) return Promise.reject(new TradingError({ code: 401, msg: 'not connected' }));
    const id = `c${this.nextId++}`;
    return new Promise((resolve, reject) => {
      const timer = this.setTimer(() => this.settle(id, null, new TradingError({ code: 504, msg: 'no reply in time' })), this.requestTimeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.send({ ...frame, id });
    });
  }

  settle(id, value, error) {
    const request = this.pending.get(id);
    if (!request) return;
    this.pending.delete(id);
    this.clearTimer(request.timer);
    if (error) request.reject(error);
    else request.resolve(value);
  }

  failPending(reason) {
    for (const id of [...this.pending.keys()]) {
      this.settle(id, null, new TradingError({ code: 499, msg: reason }));
    }
  }

  send(frame) {
    if (this.socket && this.socket.readyState === 1) {
      this.socket.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.emit('state', { state });
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/** Only the non-empty parts of a subscription description, as the wire expects. */
function pick(set) {
  const out = {};
  if (set.trade_updates) out.trade_updates = true;
  if (set.portfolio) out.portfolio = true;
  for (const list of ['orderbooks', 'trades', 'quotes']) {
    if (set[list]?.length) out[list] = [...set[list]];
  }
  return out;
}
