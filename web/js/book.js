// A Level 2 order book fed by snapshots and deltas (PROTOCOL.md §3), with `seq` gap detection.
//
// Deltas carry absolute sizes ("0" removes a level) and `seq` rises by exactly one per symbol
// per connection. A delta whose seq is not last+1 means something was lost: the book is marked
// stale and the caller asks the server to resync; deltas are ignored until the next snapshot.
// Prices and sizes stay the decimal strings the server sent (never re-formatted through
// floats); numbers are only used to sort.

export class OrderBook {
  constructor(symbol) {
    this.symbol = symbol;
    this.bids = new Map();
    this.asks = new Map();
    this.seq = null;
    this.stale = true;
    this.time = null;
  }

  /**
   * Applies one `{"T":"o",...}` message. Returns `{applied:true}`, or
   * `{applied:false, gap:true, expected, got}` when a delta does not follow the last seq, or
   * `{applied:false, gap:false}` for a delta ignored while waiting for a snapshot.
   */
  apply(message) {
    const seq = Number(message.seq);
    if (message.snapshot) {
      this.bids = levelsToMap(message.b);
      this.asks = levelsToMap(message.a);
      this.seq = seq;
      this.stale = false;
      this.time = message.t ?? null;
      return { applied: true };
    }
    if (this.stale) return { applied: false, gap: false };
    if (seq !== this.seq + 1) {
      const expected = this.seq + 1;
      this.stale = true;
      return { applied: false, gap: true, expected, got: seq };
    }
    applyLevels(this.bids, message.b);
    applyLevels(this.asks, message.a);
    this.seq = seq;
    this.time = message.t ?? this.time;
    return { applied: true };
  }

  /** Bids best (highest) first, as `[price, size]` string pairs. */
  bidLevels(depth = Infinity) {
    return sorted(this.bids, (a, b) => b - a).slice(0, depth);
  }

  /** Asks best (lowest) first. */
  askLevels(depth = Infinity) {
    return sorted(this.asks, (a, b) => a - b).slice(0, depth);
  }
}

function levelsToMap(levels) {
  const map = new Map();
  applyLevels(map, levels);
  return map;
}

// "126.50" and "126.5" are the same level: key by the canonical text, keep the sent text.
export function canonicalDecimal(text) {
  let s = String(text).trim();
  if (s.includes('.')) s = s.replace(/0+$/, '').replace(/\.$/, '');
  s = s.replace(/^(-?)0+(?=\d)/, '$1');
  return s === '-0' ? '0' : s;
}

function applyLevels(map, levels) {
  for (const [price, size] of levels ?? []) {
    const key = canonicalDecimal(price);
    if (Number(size) === 0) map.delete(key);
    else map.set(key, [String(price), String(size)]);
  }
}

function sorted(map, compare) {
  return [...map.values()].sort((x, y) => compare(Number(x[0]), Number(y[0])));
}
