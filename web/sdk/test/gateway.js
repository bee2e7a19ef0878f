// A fake galopush for the SDK's tests, on real sockets: a dispatcher (`/v1/gComet.addr`, SPEC §8)
// on node:http, and comets that take WebSocket upgrades on `/ws` (the `ws` package on node:http's
// 'upgrade') and speak SPEC §4 with a codec of their own — Node's Buffer base64 and a separate
// ring-xor — so that the SDK is checked against an independent reading of the protocol.

import http from 'node:http';
import { WebSocketServer } from 'ws';

/** A FIFO whose `shift()` waits for the next item. */
class Queue {
  /** @type {unknown[]} */ #items = [];
  /** @type {((item: unknown) => void)[]} */ #waiting = [];

  /** @param {unknown} item */
  push(item) {
    const waiter = this.#waiting.shift();
    if (waiter) waiter(item);
    else this.#items.push(item);
  }

  /** @returns {Promise<any>} */
  shift() {
    if (this.#items.length > 0) return Promise.resolve(this.#items.shift());
    return new Promise((resolve) => this.#waiting.push(resolve));
  }

  get length() {
    return this.#items.length;
  }
}

/** @param {Buffer} b ring-xor encoded in place (SPEC §3) */
function ringXor(b) {
  const n = b.length;
  if (n <= 1) return b;
  for (let i = 0; i < n - 1; i++) b[i + 1] ^= b[i];
  b[0] ^= b[n - 1];
  return b;
}

/** @param {Buffer} b ring-xor decoded in place */
function unringXor(b) {
  const n = b.length;
  if (n <= 1) return b;
  b[0] ^= b[n - 1];
  for (let i = n - 1; i >= 1; i--) b[i] ^= b[i - 1];
  return b;
}

/**
 * The text of a message as a comet writes it.
 * @param {object} message
 * @param {'compatible' | 'plain'} framing
 */
export function wrap(message, framing) {
  const json = JSON.stringify(message);
  return framing === 'plain' ? json : ringXor(Buffer.from(json, 'utf8')).toString('base64');
}

/**
 * A text a terminal sent: its framing, detected as the comet does, and its message.
 * @param {string} text
 */
export function unwrap(text) {
  const framing = text.trimStart().startsWith('{') ? 'plain' : 'compatible';
  const json = framing === 'plain' ? text : unringXor(Buffer.from(text.trim(), 'base64')).toString('utf8');
  return { framing, message: JSON.parse(json) };
}

/** A terminal's connection as a comet sees it. */
export class Peer {
  /** @type {'compatible' | 'plain' | undefined} the framing of its first message, which the comet answers in */
  framing;
  /** @type {('compatible' | 'plain')[]} the framing of every message received */
  framings = [];
  #received = new Queue();
  /** @type {Promise<{code: number, reason: string}>} */ closed;

  /** @param {import('ws').WebSocket} socket */
  constructor(socket) {
    this.socket = socket;
    this.closed = new Promise((resolve) => {
      socket.on('close', (code, reason) => resolve({ code, reason: reason.toString() }));
    });
    socket.on('message', (data) => {
      const { framing, message } = unwrap(data.toString());
      this.framing ??= framing;
      this.framings.push(framing);
      this.#received.push(message);
    });
  }

  /** The next message the terminal sent, decoded. */
  next() {
    return this.#received.shift();
  }

  /** How many messages were received and not taken by `next()` yet. */
  get pending() {
    return this.#received.length;
  }

  /**
   * Sends a message in the terminal's framing.
   * @param {object} message
   */
  send(message) {
    this.socket.send(wrap(message, this.framing ?? 'compatible'));
  }

  /** @param {string} text sent as is */
  sendText(text) {
    this.socket.send(text);
  }

  /**
   * Waits for REGISTER and answers REGRESP `code` with its TID; returns the REGISTER.
   * @param {number} [code]
   */
  async register(code = 0) {
    const register = await this.next();
    if (register.cmd !== 1) throw new Error(`expected REGISTER, got ${JSON.stringify(register)}`);
    this.send({ cmd: 2, tid: register.tid, data: { code } });
    return register;
  }

  /** Closes the connection as a comet does, with status 1000. */
  close() {
    this.socket.close(1000);
  }

  /** Cuts the TCP connection without a close frame, as a crashed comet or a lost network does. */
  drop() {
    this.socket.terminate();
  }
}

/** A comet's WebSocket listener on 127.0.0.1, path `/ws`. */
export class Comet {
  #server = http.createServer((_, res) => res.writeHead(404).end());
  #wss = new WebSocketServer({ noServer: true });
  #peers = new Queue();
  /** @type {Peer[]} every connection so far */ peers = [];
  addr = '';

  static async start() {
    const comet = new Comet();
    comet.#server.on('upgrade', (request, socket, head) => {
      if (new URL(request.url ?? '/', 'http://x').pathname !== '/ws') {
        socket.end('HTTP/1.1 404 Not Found\r\n\r\n');
        return;
      }
      comet.#wss.handleUpgrade(request, socket, head, (ws) => {
        const peer = new Peer(ws);
        comet.peers.push(peer);
        comet.#peers.push(peer);
      });
    });
    comet.addr = await listen(comet.#server);
    return comet;
  }

  get url() {
    return `ws://${this.addr}/ws`;
  }

  /** @returns {Promise<Peer>} the next connection */
  nextPeer() {
    return this.#peers.shift();
  }

  async stop() {
    for (const client of this.#wss.clients) client.terminate();
    await stop(this.#server);
  }
}

/**
 * The dispatcher: answers each request with `answer(request, n)` (n counts from 1), by default
 * 503, and records the requests: `{method, id, termtype, tls}` from the form and the query.
 */
export class Dispatcher {
  /** @type {(request: {method: string, id: string | null, termtype: string | null, tls: string | null}, n: number) => {status: number, body?: string}} */
  answer = () => ({ status: 503 });
  /** @type {{method: string, id: string | null, termtype: string | null, tls: string | null, at: number}[]} */
  requests = [];
  #requests = new Queue();
  #server = http.createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => (body += chunk));
    req.on('end', () => {
      const url = new URL(req.url ?? '/', 'http://x');
      if (url.pathname !== '/v1/gComet.addr') {
        res.writeHead(404, { connection: 'close' }).end();
        return;
      }
      const form = new URLSearchParams(body);
      const field = (/** @type {string} */ name) => form.get(name) ?? url.searchParams.get(name);
      const request = { method: req.method ?? '', id: field('id'), termtype: field('termtype'), tls: field('tls') };
      this.requests.push({ ...request, at: performance.now() });
      this.#requests.push(request);
      const { status, body: answer = '' } = this.answer(request, this.requests.length);
      res.writeHead(status, { 'content-type': 'text/plain', connection: 'close' }).end(answer);
    });
  });
  url = '';

  static async start() {
    const dispatcher = new Dispatcher();
    dispatcher.url = `http://${await listen(dispatcher.#server)}`;
    return dispatcher;
  }

  /** @returns {Promise<{method: string, id: string | null, termtype: string | null, tls: string | null}>} */
  nextRequest() {
    return this.#requests.shift();
  }

  async stop() {
    await stop(this.#server);
  }
}

/**
 * @param {http.Server} server
 * @returns {Promise<string>} its `host:port`
 */
function listen(server) {
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const address = /** @type {import('node:net').AddressInfo} */ (server.address());
      resolve(`127.0.0.1:${address.port}`);
    });
  });
}

/** @param {http.Server} server */
function stop(server) {
  server.closeAllConnections();
  return new Promise((resolve) => server.close(() => resolve(undefined)));
}

/** A `host:port` where nothing listens: a port taken, then freed. */
export async function deadAddr() {
  const server = http.createServer();
  const addr = await listen(server);
  await stop(server);
  return addr;
}
