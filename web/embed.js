// Embeddable feeds: `<tickgate-ticker symbols="AAPL,MSFT">` and `<tickgate-news symbols="AAPL">`
// as web components, loaded from the gateway with one module script tag:
//
//   <script type="module" src="https://gateway.example/embed.js"></script>
//
// The components talk to the gateway this file came from (or the `gateway` attribute), over
// the public SSE feeds. Both the module and the feeds are fetched with CORS, so they work on
// pages whose origin is in the gateway's `server.allowed_origins` and nowhere else.
// Styling: CSS custom properties (--tickgate-up, --tickgate-down, --tickgate-font, ...) and
// `::part()` (card, symbol, price, item, headline, meta).

import { FeedClient, marketUrl, newsUrl } from './js/sse.js';
import { formatClock, formatPrice, priceDirection } from './js/format.js';

const GATEWAY = new URL('.', import.meta.url).href.replace(/\/$/, '');

function gatewayOf(element) {
  return (element.getAttribute('gateway') || GATEWAY).replace(/\/$/, '');
}

function symbolsOf(element) {
  return (element.getAttribute('symbols') || '')
    .split(',')
    .map((s) => s.trim().toUpperCase())
    .filter(Boolean);
}

const BASE_STYLE = `
  :host { display: block; font-family: var(--tickgate-font, system-ui, sans-serif); color: var(--tickgate-fg, inherit); }
  .state { font-size: .75em; opacity: .7; }
  .state[data-state="live"] { display: none; }
`;

class TickgateTicker extends HTMLElement {
  static observedAttributes = ['symbols', 'gateway', 'max-rate'];

  constructor() {
    super();
    this.attachShadow({ mode: 'open' });
    this.prices = new Map();
    this.feed = null;
  }

  connectedCallback() {
    this.feed?.close();
    this.prices.clear();
    this.render();
    this.start();
  }

  disconnectedCallback() {
    this.feed?.close();
    this.feed = null;
  }

  // Upgrades call this for the initial attributes before connectedCallback: only a real
  // change on a running element restarts the feed.
  attributeChangedCallback(name, oldValue, newValue) {
    if (!this.feed || oldValue === newValue) return;
    this.disconnectedCallback();
    this.connectedCallback();
  }

  render() {
    const symbols = symbolsOf(this);
    this.shadowRoot.innerHTML = `<style>${BASE_STYLE}
      .row { display: flex; flex-wrap: wrap; gap: var(--tickgate-gap, .5em); }
      .card { display: inline-flex; gap: .4em; align-items: baseline; padding: .3em .6em; border-radius: 6px;
              border: 1px solid var(--tickgate-border, #8884); background: var(--tickgate-bg, transparent); }
      .symbol { font-weight: 700; }
      .price { font-variant-numeric: tabular-nums; }
      .card.up .price { color: var(--tickgate-up, #13803d); }
      .card.down .price { color: var(--tickgate-down, #c42323); }
    </style><div class="row" role="list" aria-label="Live prices"></div><span class="state" data-state="connecting">connecting…</span>`;
    const row = this.shadowRoot.querySelector('.row');
    this.cards = new Map();
    for (const symbol of symbols) {
      const card = document.createElement('span');
      card.className = 'card';
      card.setAttribute('part', 'card');
      card.setAttribute('role', 'listitem');
      card.dataset.symbol = symbol;
      const name = document.createElement('span');
      name.className = 'symbol';
      name.setAttribute('part', 'symbol');
      name.textContent = symbol;
      const price = document.createElement('span');
      price.className = 'price';
      price.setAttribute('part', 'price');
      price.textContent = '—';
      card.append(name, price);
      row.append(card);
      this.cards.set(symbol, { card, price });
    }
  }

  start() {
    const symbols = symbolsOf(this);
    if (symbols.length === 0) return;
    // `max-rate`: the newest price per symbol at most that often a second (server-side
    // `max_rate`); absent or not a whole number from 1 to 1000: every trade.
    const rate = Number(this.getAttribute('max-rate'));
    const maxRate = Number.isInteger(rate) && rate >= 1 && rate <= 1000 ? rate : undefined;
    const feed = new FeedClient(marketUrl(gatewayOf(this), { symbols, types: 'trades', maxRate }));
    feed.addEventListener('snapshot', (e) => {
      for (const trade of e.detail.trades ?? []) this.update(trade);
    });
    feed.addEventListener('trade', (e) => this.update(e.detail));
    feed.addEventListener('state', (e) => {
      const node = this.shadowRoot.querySelector('.state');
      node.dataset.state = e.detail.connection;
      node.textContent = e.detail.connection === 'live' ? '' : `${e.detail.connection}…`;
    });
    feed.addEventListener('error', (e) => {
      const node = this.shadowRoot.querySelector('.state');
      node.dataset.state = 'error';
      node.textContent = e.detail.message ?? e.detail.msg ?? 'feed error';
    });
    this.feed = feed.start();
  }

  update(trade) {
    const entry = this.cards.get(trade.S);
    if (!entry) return;
    const direction = priceDirection(this.prices.get(trade.S), trade.p);
    this.prices.set(trade.S, Number(trade.p));
    entry.price.textContent = formatPrice(trade.p);
    entry.card.classList.toggle('up', direction === 'up');
    entry.card.classList.toggle('down', direction === 'down');
    entry.card.setAttribute('aria-label', `${trade.S} ${entry.price.textContent}${direction === 'up' || direction === 'down' ? `, ${direction}` : ''}`);
    this.dispatchEvent(new CustomEvent('tickgate-trade', { detail: trade }));
  }
}

class TickgateNews extends HTMLElement {
  static observedAttributes = ['symbols', 'gateway', 'limit'];

  constructor() {
    super();
    this.attachShadow({ mode: 'open' });
    this.feed = null;
    this.items = new Map();
  }

  get limit() {
    const n = Number(this.getAttribute('limit'));
    return Number.isInteger(n) && n > 0 ? n : 10;
  }

  connectedCallback() {
    this.feed?.close();
    this.shadowRoot.innerHTML = `<style>${BASE_STYLE}
      ol { list-style: none; margin: 0; padding: 0; display: grid; gap: .5em; }
      .headline { font-weight: 600; }
      .headline a { color: var(--tickgate-link, inherit); }
      .meta { font-size: .8em; opacity: .75; }
    </style><ol aria-live="polite" aria-label="Market news"></ol><span class="state" data-state="connecting">connecting…</span>`;
    this.items.clear();
    const symbols = symbolsOf(this);
    const feed = new FeedClient(newsUrl(gatewayOf(this), { symbols: symbols.length ? symbols : undefined }), { recent: true });
    feed.addEventListener('snapshot', (e) => {
      for (const item of e.detail.news ?? []) this.add(item);
    });
    feed.addEventListener('news', (e) => this.add(e.detail));
    feed.addEventListener('state', (e) => {
      const node = this.shadowRoot.querySelector('.state');
      node.dataset.state = e.detail.connection;
      node.textContent = e.detail.connection === 'live' ? '' : `${e.detail.connection}…`;
    });
    this.feed = feed.start();
  }

  disconnectedCallback() {
    this.feed?.close();
    this.feed = null;
  }

  // Upgrades call this for the initial attributes before connectedCallback: only a real
  // change on a running element restarts the feed.
  attributeChangedCallback(name, oldValue, newValue) {
    if (!this.feed || oldValue === newValue) return;
    this.disconnectedCallback();
    this.connectedCallback();
  }

  add(item) {
    if (!item || item.id === undefined || this.items.has(item.id)) return;
    const li = document.createElement('li');
    li.setAttribute('part', 'item');
    li.dataset.newsId = String(item.id);
    const headline = document.createElement('div');
    headline.className = 'headline';
    headline.setAttribute('part', 'headline');
    if (item.url && /^https?:\/\//i.test(item.url)) {
      const link = document.createElement('a');
      link.href = item.url;
      link.target = '_blank';
      link.rel = 'noopener noreferrer';
      link.textContent = item.headline;
      headline.append(link);
    } else {
      headline.textContent = item.headline;
    }
    const meta = document.createElement('div');
    meta.className = 'meta';
    meta.setAttribute('part', 'meta');
    meta.textContent = [(item.symbols ?? []).join(' '), item.source, formatClock(item.created_at)].filter(Boolean).join(' · ');
    li.append(headline, meta);
    const list = this.shadowRoot.querySelector('ol');
    list.prepend(li);
    this.items.set(item.id, li);
    while (list.children.length > this.limit) {
      this.items.delete(Number(list.lastElementChild.dataset.newsId));
      list.lastElementChild.remove();
    }
  }
}

if (!customElements.get('tickgate-ticker')) customElements.define('tickgate-ticker', TickgateTicker);
if (!customElements.get('tickgate-news')) customElements.define('tickgate-news', TickgateNews);

export { TickgateNews, TickgateTicker };
