// The embeddable components on pages served from other origins: shown where the origin is in
// `server.allowed_origins`, refused where it is not (both the module script and the feeds are
// CORS requests).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Gateway, freePort, launchBrowser, news, screenshot, servePage, trade, waitFor } from './support.js';

function embedPage(gatewayUrl, title) {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${title}</title>
<style>body { font: 15px/1.5 system-ui, sans-serif; margin: 2rem; max-width: 46rem; } h1 { font-size: 1.4rem; }
aside { border: 1px solid #ccc; border-radius: 8px; padding: 1rem; margin-top: 1rem; }</style>
<script type="module" src="${gatewayUrl}/embed.js"></script></head>
<body><h1>${title}</h1>
<p>A page on another site with the tickgate feeds embedded by one script tag.</p>
<tickgate-ticker id="ticker" symbols="AAPL,MSFT,NVDA"></tickgate-ticker>
<aside><h2>Latest AAPL news</h2><tickgate-news id="news" symbols="AAPL" limit="5"></tickgate-news></aside>
</body></html>`;
}

let gateway;
let allowed;
let foreign;
const browser = await launchBrowser();

before(async () => {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  allowed = await servePage(embedPage(url, 'Partner site (allowed origin)'));
  foreign = await servePage(embedPage(url, 'Unknown site (not allowed)'));
  gateway = await Gateway.start({
    port,
    env: { TICKGATE__SIMULATOR__ENABLED: 'false', TICKGATE__SERVER__ALLOWED_ORIGINS: `${url},${allowed.origin}` },
  });
});

after(async () => {
  await browser.close();
  await gateway?.stop();
  await allowed?.close();
  await foreign?.close();
});

const tickerPrice = (page, symbol) =>
  page.evaluate((s) => document.querySelector('#ticker')?.shadowRoot?.querySelector(`[data-symbol="${s}"] .price`)?.textContent ?? null, symbol);

test('a page on an allowed origin shows the embedded ticker and news and follows live prices', async () => {
  await gateway.publish([trade('AAPL', 227.5), trade('MSFT', 415.2), trade('NVDA', 131.6)]);
  await gateway.publish(news('Apple opens a new campus', ['AAPL']));
  const page = await browser.newPage();
  await page.goto(allowed.url);
  await waitFor(async () => (await tickerPrice(page, 'AAPL')) === '227.50', { what: 'the embedded AAPL price' });
  assert.equal(await tickerPrice(page, 'MSFT'), '415.20');
  await gateway.publish(trade('AAPL', 228.25));
  await waitFor(async () => (await tickerPrice(page, 'AAPL')) === '228.25', { what: 'a live AAPL update' });
  const classes = await page.evaluate(() => document.querySelector('#ticker').shadowRoot.querySelector('[data-symbol="AAPL"]').className);
  assert.match(classes, /\bup\b/);
  await waitFor(
    () => page.evaluate(() => document.querySelector('#news')?.shadowRoot?.textContent.includes('Apple opens a new campus')),
    { what: 'the embedded news item' },
  );
  await gateway.publish(news('Microsoft-only story must not show in an AAPL list', ['MSFT']));
  await gateway.publish(news('Apple supplier update', ['AAPL']));
  await waitFor(
    () => page.evaluate(() => document.querySelector('#news').shadowRoot.textContent.includes('Apple supplier update')),
    { what: 'a live news item' },
  );
  assert.equal(await page.evaluate(() => document.querySelector('#news').shadowRoot.textContent.includes('Microsoft-only')), false);
  await screenshot(page, 'embedding.png', { fullPage: true });
});

test('a page on an origin outside the allowlist gets neither the component nor the feed', async () => {
  const page = await browser.newPage();
  await page.goto(foreign.url);
  // Give the browser ample time to load and run the module if it were allowed.
  await page.waitForTimeout(3000);
  assert.equal(await page.evaluate(() => customElements.get('tickgate-ticker') === undefined), true, 'the module must not load');
  assert.equal(await page.evaluate(() => document.querySelector('#ticker').shadowRoot), null);
  // Even with the component code in hand (same code, inlined), the SSE feed is refused.
  const opened = await page.evaluate(
    (url) =>
      new Promise((resolve) => {
        const source = new EventSource(`${url}/v1/stream/market?symbols=AAPL`);
        source.addEventListener('snapshot', () => {
          source.close();
          resolve('data');
        });
        source.onerror = () => {
          source.close();
          resolve('refused');
        };
        setTimeout(() => resolve('timeout'), 10000);
      }),
    gateway.url,
  );
  assert.equal(opened, 'refused');
  assert.ok(page.consoleMessages.some((m) => /CORS|Access-Control-Allow-Origin/i.test(m)), `CORS errors expected, got ${page.consoleMessages}`);
});

test('the gateway serves the chart module and the embed script but not the npm install tree', async () => {
  const chart = await fetch(`${gateway.url}/vendor/lightweight-charts.mjs`);
  assert.equal(chart.status, 200);
  assert.match(chart.headers.get('content-type'), /javascript/);
  assert.match(await chart.text(), /createChart/);
  const embed = await fetch(`${gateway.url}/embed.js`, { headers: { Origin: allowed.origin } });
  assert.equal(embed.status, 200);
  assert.equal(embed.headers.get('access-control-allow-origin'), allowed.origin);
  for (const hidden of ['/node_modules/lightweight-charts/package.json', '/node_modules/playwright-core/package.json', '/package.json', '/package-lock.json', '/test/fakes.js']) {
    const response = await fetch(`${gateway.url}${hidden}`);
    assert.equal(response.status, 404, `${hidden} must not be served`);
  }
});
