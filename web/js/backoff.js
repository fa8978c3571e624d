// Reconnect delays: exponential backoff with jitter, 1 s doubling to a 30 s cap.
//
// The delay for attempt n (0-based) is drawn uniformly from [cap/2, cap] where
// cap = min(maxMs, baseMs * 2^n) ("equal jitter"). Half the window is kept so a client never
// hammers a server that just came back, and the random half spreads a crowd of clients that
// all lost the same server at the same moment.

export const DEFAULT_BASE_MS = 1000;
export const DEFAULT_MAX_MS = 30000;

/** The cap for attempt `attempt` (0-based): base doubled per attempt, never above max. */
export function backoffCap(attempt, { baseMs = DEFAULT_BASE_MS, maxMs = DEFAULT_MAX_MS } = {}) {
  const n = Math.max(0, Math.floor(attempt));
  // 2^n overflows to Infinity for large n, which Math.min handles.
  return Math.min(maxMs, baseMs * 2 ** n);
}

/** One jittered delay in milliseconds for attempt `attempt`. */
export function backoffDelay(attempt, { baseMs = DEFAULT_BASE_MS, maxMs = DEFAULT_MAX_MS, random = Math.random } = {}) {
  const cap = backoffCap(attempt, { baseMs, maxMs });
  const r = Math.min(1, Math.max(0, random()));
  return Math.round(cap / 2 + r * (cap / 2));
}

/** Stateful helper: `next()` gives the next delay, `reset()` after a connection succeeds. */
export class Backoff {
  constructor({ baseMs = DEFAULT_BASE_MS, maxMs = DEFAULT_MAX_MS, random = Math.random } = {}) {
    this.baseMs = baseMs;
    this.maxMs = maxMs;
    this.random = random;
    this.attempt = 0;
  }

  next() {
    const delay = backoffDelay(this.attempt, this);
    this.attempt += 1;
    return delay;
  }

  reset() {
    this.attempt = 0;
  }
}
