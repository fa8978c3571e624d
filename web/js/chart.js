// PriceChart: one candlestick chart per symbol, drawn with lightweight-charts. The first paint
// comes from `GET /v1/bars`; after that, bar events replace their minute's candle and trades
// fold into the current minute, so the chart moves with every print.
//
// The library is loaded lazily from the gateway (`/vendor/lightweight-charts.mjs`, served
// from the npm install), so a missing install degrades to a message instead of breaking the
// whole dashboard.

import { barToCandle, foldTrade } from './format.js';

let libraryPromise = null;

function loadLibrary(base) {
  libraryPromise ??= import(`${base}/vendor/lightweight-charts.mjs`);
  return libraryPromise;
}

function themeColors(element) {
  const style = getComputedStyle(element);
  const read = (name, fallback) => style.getPropertyValue(name).trim() || fallback;
  return {
    text: read('--fg', '#222'),
    grid: read('--grid', '#e5e5e5'),
    up: read('--up', '#16a34a'),
    down: read('--down', '#dc2626'),
    background: read('--panel', '#fff'),
  };
}

export class PriceChart {
  constructor(container, symbol, { base = '' } = {}) {
    this.container = container;
    this.symbol = symbol;
    this.base = base;
    this.chart = null;
    this.series = null;
    this.last = null;
    this.points = 0;
    this.pending = [];
    this.disposed = false;
    this.ready = this.init();
  }

  async init() {
    let library;
    try {
      library = await loadLibrary(this.base);
    } catch {
      this.container.textContent = 'Chart library unavailable (run scripts/setup to install it).';
      return;
    }
    if (this.disposed) return;
    const { createChart, CandlestickSeries } = library;
    const colors = themeColors(this.container);
    this.chart = createChart(this.container, {
      autoSize: true,
      layout: { background: { color: 'transparent' }, textColor: colors.text, attributionLogo: true },
      grid: { vertLines: { color: colors.grid }, horzLines: { color: colors.grid } },
      timeScale: { timeVisible: true, secondsVisible: false },
      rightPriceScale: { borderVisible: false },
    });
    this.series = this.chart.addSeries(CandlestickSeries, {
      upColor: colors.up,
      downColor: colors.down,
      borderVisible: false,
      wickUpColor: colors.up,
      wickDownColor: colors.down,
    });
    await this.loadHistory();
    for (const apply of this.pending.splice(0)) apply();
  }

  async loadHistory() {
    try {
      const response = await fetch(`${this.base}/v1/bars?symbol=${encodeURIComponent(this.symbol)}&limit=500`);
      if (!response.ok) return;
      const body = await response.json();
      const candles = (body.bars ?? []).map(barToCandle).filter(Boolean);
      // The chart needs strictly rising times; keep the last candle of any repeated minute.
      const byTime = new Map(candles.map((c) => [c.time, c]));
      const sorted = [...byTime.values()].sort((a, b) => a.time - b.time);
      if (this.disposed || !this.series) return;
      this.series.setData(sorted);
      this.last = sorted.at(-1) ?? null;
      this.points = sorted.length;
      this.publishState();
    } catch {
      // History is a nicety: live updates still draw the chart.
    }
  }

  /** Draws a trade (`{p, t}`) into its minute's candle. */
  addTrade(trade) {
    this.whenReady(() => this.put(foldTrade(this.last, trade)));
  }

  /** Replaces a minute with a bar from the feed. */
  addBar(bar) {
    this.whenReady(() => {
      const candle = barToCandle(bar);
      if (!candle || (this.last && candle.time < this.last.time)) return;
      this.put(candle);
    });
  }

  whenReady(apply) {
    if (this.series) apply();
    else if (!this.disposed) this.pending.push(apply);
  }

  put(candle) {
    if (!candle || !this.series) return;
    if (!this.last || candle.time > this.last.time) this.points += 1;
    this.series.update(candle);
    this.last = candle;
    this.publishState();
  }

  /** Mirrors the newest point into data attributes (for tests and assistive tooling). */
  publishState() {
    this.container.dataset.points = String(this.points);
    if (this.last) this.container.dataset.lastClose = String(this.last.close);
  }

  /** Recolours after a theme switch. */
  applyTheme() {
    if (!this.chart) return;
    const colors = themeColors(this.container);
    this.chart.applyOptions({ layout: { textColor: colors.text }, grid: { vertLines: { color: colors.grid }, horzLines: { color: colors.grid } } });
  }

  dispose() {
    this.disposed = true;
    this.chart?.remove();
    this.chart = null;
    this.series = null;
  }
}
