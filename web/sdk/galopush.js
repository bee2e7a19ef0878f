// galopush — the JavaScript SDK of a galopush Web terminal, for browsers and Node 20+.
//
// It asks the dispatcher for a comet (SPEC §8), connects over WebSocket, speaks the JSON messages
// of SPEC §4 in either framing, registers (SPEC §5), emits push / callback / IM / kick events,
// acks them, sends IMs up, pings, and reconnects with back-off and a fresh dispatch each time —
// except after a KICK or a refused REGISTER. One ES module, no dependencies, no build step; the
// types are JSDoc (checked by `tsc --checkJs`) and galopush.d.ts for TypeScript users.

/** The message types of SPEC §3, the `cmd` of every WebSocket message. */
export const Cmd = Object.freeze({
  REGISTER: 1,
  REGRESP: 2,
  PING: 3,
  PONG: 4,
  PUSH: 5,
  PUSHRESP: 6,
  CALLBACK: 7,
  CBRESP: 8,
  IM: 9,
  IMRESP: 10,
  KICK: 11,
  KICKRESP: 12,
});

/** REGISTER protocol version, as the Rust SDK sends. */
const REGISTER_VERSION = 1;
/** The Web terminal type (SPEC §2): its bit on the wire. */
const TERM_WEB = 8;
/** Its name, as the dispatcher reads `termtype` (SPEC §8; the original knows names only). */
const TERM_WEB_NAME = 'Web';
/** REGRESP code of a refused REGISTER (SPEC §5): retrying with the same token cannot help. */
const REGRESP_REFUSED = 3;
/** Path of the dispatcher (SPEC §8). */
const DISPATCH_PATH = '/v1/gComet.addr';
/** Path of the comet's WebSocket listener (SPEC §4). */
const WS_PATH = '/ws';
/** `WebSocket.OPEN`, read as a number so that any implementation will do. */
const WS_OPEN = 1;
/** Bytes of UTF-8 in a REGISTER `id` or `token`, at most (SPEC §10). */
const MAX_FIELD_BYTES = 32;
/** Arguments per `String.fromCharCode` call when building base64 input: well under engines' limits. */
const BASE64_CHUNK = 0x8000;

/** The ack of each down-message that opens a transaction (SPEC §3). @type {Map<number, number>} */
const ACK_OF = new Map([
  [Cmd.PUSH, Cmd.PUSHRESP],
  [Cmd.CALLBACK, Cmd.CBRESP],
  [Cmd.IM, Cmd.IMRESP],
  [Cmd.KICK, Cmd.KICKRESP],
]);

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

/**
 * @typedef {'compatible' | 'plain'} Framing
 * @typedef {'idle' | 'connecting' | 'registered' | 'reconnecting' | 'closed'} ClientState
 * @typedef {'dispatch' | 'connect' | 'auth' | 'register' | 'timeout' | 'protocol' | 'closed' | 'not-registered'} ErrorCode
 * @typedef {{cmd: number, tid: number, data?: Record<string, unknown> | null}} Message
 * @typedef {{tid: number, msg: string, offline: number, flag: number}} PushMessage
 * @typedef {{tid: number, msg: string}} CallbackMessage
 * @typedef {{tid: number, msg: string, flag: number}} ImMessage
 * @typedef {{tid: number, reason: number}} KickMessage
 * @typedef {PushMessage | CallbackMessage | ImMessage | KickMessage} DownMessage
 */

/**
 * What the client needs of a WebSocket: the browser's, Node's (22+), or the `ws` package's.
 * @typedef {object} WebSocketLike
 * @property {number} readyState
 * @property {(data: string) => void} send
 * @property {(code?: number, reason?: string) => void} close
 * @property {((event: any) => void) | null} onopen
 * @property {((event: any) => void) | null} onmessage
 * @property {((event: any) => void) | null} onclose
 * @property {((event: any) => void) | null} onerror
 */

/**
 * @typedef {object} GalopushOptions
 * @property {string} [dispatchUrl] base URL of the router's public HTTP listener, e.g.
 *   `http://127.0.0.1:5150`; the client asks it for a comet before every connection.
 * @property {string} [url] a comet's WebSocket URL (`ws://host:port/ws`), instead of `dispatchUrl`.
 * @property {string} uid the user id: 1 to 32 bytes of UTF-8.
 * @property {string} token the login code the business side gave: at most 32 bytes of UTF-8.
 * @property {Framing} [framing] `compatible` (default) or `plain`.
 * @property {boolean} [autoAck] ack every push, callback, IM and kick after its event (default true).
 * @property {number} [pingInterval] ms between PINGs once registered (default 30000; 0: none).
 * @property {number} [pongTimeout] ms a PING waits for its PONG before the connection is dropped (default 10000).
 * @property {number} [connectTimeout] ms the dispatcher's answer may take, and then the WebSocket handshake and
 *   REGRESP together (default 10000).
 * @property {number} [imTimeout] ms `sendIm` waits for its IMRESP (default 10000).
 * @property {number} [reconnectDelay] ms before the first reconnection attempt, before jitter (default 1000).
 * @property {number} [maxReconnectDelay] ms the doubling delay stops at (default 60000).
 * @property {boolean} [tls] ask the dispatcher for the comet's WSS address and connect with `wss://` (default false).
 * @property {new (url: string) => WebSocketLike} [WebSocket] the WebSocket constructor (default `globalThis.WebSocket`).
 * @property {(input: string, init: RequestInit) => Promise<Response>} [fetch] the fetch function (default `globalThis.fetch`).
 */

/**
 * An error the client reports: in an `error` event, or as the rejection of `connect()` or
 * `sendIm()`. `code` says what failed.
 */
export class GalopushError extends Error {
  /**
   * @param {ErrorCode} code
   * @param {string} message
   * @param {{status?: number, regresp?: number}} [info] the dispatcher's HTTP status, the REGRESP code
   */
  constructor(code, message, info = {}) {
    super(message);
    this.name = 'GalopushError';
    /** @type {ErrorCode} */
    this.code = code;
    /** @type {number | undefined} the dispatcher's HTTP status, when it answered */
    this.status = info.status;
    /** @type {number | undefined} the REGRESP code, for `auth` and `register` */
    this.regresp = info.regresp;
  }
}

/**
 * ring-xor (SPEC §3): `b[i+1] ^= b[i]` ascending, then `b[0] ^= b[N-1]`; identity for N ≤ 1.
 * @param {Uint8Array} bytes
 * @returns {Uint8Array} a new array
 */
export function ringXorEncode(bytes) {
  const b = Uint8Array.from(bytes);
  const n = b.length;
  if (n > 1) {
    for (let i = 0; i < n - 1; i++) b[i + 1] ^= b[i];
    b[0] ^= b[n - 1];
  }
  return b;
}

/**
 * The inverse of {@link ringXorEncode}: `b[0] ^= b[N-1]`, then `b[i] ^= b[i-1]` descending.
 * @param {Uint8Array} bytes
 * @returns {Uint8Array} a new array
 */
export function ringXorDecode(bytes) {
  const b = Uint8Array.from(bytes);
  const n = b.length;
  if (n > 1) {
    b[0] ^= b[n - 1];
    for (let i = n - 1; i >= 1; i--) b[i] ^= b[i - 1];
  }
  return b;
}

/** @param {Uint8Array} bytes */
function toBase64(bytes) {
  let binary = '';
  for (let i = 0; i < bytes.length; i += BASE64_CHUNK) {
    binary += String.fromCharCode(...bytes.subarray(i, i + BASE64_CHUNK));
  }
  return btoa(binary);
}

/** @param {string} text */
function fromBase64(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/**
 * The text of the WebSocket message carrying `message` (SPEC §4): the JSON itself (`plain`),
 * or `base64(ring-xor(utf8(json)))`, standard alphabet, padded (`compatible`).
 * @param {Message} message
 * @param {Framing} framing
 * @returns {string}
 */
export function encodeFrame(message, framing) {
  const json = JSON.stringify(message);
  return framing === 'plain' ? json : toBase64(ringXorEncode(utf8.encode(json)));
}

/**
 * The message a WebSocket text carries, in either framing: plain when its first non-space
 * character is `{` (base64 never has one), as the comet decides (SPEC §4).
 * @param {string} text
 * @returns {Message}
 * @throws {GalopushError} code `protocol` when it is neither framing's, or not a message
 */
export function decodeFrame(text) {
  const trimmed = text.trim();
  let value;
  try {
    const json = trimmed.startsWith('{') ? trimmed : fromUtf8.decode(ringXorDecode(fromBase64(trimmed)));
    value = JSON.parse(json);
  } catch (err) {
    throw new GalopushError('protocol', `unreadable message: ${errorText(err)}`);
  }
  if (typeof value !== 'object' || value === null || !isU32(value.cmd) || !isU32(value.tid)) {
    throw new GalopushError('protocol', 'a message without a numeric cmd and tid');
  }
  const data = value.data;
  if (data !== undefined && data !== null && (typeof data !== 'object' || Array.isArray(data))) {
    throw new GalopushError('protocol', `cmd ${value.cmd}: data is not an object`);
  }
  return { cmd: value.cmd, tid: value.tid, data };
}

/** @param {unknown} v */
function isU32(v) {
  return Number.isInteger(v) && /** @type {number} */ (v) >= 0 && /** @type {number} */ (v) <= 0xffffffff;
}

/** @param {unknown} err */
function errorText(err) {
  return err instanceof Error ? err.message : String(err);
}

/**
 * The wait before attempt `attempt` (1 for the first after a success or a start) of a series:
 * `initial × 2^(attempt−1)`, at most `max`, jittered down by up to half — the policy of the
 * server's own back-off (`galopush_nsq::Backoff`).
 * @param {number} attempt
 * @param {number} initial
 * @param {number} max
 */
function backoffDelay(attempt, initial, max) {
  const ceiling = Math.min(initial * 2 ** Math.min(attempt - 1, 30), max);
  return ceiling / 2 + (ceiling / 2) * Math.random();
}

/**
 * One WebSocket connection and what belongs to it: its timers, the IMs waiting for IMRESP, the
 * outstanding PING. TIDs of acks are only meaningful on the connection that delivered them.
 * @typedef {object} Connection
 * @property {WebSocketLike} ws
 * @property {string} url
 * @property {boolean} opened
 * @property {boolean} registered
 * @property {boolean} ended
 * @property {Map<number, {resolve: (code: number) => void, reject: (err: Error) => void, timer: ReturnType<typeof setTimeout>}>} ims
 * @property {number | null} pingTid
 * @property {ReturnType<typeof setTimeout> | undefined} deadline
 * @property {ReturnType<typeof setInterval> | undefined} pingTimer
 * @property {ReturnType<typeof setTimeout> | undefined} pongTimer
 * @property {(registered: boolean) => void} finished
 */

/**
 * A Web terminal of one user: dispatch, connect, register, receive, ack, IM up, ping,
 * reconnect. An `EventTarget`; every event is a `CustomEvent` whose `detail` says what happened:
 * `open` `{url}`, `registered` `{url}`, `push` `{tid, msg, offline, flag}`, `callback`
 * `{tid, msg}`, `im` `{tid, msg, flag}`, `kick` `{tid, reason}`, `close`
 * `{code, reason, willReconnect}`, `error` (a {@link GalopushError}), `reconnecting`
 * `{attempt, delay}`.
 */
export class GalopushClient extends EventTarget {
  /** @type {string | undefined} */ #dispatchUrl;
  /** @type {string | undefined} */ #url;
  /** @type {string} */ #uid;
  /** @type {string} */ #token;
  /** @type {Framing} */ #framing;
  /** @type {boolean} */ #autoAck;
  /** @type {boolean} */ #tls;
  /** @type {number} */ #pingInterval;
  /** @type {number} */ #pongTimeout;
  /** @type {number} */ #connectTimeout;
  /** @type {number} */ #imTimeout;
  /** @type {number} */ #reconnectDelay;
  /** @type {number} */ #maxReconnectDelay;
  /** @type {new (url: string) => WebSocketLike} */ #WebSocket;
  /** @type {(input: string, init: RequestInit) => Promise<Response>} */ #fetch;

  /** @type {ClientState} */ #state = 'idle';
  #stopped = false;
  /** The next TID of an up-message that starts an exchange: a counter from a random value. */
  #tid = Math.floor(Math.random() * 0x100000000);
  /** @type {Connection | null} */ #conn = null;
  /**
   * Down-messages not acked yet, each with the connection that delivered it and the ack it takes.
   * @type {WeakMap<DownMessage, {conn: Connection, cmd: number}>}
   */
  #unacked = new WeakMap();
  /** @type {AbortController | null} */ #dispatching = null;
  /** @type {(() => void) | null} */ #cancelWait = null;
  /** @type {Promise<void>} */ #connected;
  /** @type {() => void} */ #resolveConnected = () => {};
  /** @type {(err: Error) => void} */ #rejectConnected = () => {};

  /** @param {GalopushOptions} options */
  constructor(options) {
    super();
    const {
      dispatchUrl,
      url,
      uid,
      token,
      framing = 'compatible',
      autoAck = true,
      tls = false,
      pingInterval = 30000,
      pongTimeout = 10000,
      connectTimeout = 10000,
      imTimeout = 10000,
      reconnectDelay = 1000,
      maxReconnectDelay = 60000,
    } = options;
    if ((dispatchUrl === undefined) === (url === undefined)) {
      throw new TypeError('GalopushClient: give either dispatchUrl or url');
    }
    if (url !== undefined && !/^wss?:\/\//i.test(url)) {
      throw new TypeError(`GalopushClient: url must be ws:// or wss://, not ${url}`);
    }
    if (typeof uid !== 'string' || uid === '' || utf8.encode(uid).length > MAX_FIELD_BYTES) {
      throw new RangeError(`GalopushClient: uid must be 1 to ${MAX_FIELD_BYTES} bytes of UTF-8`);
    }
    if (typeof token !== 'string' || utf8.encode(token).length > MAX_FIELD_BYTES) {
      throw new RangeError(`GalopushClient: token must be a string of at most ${MAX_FIELD_BYTES} bytes of UTF-8`);
    }
    if (framing !== 'compatible' && framing !== 'plain') {
      throw new TypeError(`GalopushClient: framing must be 'compatible' or 'plain', not ${framing}`);
    }
    const durations = { pingInterval, pongTimeout, connectTimeout, imTimeout, reconnectDelay, maxReconnectDelay };
    for (const [name, value] of Object.entries(durations)) {
      if (typeof value !== 'number' || !(value >= 0) || !Number.isFinite(value)) {
        throw new RangeError(`GalopushClient: ${name} must be a number of milliseconds`);
      }
    }
    if (reconnectDelay === 0 || maxReconnectDelay < reconnectDelay) {
      throw new RangeError('GalopushClient: need 0 < reconnectDelay <= maxReconnectDelay');
    }
    const WebSocketClass = options.WebSocket ?? globalThis.WebSocket;
    if (typeof WebSocketClass !== 'function') {
      throw new TypeError('GalopushClient: no WebSocket here; pass options.WebSocket (on Node 20, the "ws" package\'s)');
    }
    this.#dispatchUrl = dispatchUrl?.replace(/\/+$/, '');
    this.#url = url;
    this.#uid = uid;
    this.#token = token;
    this.#framing = framing;
    this.#autoAck = autoAck;
    this.#tls = tls;
    this.#pingInterval = pingInterval;
    this.#pongTimeout = pongTimeout;
    this.#connectTimeout = connectTimeout;
    this.#imTimeout = imTimeout;
    this.#reconnectDelay = reconnectDelay;
    this.#maxReconnectDelay = maxReconnectDelay;
    this.#WebSocket = WebSocketClass;
    // Called as a plain function: a browser's fetch refuses to run with `this` set to the client.
    this.#fetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
    this.#connected = new Promise((resolve, reject) => {
      this.#resolveConnected = resolve;
      this.#rejectConnected = reject;
    });
    // Failures are also `error` events: a caller that does not await connect() is not told twice.
    this.#connected.catch(() => {});
  }

  /**
   * Where the client is: `idle` (before `connect()`), `connecting` (dispatch, handshake,
   * REGISTER), `registered`, `reconnecting` (waiting to try again), `closed` (for good).
   * @returns {ClientState}
   */
  get state() {
    return this.#state;
  }

  /**
   * Starts the client (once; later calls return the same promise). Resolves on the first
   * successful REGISTER; rejects if the client stops before one: `close()`, or a REGISTER
   * refused with REGRESP 3 (code `auth`). Other failures are retried with back-off, reported as
   * `error` and `reconnecting` events meanwhile.
   * @returns {Promise<void>}
   */
  connect() {
    if (this.#state === 'idle') {
      this.#run();
    }
    return this.#connected;
  }

  /**
   * Sends an IM up (SPEC §3, §7). Resolves with the code of its IMRESP: 0 accepted durably by
   * the business side's bus, 1 not accepted now (send it again later). Rejects with code
   * `not-registered` when no connection is registered, `closed` when the connection closes
   * first, `timeout` after `imTimeout` ms (the IM may still have been accepted).
   * @param {string} text
   * @returns {Promise<number>}
   */
  sendIm(text) {
    if (typeof text !== 'string') {
      return Promise.reject(new TypeError('sendIm: text must be a string'));
    }
    const conn = this.#conn;
    if (conn === null || !conn.registered) {
      return Promise.reject(new GalopushError('not-registered', 'sendIm: not registered; wait for the registered event'));
    }
    const tid = this.#nextTid();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        conn.ims.delete(tid);
        reject(new GalopushError('timeout', `no IMRESP within ${this.#imTimeout} ms`));
      }, this.#imTimeout);
      conn.ims.set(tid, { resolve, reject, timer });
      this.#send(conn, Cmd.IM, tid, { msg: text });
    });
  }

  /**
   * Acks a push, callback, IM or kick (the `detail` of its event) with code 0: PUSHRESP, CBRESP,
   * IMRESP or KICKRESP with its TID, on the connection that delivered it. With `autoAck` (the
   * default) the client does this itself once the event's listeners have run. Returns whether
   * an ack was sent: false when it was acked already or its connection is gone (the server has
   * then taken the message back, and will deliver it again if it keeps it).
   * @param {DownMessage} message
   * @returns {boolean}
   */
  ack(message) {
    const pending = this.#unacked.get(message);
    if (pending === undefined) return false;
    this.#unacked.delete(message);
    return this.#send(pending.conn, pending.cmd, message.tid, { code: 0 });
  }

  /** Stops the client for good: closes the connection, stops reconnecting, rejects what waits. */
  close() {
    if (this.#state !== 'closed') this.#stop('closed by the client');
  }

  /** The dispatch–connect–wait loop: runs until the client stops. */
  async #run() {
    let attempt = 0;
    while (!this.#stopped) {
      this.#state = 'connecting';
      let registered = false;
      try {
        registered = await this.#session(await this.#cometUrl());
      } catch (err) {
        if (!this.#stopped) this.#emit('error', err);
      }
      if (this.#stopped) break;
      attempt = registered ? 1 : attempt + 1;
      const delay = backoffDelay(attempt, this.#reconnectDelay, this.#maxReconnectDelay);
      this.#state = 'reconnecting';
      this.#emit('reconnecting', { attempt, delay });
      if (!this.#stopped) await this.#wait(delay);
    }
  }

  /**
   * The comet's WebSocket URL: `url`, or a fresh answer of the dispatcher (SPEC §8), asked with
   * `POST` and the form fields `id`, `termtype=Web` and, for `tls`, `tls=1`, as the original
   * dispatcher takes them.
   * @returns {Promise<string>}
   */
  async #cometUrl() {
    if (this.#url !== undefined) return this.#url;
    const form = new URLSearchParams({ id: this.#uid, termtype: TERM_WEB_NAME });
    if (this.#tls) form.set('tls', '1');
    const abort = new AbortController();
    this.#dispatching = abort;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      abort.abort();
    }, this.#connectTimeout);
    let status;
    let addr;
    try {
      const response = await this.#fetch(`${this.#dispatchUrl}${DISPATCH_PATH}`, {
        method: 'POST',
        body: form,
        signal: abort.signal,
      });
      status = response.status;
      addr = (await response.text()).trim();
    } catch (err) {
      const why = timedOut ? `no answer within ${this.#connectTimeout} ms` : errorText(err);
      throw new GalopushError('dispatch', `dispatcher ${this.#dispatchUrl}: ${why}`);
    } finally {
      clearTimeout(timer);
      this.#dispatching = null;
    }
    if (status !== 200 || addr === '') {
      const why = status === 503 ? 'no comet available (503)' : `answered ${status} ${JSON.stringify(addr)}`;
      throw new GalopushError('dispatch', `dispatcher ${this.#dispatchUrl}: ${why}`, { status });
    }
    return `${this.#tls ? 'wss' : 'ws'}://${addr}${WS_PATH}`;
  }

  /**
   * One connection, from the handshake to its end. Resolves when it has ended, with whether it
   * registered; every failure is reported as an `error` event on the way.
   * @param {string} url
   * @returns {Promise<boolean>}
   */
  #session(url) {
    return new Promise((finished) => {
      if (this.#stopped) {
        finished(false);
        return;
      }
      let ws;
      try {
        ws = new this.#WebSocket(url);
      } catch (err) {
        this.#emit('error', new GalopushError('connect', `cannot connect to ${url}: ${errorText(err)}`));
        finished(false);
        return;
      }
      /** @type {Connection} */
      const conn = {
        ws,
        url,
        opened: false,
        registered: false,
        ended: false,
        ims: new Map(),
        pingTid: null,
        deadline: undefined,
        pingTimer: undefined,
        pongTimer: undefined,
        finished,
      };
      this.#conn = conn;
      conn.deadline = setTimeout(() => {
        const what = conn.opened ? 'REGRESP' : 'the WebSocket handshake';
        this.#drop(conn, new GalopushError('timeout', `${url}: no ${what} within ${this.#connectTimeout} ms`));
      }, this.#connectTimeout);
      ws.onopen = () => {
        conn.opened = true;
        this.#emit('open', { url });
        this.#send(conn, Cmd.REGISTER, this.#nextTid(), {
          version: REGISTER_VERSION,
          termType: TERM_WEB,
          id: this.#uid,
          token: this.#token,
        });
      };
      ws.onmessage = (event) => this.#receive(conn, event.data);
      ws.onclose = (event) => {
        if (!conn.registered) {
          const why = conn.opened ? 'closed before REGRESP' : 'cannot connect';
          this.#emit('error', new GalopushError('connect', `${url}: ${why}`));
        }
        this.#end(conn, event.code, event.reason);
      };
      // After an error a close event follows, except where a failed handshake gets an error
      // event alone (Node 20's WebSocket): that one ends the attempt here. The handler is never
      // removed, so that the `ws` package (Node) always has a listener and does not throw.
      ws.onerror = () => {
        if (conn.opened || conn.ended) return;
        this.#emit('error', new GalopushError('connect', `${url}: cannot connect`));
        this.#closeSocket(conn, 'cannot connect');
      };
    });
  }

  /**
   * @param {Connection} conn
   * @param {unknown} text
   */
  #receive(conn, text) {
    if (typeof text !== 'string') {
      this.#emit('error', new GalopushError('protocol', 'a binary WebSocket message'));
      return;
    }
    let message;
    try {
      message = decodeFrame(text);
    } catch (err) {
      this.#emit('error', err);
      return;
    }
    const { cmd, tid } = message;
    const data = message.data ?? {};
    /** A numeric field: required, or 0 when left out (PUSH and IM `offline` and `flag`). */
    const number = (/** @type {string} */ name, optional = false) => {
      const value = data[name];
      if (value === undefined && optional) return 0;
      if (isU32(value)) return /** @type {number} */ (value);
      throw new GalopushError('protocol', `cmd ${cmd}: ${name} is missing or not a number`);
    };
    const msg = () => {
      if (typeof data.msg === 'string') return data.msg;
      throw new GalopushError('protocol', `cmd ${cmd}: no msg`);
    };
    try {
      switch (cmd) {
        case Cmd.REGRESP:
          this.#registered(conn, number('code'));
          break;
        case Cmd.PONG:
          if (tid === conn.pingTid) {
            conn.pingTid = null;
            clearTimeout(conn.pongTimer);
          }
          break;
        case Cmd.PUSH:
          this.#deliver(conn, cmd, 'push', { tid, msg: msg(), offline: number('offline', true), flag: number('flag', true) });
          break;
        case Cmd.CALLBACK:
          this.#deliver(conn, cmd, 'callback', { tid, msg: msg() });
          break;
        case Cmd.IM:
          this.#deliver(conn, cmd, 'im', { tid, msg: msg(), flag: number('flag', true) });
          break;
        case Cmd.IMRESP:
          this.#imAnswered(conn, tid, number('code'));
          break;
        case Cmd.KICK:
          this.#kicked(conn, { tid, reason: data.reason === undefined ? number('reson') : number('reason') });
          break;
        default:
          throw new GalopushError('protocol', `cmd ${cmd} is not one a comet sends`);
      }
    } catch (err) {
      if (!(err instanceof GalopushError)) throw err;
      this.#emit('error', err);
    }
  }

  /**
   * REGRESP: 0 registered; 3 refused, for good (a new token is needed); any other code is
   * reported and retried.
   * @param {Connection} conn
   * @param {number} code
   */
  #registered(conn, code) {
    if (conn.registered) return;
    if (code === 0) {
      conn.registered = true;
      clearTimeout(conn.deadline);
      if (this.#pingInterval > 0) {
        conn.pingTimer = setInterval(() => this.#ping(conn), this.#pingInterval);
      }
      this.#state = 'registered';
      this.#emit('registered', { url: conn.url });
      this.#resolveConnected();
    } else if (code === REGRESP_REFUSED) {
      this.#stop('REGISTER refused', new GalopushError('auth', `${conn.url}: REGISTER refused (REGRESP 3): wrong or revoked token, or a bad uid`, { regresp: code }));
    } else {
      this.#drop(conn, new GalopushError('register', `${conn.url}: REGRESP ${code}`, { regresp: code }));
    }
  }

  /**
   * PUSH, CALLBACK, IM down: the event, then the ack unless the listeners acked or `autoAck` is off.
   * @param {Connection} conn
   * @param {number} cmd
   * @param {'push' | 'callback' | 'im'} type
   * @param {PushMessage | CallbackMessage | ImMessage} detail
   */
  #deliver(conn, cmd, type, detail) {
    this.#unacked.set(detail, { conn, cmd: /** @type {number} */ (ACK_OF.get(cmd)) });
    this.#emit(type, detail);
    if (this.#autoAck) this.ack(detail);
  }

  /**
   * @param {Connection} conn
   * @param {number} tid
   * @param {number} code
   */
  #imAnswered(conn, tid, code) {
    const im = conn.ims.get(tid);
    if (im === undefined) return;
    conn.ims.delete(tid);
    clearTimeout(im.timer);
    im.resolve(code);
  }

  /**
   * KICK: reported and acked (KICKRESP, which the comet does not wait for), then the client
   * stops: reconnecting would kick the login that replaced this one (SPEC §5).
   * @param {Connection} conn
   * @param {KickMessage} detail
   */
  #kicked(conn, detail) {
    this.#unacked.set(detail, { conn, cmd: Cmd.KICKRESP });
    this.#emit('kick', detail);
    if (this.#autoAck) this.ack(detail);
    this.#stop(`kicked (reason ${detail.reason})`);
  }

  /** @param {Connection} conn */
  #ping(conn) {
    if (conn.pingTid !== null) return;
    const tid = this.#nextTid();
    conn.pingTid = tid;
    this.#send(conn, Cmd.PING, tid, {});
    conn.pongTimer = setTimeout(() => {
      this.#drop(conn, new GalopushError('timeout', `${conn.url}: no PONG within ${this.#pongTimeout} ms`));
    }, this.#pongTimeout);
  }

  /**
   * @param {Connection} conn
   * @param {number} cmd
   * @param {number} tid
   * @param {Record<string, unknown>} data
   * @returns {boolean} whether it was sent
   */
  #send(conn, cmd, tid, data) {
    if (conn.ended || conn.ws.readyState !== WS_OPEN) return false;
    conn.ws.send(encodeFrame({ cmd, tid, data }, this.#framing));
    return true;
  }

  /**
   * Ends a connection from this side after `error` (reported first); the loop reconnects.
   * @param {Connection} conn
   * @param {GalopushError} error
   */
  #drop(conn, error) {
    if (conn.ended) return;
    this.#emit('error', error);
    this.#closeSocket(conn, error.message);
  }

  /**
   * Stops the client for good: reports `error` if any, rejects a pending `connect()`, cancels a
   * dispatch or a wait, closes the connection.
   * @param {string} reason
   * @param {GalopushError} [error]
   */
  #stop(reason, error) {
    this.#stopped = true;
    this.#state = 'closed';
    if (error !== undefined) this.#emit('error', error);
    this.#rejectConnected(error ?? new GalopushError('closed', `the client stopped: ${reason}`));
    this.#dispatching?.abort();
    this.#cancelWait?.();
    if (this.#conn !== null) this.#closeSocket(this.#conn, reason);
  }

  /**
   * Closes the socket without waiting for the close handshake (a dead peer never answers it).
   * @param {Connection} conn
   * @param {string} reason
   */
  #closeSocket(conn, reason) {
    // Ended first: closing a socket may fire its error event at once (Node 20's does).
    this.#end(conn, 1000, reason);
    conn.ws.close(1000);
  }

  /**
   * The end of a connection, whoever ended it: timers stop, IMs waiting are rejected, `close`
   * is emitted if it had opened, and the session's promise resolves.
   * @param {Connection} conn
   * @param {number} code
   * @param {string} reason
   */
  #end(conn, code, reason) {
    if (conn.ended) return;
    conn.ended = true;
    conn.ws.onopen = null;
    conn.ws.onmessage = null;
    conn.ws.onclose = null;
    clearTimeout(conn.deadline);
    clearInterval(conn.pingTimer);
    clearTimeout(conn.pongTimer);
    if (this.#conn === conn) this.#conn = null;
    for (const im of conn.ims.values()) {
      clearTimeout(im.timer);
      im.reject(new GalopushError('closed', `${conn.url}: the connection closed before IMRESP`));
    }
    conn.ims.clear();
    if (conn.opened) this.#emit('close', { code, reason, willReconnect: !this.#stopped });
    conn.finished(conn.registered);
  }

  /**
   * The back-off wait, cut short by `close()`.
   * @param {number} ms
   * @returns {Promise<void>}
   */
  #wait(ms) {
    return new Promise((/** @type {(value?: void) => void} */ resolve) => {
      const timer = setTimeout(resolve, ms);
      this.#cancelWait = () => {
        clearTimeout(timer);
        resolve();
      };
    }).finally(() => {
      this.#cancelWait = null;
    });
  }

  #nextTid() {
    const tid = this.#tid;
    this.#tid = (tid + 1) >>> 0;
    return tid;
  }

  /**
   * @param {string} type
   * @param {unknown} detail
   */
  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
