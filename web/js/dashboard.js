// The dashboard at `/`: wires the public SSE feeds (tickers, charts, news, alerts) and, after
// login, the trading WebSocket (order ticket, open orders, fills, positions, Level 2 book)
// into the page. All text from the network goes into the DOM with textContent, never as HTML.

import { FeedClient, alertsUrl, marketUrl, newsUrl } from './sse.js';
import { TradingClient, TradingError } from './trading.js';
import { PriceChart } from './chart.js';
import { formatClock, formatPrice, formatSize, padDecimal, priceDirection, signOf } from './format.js';

const BASE = '';
const MAX_NEWS = 50;
const MAX_FILLS = 50;
const BOOK_DEPTH = 10;
// Throttles (server-side `max_rate`): the newest trade and quote of each symbol at most this
// often a second. A candle that forms from throttled trades can miss a print's extreme until
// the minute's bar (never throttled) replaces it.
const MARKET_MAX_RATE = 10;
// Merged order-book deltas at most this often a second.
const BOOK_MAX_RATE = 5;
const ALERT_MAX_AGE_MS = 15 * 60 * 1000;
const OPEN_STATUSES = new Set(['accepted', 'new', 'partially_filled', 'pending_cancel', 'pending_replace']);

const $ = (selector) => document.querySelector(selector);

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

const state = {
  symbols: [],
  prices: new Map(),
  cards: new Map(),
  primary: null,
  charts: new Map(),
  news: new Map(),
  orders: new Map(),
  fills: [],
  trading: null,
};

// ---- theme ------------------------------------------------------------------------------

function effectiveTheme() {
  const forced = document.documentElement.dataset.theme;
  if (forced) return forced;
  return matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light';
}

function renderThemeButton() {
  const button = $('#theme-toggle');
  const dark = effectiveTheme() === 'dark';
  button.setAttribute('aria-pressed', String(dark));
  button.textContent = dark ? 'Light theme' : 'Dark theme';
  button.setAttribute('aria-label', dark ? 'Switch to the light theme' : 'Switch to the dark theme');
}

function setupTheme() {
  $('#theme-toggle').addEventListener('click', () => {
    const next = effectiveTheme() === 'dark' ? 'light' : 'dark';
    document.documentElement.dataset.theme = next;
    try {
      localStorage.setItem('tickgate-theme', next);
    } catch {
      // Private mode: the choice lasts for this page only.
    }
    renderThemeButton();
    for (const chart of state.charts.values()) chart.applyTheme();
  });
  matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => {
    renderThemeButton();
    for (const chart of state.charts.values()) chart.applyTheme();
  });
  renderThemeButton();
}

// ---- tickers and charts -----------------------------------------------------------------

function buildCards(symbols) {
  const container = $('#tickers');
  container.replaceChildren();
  for (const symbol of symbols) {
    const price = el('span', { class: 'price', text: '—' });
    const arrow = el('span', { class: 'arrow', 'aria-hidden': 'true' });
    const quote = el('span', { class: 'quote', text: 'bid — · ask —' });
    const card = el(
      'button',
      { type: 'button', class: 'ticker', 'data-symbol': symbol, 'aria-pressed': 'false', role: 'listitem', onclick: (event) => select(symbol, event.shiftKey) },
      el('span', { class: 'sym', text: symbol }),
      el('span', {}, price, ' ', arrow),
      quote,
    );
    state.cards.set(symbol, { card, price, arrow, quote });
    container.append(card);
  }
  const select$ = $('#order-symbol');
  select$.replaceChildren(...symbols.map((s) => el('option', { value: s, text: s })));
}

function updateCardLabel(symbol) {
  const entry = state.cards.get(symbol);
  if (!entry) return;
  const direction = entry.card.dataset.direction;
  const price = entry.price.textContent;
  entry.card.setAttribute('aria-label', `${symbol} ${price}${direction && direction !== 'none' ? `, ${direction}` : ''}${entry.card.getAttribute('aria-pressed') === 'true' ? ', selected' : ''}`);
}

function setPrice(symbol, price) {
  const entry = state.cards.get(symbol);
  if (!entry) return;
  const direction = priceDirection(state.prices.get(symbol), price);
  state.prices.set(symbol, Number(price));
  entry.price.textContent = formatPrice(price);
  entry.card.classList.toggle('up', direction === 'up');
  entry.card.classList.toggle('down', direction === 'down');
  entry.card.dataset.direction = direction ?? 'none';
  entry.arrow.textContent = direction === 'up' ? '▲' : direction === 'down' ? '▼' : '';
  updateCardLabel(symbol);
}

function setQuote(quote) {
  const entry = state.cards.get(quote.S);
  if (!entry) return;
  entry.quote.textContent = `bid ${formatPrice(quote.bp)} · ask ${formatPrice(quote.ap)}`;
}

function select(symbol, addChart = false) {
  const previous = state.primary;
  state.primary = symbol;
  for (const [name, entry] of state.cards) {
    entry.card.setAttribute('aria-pressed', String(name === symbol));
    updateCardLabel(name);
  }
  if (!addChart) {
    for (const name of [...state.charts.keys()]) if (name !== symbol) removeChart(name);
  }
  addChartFor(symbol);
  $('#order-symbol').value = symbol;
  $('#book-symbol').textContent = symbol;
  if (state.trading && previous !== symbol) {
    if (previous) state.trading.unsubscribe({ orderbooks: [previous] });
    state.trading.subscribe({ orderbooks: [symbol] });
    renderBook(null);
  }
}

function addChartFor(symbol) {
  if (state.charts.has(symbol)) return;
  const box = el('div', { class: 'chart', 'data-symbol': symbol, role: 'img', 'aria-label': `${symbol} one-minute price chart` });
  const close = el('button', { type: 'button', class: 'ghost small', 'aria-label': `Close the ${symbol} chart`, text: '×', onclick: () => removeChart(symbol) });
  const card = el('figure', { class: 'chart-card', 'data-symbol': symbol }, el('figcaption', { class: 'chart-head' }, el('strong', { text: symbol }), close), box);
  card.style.margin = '0';
  $('#charts').append(card);
  state.charts.set(symbol, new PriceChart(box, symbol, { base: BASE }));
}

function removeChart(symbol) {
  const chart = state.charts.get(symbol);
  if (!chart || (state.charts.size === 1 && symbol === state.primary)) return;
  chart.dispose();
  state.charts.delete(symbol);
  document.querySelector(`.chart-card[data-symbol="${CSS.escape(symbol)}"]`)?.remove();
}

function onTrade(trade) {
  setPrice(trade.S, trade.p);
  state.charts.get(trade.S)?.addTrade(trade);
}

function onMarketSnapshot(snapshot) {
  for (const trade of snapshot.trades ?? []) onTrade(trade);
  for (const quote of snapshot.quotes ?? []) setQuote(quote);
  // A symbol halted before this page connected is shown halted too.
  for (const status of snapshot.statuses ?? []) onSymbolStatus(status);
}

function onSymbolStatus(status) {
  if (status.S === '*' || !state.cards.has(status.S)) return;
  const card = state.cards.get(status.S).card;
  if (status.sc === 'halted') card.dataset.status = 'halted';
  else if (status.sc === 'resumed') delete card.dataset.status;
}

function renderConnection({ connection, upstream }) {
  const pill = $('#conn-state');
  let label = connection;
  let key = connection;
  if (connection === 'live' && upstream === 'down') {
    label = 'upstream down';
    key = 'upstream-down';
  }
  pill.dataset.state = key;
  $('#conn-text').textContent = label;
}

// ---- news and alerts --------------------------------------------------------------------

function addNews(item, { live = true } = {}) {
  if (item === null || typeof item !== 'object' || item.id === undefined) return;
  const existing = state.news.get(item.id);
  const headline = item.url && /^https?:\/\//i.test(item.url)
    ? el('a', { href: item.url, target: '_blank', rel: 'noopener noreferrer', text: item.headline })
    : document.createTextNode(item.headline ?? '');
  const node = el(
    'li',
    { 'data-news-id': String(item.id) },
    el('div', { class: 'headline' }, headline),
    el('div', { class: 'meta' }, ...(item.symbols ?? []).map((s) => el('span', { class: 'tag', text: s })), `${item.source ? `${item.source} · ` : ''}${formatClock(item.created_at)}`),
    item.summary ? el('p', { class: 'summary', text: item.summary }) : null,
  );
  if (existing) {
    existing.replaceWith(node);
  } else {
    const list = $('#news');
    // Newest first by creation time; live items normally land on top.
    const created = Date.parse(item.created_at) || 0;
    node.dataset.created = String(created);
    const after = [...list.children].find((li) => Number(li.dataset.created) < created);
    list.insertBefore(node, after ?? null);
    while (list.children.length > MAX_NEWS) {
      const last = list.lastElementChild;
      state.news.delete(Number(last.dataset.newsId));
      state.news.delete(last.dataset.newsId);
      last.remove();
    }
  }
  node.dataset.created = String(Date.parse(item.created_at) || 0);
  state.news.set(item.id, node);
  $('#news-empty').hidden = state.news.size > 0;
  if (live) node.classList.add('fresh');
}

function showAlert(alert) {
  if (!alert || !alert.msg) return;
  const container = $('#alerts');
  if (container.querySelector(`[data-alert-id="${CSS.escape(String(alert.id))}"]`)) return;
  const node = el(
    'div',
    { class: 'alert', 'data-level': alert.level ?? 'info', 'data-alert-id': String(alert.id), role: alert.level === 'critical' ? 'alert' : 'status' },
    el('strong', { text: (alert.level ?? 'info').toUpperCase() }),
    el('span', { class: 'alert-msg', text: alert.msg }),
    el('button', { type: 'button', class: 'small', text: 'Dismiss', 'aria-label': `Dismiss alert: ${alert.msg}`, onclick: () => node.remove() }),
  );
  container.prepend(node);
  while (container.children.length > 3) container.lastElementChild.remove();
}

// ---- feeds ------------------------------------------------------------------------------

function startFeeds() {
  // A dashboard repaints a few times a second at most: ask for the newest value of each
  // symbol up to MARKET_MAX_RATE times a second instead of every trade (bars and statuses
  // always come whole).
  const market = new FeedClient(marketUrl(BASE, { symbols: '*', maxRate: MARKET_MAX_RATE }));
  market.addEventListener('snapshot', (e) => onMarketSnapshot(e.detail));
  market.addEventListener('trade', (e) => onTrade(e.detail));
  market.addEventListener('quote', (e) => setQuote(e.detail));
  market.addEventListener('bar', (e) => state.charts.get(e.detail.S)?.addBar(e.detail));
  market.addEventListener('status', (e) => onSymbolStatus(e.detail));
  market.addEventListener('state', (e) => renderConnection(e.detail));
  market.addEventListener('error', (e) => console.warn('market feed:', e.detail));
  market.start();

  const news = new FeedClient(newsUrl(BASE), { recent: true });
  news.addEventListener('snapshot', (e) => {
    for (const item of e.detail.news ?? []) addNews(item, { live: false });
  });
  news.addEventListener('news', (e) => addNews(e.detail));
  news.start();

  const alerts = new FeedClient(alertsUrl(BASE), { recent: true });
  alerts.addEventListener('snapshot', (e) => {
    const now = Date.now();
    for (const alert of e.detail.alerts ?? []) {
      if (now - Date.parse(alert.t) < ALERT_MAX_AGE_MS) showAlert(alert);
    }
  });
  alerts.addEventListener('alert', (e) => showAlert(e.detail));
  alerts.start();
  Object.assign(window, { tickgateFeeds: { market, news, alerts } });
}

// ---- trading ----------------------------------------------------------------------------

function showTradingPanels(visible) {
  for (const selector of ['.orders-panel', '.positions-panel', '.fills-panel', '#order-form', '#session', '#book']) {
    $(selector).hidden = !visible;
  }
  $('#login-form').hidden = visible;
  $('#book-note').hidden = visible;
  if (!visible) $('#book-note').textContent = 'Log in to see the Level 2 book.';
}

function setupLogin() {
  $('#login-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const error = $('#login-error');
    error.textContent = '';
    const username = $('#login-user').value.trim();
    const password = $('#login-password').value;
    const client = new TradingClient({ base: BASE, bookMaxRate: BOOK_MAX_RATE });
    try {
      await client.login(username, password);
    } catch (failure) {
      error.textContent = failure.message || 'Login failed';
      $('#login-password').focus();
      return;
    }
    $('#login-password').value = '';
    startTrading(client, username);
  });
  $('#logout').addEventListener('click', () => {
    state.trading?.logout();
    state.trading = null;
    state.orders.clear();
    state.fills = [];
    renderOrders();
    renderFills();
    renderPortfolio({ positions: [] });
    showTradingPanels(false);
    $('#login-user').focus();
  });
}

function startTrading(client, username) {
  state.trading = client;
  window.tickgateTrading = client;
  $('#session-user').textContent = `Signed in as ${username}`;
  showTradingPanels(true);
  client.addEventListener('state', (e) => {
    const node = $('#ws-state');
    node.dataset.state = e.detail.state;
    node.textContent = e.detail.state;
  });
  client.addEventListener('authenticated', () => loadOpenOrders(client));
  client.addEventListener('order_ack', (e) => upsertOrder(e.detail.order));
  // Updates missed while disconnected are replayed first, so fills from then show up too.
  client.addEventListener('trade_update', (e) => onTradeUpdate(e.detail));
  client.addEventListener('trade_updates_reset', (e) => onTradeUpdatesReset(e.detail));
  client.addEventListener('portfolio', (e) => renderPortfolio(e.detail));
  client.addEventListener('book', (e) => {
    if (e.detail.symbol === state.primary) renderBook(e.detail.book);
  });
  client.addEventListener('resync', (e) => {
    if (e.detail.symbol === state.primary) $('#book-symbol').textContent = `${e.detail.symbol} (resyncing)`;
  });
  client.addEventListener('auth_required', () => {
    showTradingPanels(false);
    $('#login-error').textContent = 'Your session expired; log in again.';
  });
  client.addEventListener('error', (e) => {
    $('#order-result').textContent = `Server: ${e.detail.msg ?? e.detail.message ?? 'error'} (${e.detail.code})`;
  });
  client.subscribe({ trade_updates: true, portfolio: true, orderbooks: state.primary ? [state.primary] : [] });
  client.connect();
  $('#order-qty').focus();
}

async function loadOpenOrders(client) {
  try {
    const response = await fetch(`${BASE}/v1/orders?status=open`, { headers: { Authorization: `Bearer ${client.token}` } });
    if (!response.ok) return;
    const body = await response.json();
    const orders = Array.isArray(body) ? body : body.orders ?? [];
    for (const order of orders) upsertOrder(order);
  } catch {
    // The live trade updates still fill the table.
  }
}

function upsertOrder(order) {
  if (!order || !order.id) return;
  const known = state.orders.get(order.id);
  if (known && Date.parse(known.updated_at) > Date.parse(order.updated_at)) return;
  state.orders.set(order.id, order);
  renderOrders();
}

function onTradeUpdate(update) {
  upsertOrder(update.order);
  if (update.event === 'fill' || update.event === 'partial_fill') {
    state.fills.unshift({ ...update, symbol: update.order.symbol, side: update.order.side });
    state.fills.length = Math.min(state.fills.length, MAX_FILLS);
    renderFills();
  }
}

/** The server could not replay what was missed: start over from the state it sent. */
function onTradeUpdatesReset(reset) {
  state.orders.clear();
  for (const order of reset.orders ?? []) upsertOrder(order);
  renderOrders();
  renderPortfolio({ ...(reset.account ?? {}), positions: reset.positions ?? [] });
  $('#order-result').textContent = 'Some order updates from while you were away are no longer kept; orders and positions are current, earlier fills may be missing.';
}

function cell(text, className) {
  return el('td', { class: className, text: text ?? '' });
}

function renderOrders() {
  const body = $('#open-orders tbody');
  const open = [...state.orders.values()].filter((o) => OPEN_STATUSES.has(o.status)).sort((a, b) => Date.parse(b.created_at) - Date.parse(a.created_at));
  body.replaceChildren(
    ...open.map((order) => {
      const description = `${order.side} ${order.qty} ${order.symbol} ${order.type}${order.limit_price ? ` at ${order.limit_price}` : ''}`;
      const cancel = el('button', {
        type: 'button',
        class: 'small ghost',
        text: 'Cancel',
        'aria-label': `Cancel ${description}`,
        onclick: async () => {
          cancel.disabled = true;
          try {
            await state.trading.cancelOrder(order.id);
          } catch (error) {
            cancel.disabled = false;
            $('#order-result').textContent = `Cancel failed: ${error.message}`;
          }
        },
      });
      return el(
        'tr',
        { 'data-order-id': order.id, 'data-status': order.status },
        cell(order.symbol),
        cell(order.side, order.side === 'buy' ? 'pos' : 'neg'),
        cell(order.type),
        cell(order.qty),
        cell(order.filled_qty),
        cell(padDecimal(order.limit_price ?? '')),
        cell(padDecimal(order.stop_price ?? '')),
        cell(order.time_in_force),
        cell(order.status),
        el('td', {}, cancel),
      );
    }),
  );
  $('#open-orders-empty').hidden = open.length > 0;
}

function renderFills() {
  const body = $('#fills tbody');
  body.replaceChildren(
    ...state.fills.map((fill) =>
      el('tr', { 'data-execution-id': fill.execution_id ?? '' }, cell(formatClock(fill.timestamp)), cell(fill.symbol), cell(fill.side, fill.side === 'buy' ? 'pos' : 'neg'), cell(fill.qty), cell(padDecimal(fill.price)), cell(fill.event)),
    ),
  );
  $('#fills-empty').hidden = state.fills.length > 0;
}

function plClass(value) {
  const sign = signOf(value);
  return sign > 0 ? 'pos' : sign < 0 ? 'neg' : undefined;
}

function renderPortfolio(portfolio) {
  const positions = portfolio.positions ?? [];
  $('#positions tbody').replaceChildren(
    ...positions.map((p) =>
      el(
        'tr',
        { 'data-symbol': p.symbol },
        cell(p.symbol),
        cell(p.qty),
        cell(padDecimal(p.avg_entry_price)),
        cell(padDecimal(p.current_price)),
        cell(padDecimal(p.market_value)),
        cell(padDecimal(p.unrealized_pl), plClass(p.unrealized_pl)),
        cell(p.unrealized_plpc === undefined ? '' : `${(Number(p.unrealized_plpc) * 100).toFixed(2)}%`, plClass(p.unrealized_plpc)),
      ),
    ),
  );
  $('#positions-empty').hidden = positions.length > 0;
  const account = $('#account');
  const rows = [
    ['Cash', portfolio.cash],
    ['Equity', portfolio.equity],
    ['Buying power', portfolio.buying_power],
    ['Realized P&L', portfolio.realized_pl],
  ].filter(([, v]) => v !== undefined);
  account.replaceChildren(...rows.flatMap(([name, value]) => [el('dt', { text: name }), el('dd', { text: padDecimal(value), class: name === 'Realized P&L' ? plClass(value) : undefined })]));
}

function renderBook(book) {
  const bids = book ? book.bidLevels(BOOK_DEPTH) : [];
  const asks = book ? book.askLevels(BOOK_DEPTH) : [];
  $('#book-bids').replaceChildren(...bids.map(([price, size]) => el('tr', {}, cell(formatSize(size)), cell(padDecimal(price)))));
  $('#book-asks').replaceChildren(...asks.map(([price, size]) => el('tr', {}, cell(padDecimal(price)), cell(formatSize(size)))));
  if (book) {
    $('#book').dataset.seq = String(book.seq);
    $('#book-symbol').textContent = book.symbol;
  }
}

// ---- order ticket -----------------------------------------------------------------------

function clearOrderErrors() {
  for (const node of document.querySelectorAll('#order-form .field-error')) node.textContent = '';
  for (const node of document.querySelectorAll('#order-form [aria-invalid]')) node.removeAttribute('aria-invalid');
}

function syncPriceFields() {
  const type = $('#order-type').value;
  for (const field of document.querySelectorAll('#order-form [data-for-types]')) {
    field.hidden = !field.dataset.forTypes.split(' ').includes(type);
  }
}

function setupOrderTicket() {
  $('#order-type').addEventListener('change', syncPriceFields);
  syncPriceFields();
  $('#order-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    if (!state.trading) return;
    clearOrderErrors();
    const form = new FormData(event.target);
    const type = form.get('type');
    const data = {
      symbol: form.get('symbol'),
      qty: String(form.get('qty') ?? '').trim(),
      side: form.get('side'),
      type,
      time_in_force: form.get('time_in_force'),
    };
    if (type === 'limit' || type === 'stop_limit') data.limit_price = String(form.get('limit_price') ?? '').trim();
    if (type === 'stop' || type === 'stop_limit') data.stop_price = String(form.get('stop_price') ?? '').trim();
    // Empty fields are left out so the server says which one is missing.
    for (const key of Object.keys(data)) if (data[key] === '') delete data[key];
    const coid = String(form.get('client_order_id') ?? '').trim();
    if (coid) data.client_order_id = coid;
    const result = $('#order-result');
    result.textContent = 'Sending…';
    $('#order-submit').disabled = true;
    try {
      const ack = await state.trading.placeOrder(data);
      const order = ack.order ?? {};
      result.textContent = `Order ${order.status ?? 'accepted'}: ${order.side ?? data.side} ${order.qty ?? data.qty} ${order.symbol ?? data.symbol}`;
      $('#order-coid').value = '';
    } catch (error) {
      const field = error instanceof TradingError ? error.field : null;
      const slot = field ? document.querySelector(`#err-${CSS.escape(field)}`) : null;
      if (slot && !slot.closest('[hidden]')) {
        slot.textContent = error.message;
        const input = document.querySelector(`#order-form [name="${CSS.escape(field)}"]`);
        input?.setAttribute('aria-invalid', 'true');
        input?.focus();
        result.textContent = 'Order rejected: see the highlighted field.';
      } else {
        result.textContent = `Order rejected: ${error.message}`;
      }
    } finally {
      $('#order-submit').disabled = false;
    }
  });
}

// ---- start ------------------------------------------------------------------------------

async function loadSymbols() {
  try {
    const response = await fetch(`${BASE}/v1/symbols`);
    const body = await response.json();
    return body.symbols ?? [];
  } catch {
    return [];
  }
}

async function main() {
  setupTheme();
  setupLogin();
  setupOrderTicket();
  state.symbols = await loadSymbols();
  buildCards(state.symbols);
  const wanted = decodeURIComponent(location.hash.slice(1)).toUpperCase();
  if (state.symbols.length) select(state.symbols.includes(wanted) ? wanted : state.symbols[0]);
  startFeeds();
}

main();
