// Shared helpers for the browser end-to-end tests: start the real gateway binary on a free
// port, serve test pages from other origins, publish ticks with the admin token, and launch
// the system's headless Chromium through playwright-core (never a downloaded browser).

import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { mkdtemp, rm, mkdir } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const ADMIN_TOKEN = 'dev-admin-token';
export const SCREENSHOTS = path.join(ROOT, 'docs', 'img');

// playwright-core is installed with the dashboard's packages in web/node_modules.
const requireFromWeb = createRequire(path.join(ROOT, 'web', 'package.json'));
const { chromium } = requireFromWeb('playwright-core');

export const CHROMIUM = process.env.TICKGATE_CHROMIUM ?? '/usr/bin/chromium';

/** A TCP port that was free a moment ago. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

export async function waitFor(check, { timeoutMs = 30000, intervalMs = 100, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  let lastError;
  while (Date.now() < deadline) {
    try {
      const value = await check();
      if (value) return value;
    } catch (error) {
      lastError = error;
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  throw new Error(`timed out waiting for ${what}${lastError ? `: ${lastError.message}` : ''}`);
}

// Gateways still running when the test process exits (a crash, a timeout) are stopped, so a
// failed run never leaves a server behind.
const running = new Set();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/**
 * The gateway binary (`target/debug/tickgate`, built by `cargo build` before the tests) with
 * settings from environment overrides. `start()` can be called again after `stop()` on the
 * same port, which is how the restart test works.
 */
export class Gateway {
  constructor({ port, env = {} }) {
    this.port = port;
    this.env = env;
    this.child = null;
    this.log = '';
    this.url = `http://127.0.0.1:${port}`;
  }

  static async start(options = {}) {
    const gateway = new Gateway({ port: options.port ?? (await freePort()), env: options.env ?? {} });
    await gateway.start();
    return gateway;
  }

  async start() {
    const binary = path.join(ROOT, 'target', 'debug', 'tickgate');
    if (!existsSync(binary)) throw new Error(`${binary} is missing: run cargo build first`);
    // TICKGATE_E2E_CONFIG_DIR points the gateway at another config directory (default: the
    // repository's config/, found from the working directory).
    const args = process.env.TICKGATE_E2E_CONFIG_DIR ? ['--config-dir', process.env.TICKGATE_E2E_CONFIG_DIR] : [];
    this.child = spawn(binary, args, {
      cwd: ROOT,
      env: {
        ...process.env,
        TICKGATE__SERVER__BIND: `127.0.0.1:${this.port}`,
        TICKGATE__SERVER__SHUTDOWN_GRACE: '1s',
        TICKGATE__LOG__FILTER: 'warn',
        ...this.env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const child = this.child;
    running.add(child);
    child.on('exit', () => running.delete(child));
    child.stdout.on('data', (d) => (this.log += d));
    child.stderr.on('data', (d) => (this.log += d));
    this.exited = new Promise((resolve) => child.on('exit', resolve));
    await waitFor(async () => {
      if (child.exitCode !== null) throw new Error(`gateway exited early:\n${this.log}`);
      const response = await fetch(`${this.url}/healthz`);
      return response.ok;
    }, { timeoutMs: 60000, what: 'the gateway to answer /healthz' });
  }

  async stop() {
    if (!this.child || this.child.exitCode !== null) return;
    const exited = this.exited;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child?.kill('SIGKILL'), 10000);
    await exited;
    clearTimeout(timer);
  }

  async publish(items) {
    const response = await fetch(`${this.url}/v1/publish`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${ADMIN_TOKEN}`, 'Content-Type': 'application/json' },
      body: JSON.stringify(items),
    });
    const body = await response.json();
    if (!response.ok || body.rejected?.length) throw new Error(`publish refused: ${response.status} ${JSON.stringify(body)}`);
    return body;
  }
}

let tradeId = 1;
let newsId = 1000;

/** A trade object for `POST /v1/publish`, stamped now. */
export function trade(symbol, price, size = 100) {
  return { T: 't', S: symbol, i: tradeId++, x: 'V', p: price, s: size, t: new Date().toISOString(), c: ['@'] };
}

/** A news object for `POST /v1/publish`. */
export function news(headline, symbols = ['AAPL']) {
  const now = new Date().toISOString();
  return { T: 'n', id: newsId++, headline, summary: `${headline} (summary)`, author: 'e2e', source: 'tests', url: '', symbols, created_at: now, updated_at: now };
}

/**
 * `count` one-minute bars of `symbol` ending `endMinutesAgo` minutes ago, as a random walk
 * around `price` (for a chart with history in screenshots).
 */
export function barHistory(symbol, price, count = 90, endMinutesAgo = 1) {
  const end = Math.floor(Date.now() / 60000) - endMinutesAgo;
  const bars = [];
  let close = price;
  let seed = 7;
  const random = () => ((seed = (seed * 16807) % 2147483647) / 2147483647);
  for (let i = count - 1; i >= 0; i--) {
    const open = close;
    close = Math.round((open * (1 + (random() - 0.5) * 0.004)) * 100) / 100;
    const high = Math.round(Math.max(open, close) * (1 + random() * 0.0015) * 100) / 100;
    const low = Math.round(Math.min(open, close) * (1 - random() * 0.0015) * 100) / 100;
    const volume = 1000 + Math.floor(random() * 5000);
    bars.push({ T: 'b', S: symbol, o: open, h: high, l: low, c: close, v: volume, n: 20, vw: (high + low + close) / 3, t: new Date((end - i) * 60000).toISOString() });
  }
  // Shift the walk so it ends at `price`, next to where live trades will be drawn.
  const shift = price - close;
  const round = (x) => Math.round((x + shift) * 100) / 100;
  return bars.map((b) => ({ ...b, o: round(b.o), h: round(b.h), l: round(b.l), c: round(b.c), vw: round(b.vw) }));
}

/** A tiny static server for a page on another origin. */
export async function servePage(html) {
  const port = await freePort();
  const server = http.createServer((request, response) => {
    response.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
    response.end(html);
  });
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${port}/`,
    origin: `http://127.0.0.1:${port}`,
    port,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

/** Headless Chromium with a fresh profile; `close()` removes the profile too. */
export async function launchBrowser() {
  const profile = await mkdtemp(path.join(os.tmpdir(), 'tickgate-e2e-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    viewport: { width: 1280, height: 900 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  return {
    context,
    async newPage() {
      const page = await context.newPage();
      page.consoleMessages = [];
      page.on('console', (message) => page.consoleMessages.push(`${message.type()}: ${message.text()}`));
      page.on('pageerror', (error) => page.consoleMessages.push(`pageerror: ${error.message}`));
      return page;
    },
    async close() {
      await context.close().catch(() => {});
      await rm(profile, { recursive: true, force: true });
    },
  };
}

export async function screenshot(page, name, options = {}) {
  await mkdir(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SCREENSHOTS, name), ...options });
}
