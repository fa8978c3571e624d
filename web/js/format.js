// Small pure helpers shared by the dashboard and the embeddable components.

/**
 * Direction of a price move against the previous price: `up`, `down`, `flat`, or `null` for
 * the first price (nothing to compare with, so no colour).
 */
export function priceDirection(previous, next) {
  if (previous === undefined || previous === null || !Number.isFinite(Number(previous))) return null;
  const a = Number(previous);
  const b = Number(next);
  if (b > a) return 'up';
  if (b < a) return 'down';
  return 'flat';
}

/** Formats a market-data price (a JSON number) with at least two decimals. */
export function formatPrice(value) {
  const n = Number(value);
  if (!Number.isFinite(n)) return '—';
  const decimals = Math.min(6, Math.max(2, (String(value).split('.')[1] ?? '').length));
  return n.toLocaleString('en-US', { minimumFractionDigits: decimals, maximumFractionDigits: decimals });
}

/** Formats a size or quantity without trailing noise. */
export function formatSize(value) {
  const n = Number(value);
  if (!Number.isFinite(n)) return '—';
  return n.toLocaleString('en-US', { maximumFractionDigits: 4 });
}

/** `HH:MM:SS` in the viewer's time zone for an RFC 3339 time; '' when it does not parse. */
export function formatClock(text) {
  const date = new Date(text);
  if (Number.isNaN(date.getTime())) return '';
  return date.toLocaleTimeString('en-GB', { hour12: false });
}

/** The sign of a decimal string or number: 1, -1 or 0 (for colouring P&L). */
export function signOf(value) {
  const n = Number(value);
  if (!Number.isFinite(n) || n === 0) return 0;
  return n > 0 ? 1 : -1;
}

/** UNIX seconds of the minute that contains `time` (an RFC 3339 string), or null. */
export function minuteBucket(time) {
  const ms = Date.parse(time);
  if (Number.isNaN(ms)) return null;
  return Math.floor(ms / 60000) * 60;
}

/**
 * Folds a trade into the candle of its minute. `last` is the newest candle the chart has
 * (`{time, open, high, low, close}` with `time` in UNIX seconds) or null. Returns the candle
 * to hand to `series.update`, or null when the trade is older than `last` (the chart only
 * accepts updates at or after its newest point).
 */
export function foldTrade(last, trade) {
  const time = minuteBucket(trade.t);
  const price = Number(trade.p);
  if (time === null || !Number.isFinite(price)) return null;
  if (last && time < last.time) return null;
  if (last && time === last.time) {
    return { time, open: last.open, high: Math.max(last.high, price), low: Math.min(last.low, price), close: price };
  }
  return { time, open: price, high: price, low: price, close: price };
}

/** A wire bar (`{o,h,l,c,t}`) as a chart candle. */
export function barToCandle(bar) {
  const time = minuteBucket(bar.t);
  if (time === null) return null;
  return { time, open: Number(bar.o), high: Number(bar.h), low: Number(bar.l), close: Number(bar.c) };
}

/**
 * Pads a decimal string to at least `minDecimals` decimals without going through a float
 * ("226.2" → "226.20", "0" → "0.00"); longer fractions are kept as sent. Non-decimals are
 * returned unchanged.
 */
export function padDecimal(text, minDecimals = 2) {
  if (text === null || text === undefined) return '';
  const s = String(text).trim();
  if (!/^-?\d+(\.\d+)?$/.test(s)) return s;
  const [whole, fraction = ''] = s.split('.');
  return `${whole}.${fraction.padEnd(minDecimals, '0')}`;
}
