// Test doubles for EventSource, WebSocket, fetch and timers: just enough of each interface
// for the clients, driven by hand so tests run without a network or real time.

export class FakeEventSource {
  static instances = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.listeners = new Map();
    this.closed = false;
    FakeEventSource.instances.push(this);
  }
  addEventListener(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, []);
    this.listeners.get(type).push(fn);
  }
  close() {
    this.closed = true;
    this.readyState = 2;
  }
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }
  /** A server event: `event:` name, JSON data, `id:`. */
  deliver(type, data, id = '') {
    const event = { type, data: JSON.stringify(data), lastEventId: id };
    for (const fn of this.listeners.get(type) ?? []) fn(event);
    if (type === 'error') this.onerror?.(event);
  }
  /** A connection failure; `closed` means the browser gave up. */
  fail(closed = false) {
    this.readyState = closed ? 2 : 0;
    this.onerror?.({ type: 'error' });
  }
}

export class FakeWebSocket {
  static instances = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    FakeWebSocket.instances.push(this);
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close() {
    this.readyState = 3;
  }
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }
  receive(...messages) {
    this.onmessage?.({ data: JSON.stringify(messages) });
  }
  drop() {
    this.readyState = 3;
    this.onclose?.({ code: 1006 });
  }
}

export class ManualTimers {
  constructor() {
    this.queue = [];
    this.nextId = 1;
    this.setTimeout = (fn, ms) => {
      const id = this.nextId++;
      this.queue.push({ id, fn, ms });
      return id;
    };
    this.clearTimeout = (id) => {
      this.queue = this.queue.filter((t) => t.id !== id);
    };
  }
  delays() {
    return this.queue.map((t) => t.ms);
  }
  /** Runs the oldest pending timer. */
  runNext() {
    const timer = this.queue.shift();
    timer?.fn();
    return timer;
  }
}

export function jsonResponse(status, body) {
  return { ok: status >= 200 && status < 300, status, statusText: String(status), json: async () => body, text: async () => JSON.stringify(body) };
}

/** Lets pending promise callbacks run. */
export const settle = () => new Promise((resolve) => setImmediate(resolve));
