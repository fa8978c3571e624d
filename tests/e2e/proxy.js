// A TCP proxy between the browser and the gateway for tests that break connections: `cut()`
// destroys every open connection at once (what a dropped Wi-Fi or a killed socket does to
// both ends), `pause()` refuses new ones until `resume()`.

import net from 'node:net';
import { freePort } from './support.js';

export class TcpProxy {
  constructor(targetPort) {
    this.targetPort = targetPort;
    this.pairs = new Set();
    this.paused = false;
    this.server = null;
    this.port = null;
  }

  static async start(targetPort) {
    const proxy = new TcpProxy(targetPort);
    proxy.port = await freePort();
    proxy.server = net.createServer((client) => proxy.accept(client));
    await new Promise((resolve) => proxy.server.listen(proxy.port, '127.0.0.1', resolve));
    return proxy;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  accept(client) {
    if (this.paused) {
      client.destroy();
      return;
    }
    const upstream = net.connect(this.targetPort, '127.0.0.1');
    const pair = [client, upstream];
    this.pairs.add(pair);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      this.pairs.delete(pair);
    };
    for (const socket of pair) {
      socket.on('error', drop);
      socket.on('close', drop);
    }
    client.pipe(upstream);
    upstream.pipe(client);
  }

  /** Destroys every connection through the proxy; returns how many there were. */
  cut() {
    const count = this.pairs.size;
    for (const [client, upstream] of [...this.pairs]) {
      client.destroy();
      upstream.destroy();
    }
    this.pairs.clear();
    return count;
  }

  pause() {
    this.paused = true;
  }

  resume() {
    this.paused = false;
  }

  close() {
    this.cut();
    return new Promise((resolve) => this.server.close(resolve));
  }
}
