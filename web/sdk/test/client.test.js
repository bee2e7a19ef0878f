// GalopushClient against a fake gateway on real sockets (test/gateway.js): dispatch, both
// framings, REGISTER, events and acks (automatic and by hand), IM up, ping, back-off with a fresh
// dispatch, KICK, close(). Each case runs with the `ws` package's WebSocket (what Node 20 users
// pass) and, where the runtime has one, the built-in WebSocket (`npm test` turns Node 20's on).
// Back-off settings are small; times are only checked from below, so a slow machine cannot fail
// them.

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { WebSocket as WsWebSocket } from 'ws';

import { GalopushClient, GalopushError, encodeFrame } from '../galopush.js';
import { Comet, Dispatcher, deadAddr } from './gateway.js';

const vectors = JSON.parse(
  readFileSync(new URL('../../../crates/galopush-protocol/tests/data/vectors.json', import.meta.url), 'utf8'),
);
/** The compatible-framing vector of `cmd` (SPEC §4). @param {number} cmd */
const webVector = (cmd) => vectors.web.find((/** @type {any} */ v) => JSON.parse(v.json).cmd === cmd);

/** Back-off of the tests: 20 ms doubling up to 80 ms. */
const INITIAL = 20;
const MAX = 80;
/** Long enough for a client that wrongly reconnects to have done so several times over. */
const QUIET = 5 * MAX;
/** Per test: only a hang gets near it. */
const TIMEOUT = { timeout: 20000 };

/** @type {[string, any][]} */
const implementations = [['the ws package', WsWebSocket]];
if (typeof globalThis.WebSocket === 'function') {
  implementations.push(['the built-in WebSocket', globalThis.WebSocket]);
}

/**
 * Every event of `client`, in order, with the time it came.
 * @param {GalopushClient} client
 */
function record(client) {
  /** @type {{type: string, detail: any, at: number}[]} */
  const all = [];
  for (const type of ['open', 'registered', 'push', 'callback', 'im', 'kick', 'close', 'error', 'reconnecting']) {
    client.addEventListener(type, (event) => {
      all.push({ type, detail: /** @type {CustomEvent} */ (event).detail, at: performance.now() });
    });
  }
  return {
    all,
    types: () => all.map((e) => e.type),
    /** @param {string} type */
    of: (type) => all.filter((e) => e.type === type).map((e) => e.detail),
  };
}

/**
 * The detail of the next `type` event of `client`.
 * @param {GalopushClient} client
 * @param {string} type
 */
async function nextEvent(client, type) {
  const [event] = await once(client, type);
  return event.detail;
}

/**
 * @param {Promise<unknown>} promise
 * @param {string} code
 */
async function rejectsWith(promise, code) {
  await assert.rejects(promise, (err) => err instanceof GalopushError && err.code === code);
}

for (const [implementation, WebSocket] of implementations) {
  describe(`GalopushClient with ${implementation}`, () => {
    /** @type {Dispatcher} */ let dispatcher;
    /** @type {Comet} */ let cometA;
    /** @type {Comet} */ let cometB;
    /** @type {GalopushClient[]} */ let clients;

    beforeEach(async () => {
      dispatcher = await Dispatcher.start();
      cometA = await Comet.start();
      cometB = await Comet.start();
      clients = [];
    });

    afterEach(async () => {
      for (const client of clients) client.close();
      await Promise.all([dispatcher.stop(), cometA.stop(), cometB.stop()]);
    });

    /**
     * A client of the test gateway: through the dispatcher unless `url` is given.
     * @param {Partial<import('../galopush.js').GalopushOptions>} [options]
     */
    function newClient(options = {}) {
      const target = options.url === undefined ? { dispatchUrl: dispatcher.url } : {};
      const client = new GalopushClient({
        ...target,
        uid: 'u1',
        token: 't1',
        WebSocket,
        reconnectDelay: INITIAL,
        maxReconnectDelay: MAX,
        ...options,
      });
      clients.push(client);
      return client;
    }

    /**
     * A registered client on comet A and its connection there.
     * @param {Partial<import('../galopush.js').GalopushOptions>} [options]
     */
    async function registered(options = {}) {
      dispatcher.answer = () => ({ status: 200, body: cometA.addr });
      const client = newClient(options);
      const events = record(client);
      const connected = client.connect();
      const peer = await cometA.nextPeer();
      await peer.register();
      await connected;
      return { client, events, peer };
    }

    test('asks the dispatcher (POST id, termtype=Web), connects to its comet on /ws and registers', TIMEOUT, async () => {
      dispatcher.answer = () => ({ status: 200, body: cometA.addr });
      const client = newClient({ uid: '13996130360', token: '000000' });
      const events = record(client);
      assert.equal(client.state, 'idle');
      const connected = client.connect();
      assert.equal(client.connect(), connected, 'connect() twice is one start');
      assert.equal(client.state, 'connecting');

      assert.deepEqual(await dispatcher.nextRequest(), {
        method: 'POST',
        id: '13996130360',
        termtype: 'Web',
        tls: null,
      });
      const peer = await cometA.nextPeer();
      const register = await peer.register(0);
      assert.equal(peer.framing, 'compatible');
      assert.deepEqual(register.data, { version: 1, termType: 8, id: '13996130360', token: '000000' });
      // Byte for byte the REGISTER vector but for the TID, which the client draws at random.
      assert.equal(encodeFrame({ ...register, tid: 1 }, 'compatible'), webVector(1).wire_text);
      await connected;

      assert.equal(client.state, 'registered');
      assert.deepEqual(events.types(), ['open', 'registered']);
      assert.deepEqual(events.of('open'), [{ url: cometA.url }]);
      assert.deepEqual(events.of('registered'), [{ url: cometA.url }]);
      assert.equal(dispatcher.requests.length, 1);
    });

    test('plain framing, straight to a comet url: the comet sees JSON and answers in it', TIMEOUT, async () => {
      const client = newClient({ url: cometA.url, framing: 'plain' });
      const connected = client.connect();
      const peer = await cometA.nextPeer();
      await peer.register();
      await connected;
      const push = nextEvent(client, 'push');
      peer.send({ cmd: 5, tid: 42, data: { msg: 'plain push' } });
      assert.deepEqual(await push, { tid: 42, msg: 'plain push', offline: 0, flag: 0 });
      assert.deepEqual(await peer.next(), { cmd: 6, tid: 42, data: { code: 0 } });
      assert.deepEqual(peer.framings, ['plain', 'plain']);
      assert.equal(dispatcher.requests.length, 0, 'no dispatch with url');
    });

    test('push, callback and IM events carry their fields, and each is acked with its RESP and TID', TIMEOUT, async () => {
      const { client, events, peer } = await registered();
      const lastIm = nextEvent(client, 'im');
      peer.sendText(webVector(5).wire_text); // PUSH tid 3 "hello web", as the vector has it
      peer.send({ cmd: 5, tid: 4, data: { msg: '{"n":1}', offline: 3, flag: 1 } });
      peer.send({ cmd: 7, tid: 5, data: { msg: '回调' } });
      peer.send({ cmd: 9, tid: 6, data: { msg: 'im down', flag: 1 } });
      peer.send({ cmd: 9, tid: 0xffffffff, data: { msg: '' } });
      await lastIm;

      assert.deepEqual(events.of('push'), [
        { tid: 3, msg: 'hello web', offline: 0, flag: 0 },
        { tid: 4, msg: '{"n":1}', offline: 3, flag: 1 },
      ]);
      assert.deepEqual(events.of('callback'), [{ tid: 5, msg: '回调' }]);
      assert.deepEqual(events.of('im'), [
        { tid: 6, msg: 'im down', flag: 1 },
        { tid: 0xffffffff, msg: '', flag: 0 },
      ]);
      assert.deepEqual(await peer.next(), { cmd: 6, tid: 3, data: { code: 0 } });
      assert.deepEqual(await peer.next(), { cmd: 6, tid: 4, data: { code: 0 } });
      assert.deepEqual(await peer.next(), { cmd: 8, tid: 5, data: { code: 0 } });
      assert.deepEqual(await peer.next(), { cmd: 10, tid: 6, data: { code: 0 } });
      assert.deepEqual(await peer.next(), { cmd: 10, tid: 0xffffffff, data: { code: 0 } });
      assert.equal(client.ack(events.of('push')[0]), false, 'acked already');
    });

    test('autoAck false: nothing is acked until ack(message), which acks once, on its own connection', TIMEOUT, async () => {
      const { client, peer } = await registered({ autoAck: false });
      const push = nextEvent(client, 'push');
      const callback = nextEvent(client, 'callback');
      peer.send({ cmd: 5, tid: 10, data: { msg: 'p' } });
      peer.send({ cmd: 7, tid: 11, data: { msg: 'c' } });
      const [pushed, called] = await Promise.all([push, callback]);

      // Had the PUSH been acked on its own, its PUSHRESP would come before this CBRESP.
      assert.equal(client.ack(called), true);
      assert.deepEqual(await peer.next(), { cmd: 8, tid: 11, data: { code: 0 } });
      assert.equal(client.ack(pushed), true);
      assert.deepEqual(await peer.next(), { cmd: 6, tid: 10, data: { code: 0 } });
      assert.equal(client.ack(pushed), false, 'a second ack of the same message');
      assert.equal(client.ack({ ...pushed }), false, 'a copy is not a message the client delivered');

      const im = nextEvent(client, 'im');
      peer.send({ cmd: 9, tid: 12, data: { msg: 'i' } });
      assert.equal(client.ack(await im), true);
      assert.deepEqual(await peer.next(), { cmd: 10, tid: 12, data: { code: 0 } });

      // A message of a connection that is gone cannot be acked on the next one: its TID means
      // nothing there.
      const stale = nextEvent(client, 'push');
      peer.send({ cmd: 5, tid: 13, data: { msg: 'then the comet went away' } });
      const unacked = await stale;
      const again = nextEvent(client, 'registered');
      peer.drop();
      const next = await cometA.nextPeer();
      await next.register();
      await again;
      assert.equal(client.ack(unacked), false);
      const answer = client.sendIm('after');
      const im2 = await next.next();
      assert.equal(im2.cmd, 9, 'the first message on the new connection is the IM, not an ack');
      next.send({ cmd: 10, tid: im2.tid, data: { code: 0 } });
      assert.equal(await answer, 0);
    });

    test('sendIm sends IM up and resolves with the code of the IMRESP with its TID', TIMEOUT, async () => {
      const { client, peer } = await registered();
      const first = client.sendIm('first');
      const second = client.sendIm('第二');
      const im1 = await peer.next();
      const im2 = await peer.next();
      assert.deepEqual({ cmd: im1.cmd, data: im1.data }, { cmd: 9, data: { msg: 'first' } });
      assert.deepEqual({ cmd: im2.cmd, data: im2.data }, { cmd: 9, data: { msg: '第二' } });
      assert.notEqual(im1.tid, im2.tid);

      peer.send({ cmd: 10, tid: im2.tid, data: { code: 1 } });
      peer.send({ cmd: 10, tid: (im1.tid + 1000) >>> 0, data: { code: 1 } });
      peer.send({ cmd: 10, tid: im1.tid, data: { code: 0 } });
      assert.deepEqual(await Promise.all([first, second]), [0, 1]);
    });

    test('sendIm rejects before REGISTER, when its connection closes first, and after imTimeout', TIMEOUT, async () => {
      dispatcher.answer = () => ({ status: 200, body: cometA.addr });
      const early = newClient();
      await rejectsWith(early.sendIm('too early'), 'not-registered');

      const { client, peer } = await registered();
      const lost = client.sendIm('lost');
      assert.equal((await peer.next()).cmd, 9);
      peer.close();
      await rejectsWith(lost, 'closed');

      const impatient = await registered({ uid: 'u2', imTimeout: 50 });
      const late = impatient.client.sendIm('never answered');
      await rejectsWith(late, 'timeout');
      assert.equal(impatient.client.state, 'registered', 'an IM timing out leaves the connection');
      await assert.rejects(client.sendIm(/** @type {any} */ (42)), TypeError);
    });

    test('pings every pingInterval with fresh TIDs while PONGs come back', TIMEOUT, async () => {
      const { client, events, peer } = await registered({ pingInterval: 30 });
      const tids = new Set();
      for (let i = 0; i < 3; i++) {
        const ping = await peer.next();
        assert.equal(ping.cmd, 3);
        assert.deepEqual(ping.data, {});
        tids.add(ping.tid);
        peer.send({ cmd: 4, tid: ping.tid, data: { code: 0 } });
      }
      assert.equal(tids.size, 3);
      assert.equal(client.state, 'registered');
      assert.deepEqual(events.of('error'), []);
    });

    test('a PING without PONG within pongTimeout: the connection is dropped, re-dispatched, registered again', TIMEOUT, async () => {
      dispatcher.answer = (_, n) => ({ status: 200, body: n === 1 ? cometA.addr : cometB.addr });
      const client = newClient({ pingInterval: 30, pongTimeout: 100 });
      const events = record(client);
      await Promise.all([client.connect(), cometA.nextPeer().then((peer) => peer.register())]);
      const reconnected = nextEvent(client, 'registered');
      const peerB = await cometB.nextPeer();
      await peerB.register();
      assert.deepEqual(await reconnected, { url: cometB.url });
      // Comet B does not answer PINGs either: stop before it is dropped too.
      client.close();

      const [timeout] = events.of('error');
      assert.ok(timeout instanceof GalopushError && timeout.code === 'timeout', String(timeout));
      assert.match(timeout.message, /PONG/);
      assert.deepEqual(events.of('close')[0], { code: 1000, reason: timeout.message, willReconnect: true });
      assert.deepEqual(events.types().slice(0, 6), ['open', 'registered', 'error', 'close', 'reconnecting', 'open']);
      assert.equal(dispatcher.requests.length, 2);
    });

    test('back-off: doubling delays jittered down by up to half, a fresh dispatch each time, reset after REGISTER', TIMEOUT, async () => {
      const dead = await deadAddr();
      const answers = [
        { status: 503 },
        { status: 503 },
        { status: 200, body: dead },
        { status: 500, body: 'oops' },
        { status: 200, body: cometA.addr },
        { status: 200, body: cometB.addr },
      ];
      dispatcher.answer = (_, n) => answers[n - 1] ?? { status: 503 };
      const client = newClient({ uid: 'backoff' });
      const events = record(client);
      const connected = client.connect();
      const peerA = await cometA.nextPeer();
      await peerA.register();
      await connected;
      const again = nextEvent(client, 'registered');
      peerA.drop();
      const peerB = await cometB.nextPeer();
      await peerB.register();
      await again;

      const waits = events.all.filter((e) => e.type === 'reconnecting');
      assert.deepEqual(
        waits.map((e) => e.detail.attempt),
        [1, 2, 3, 4, 1],
        'attempts count up while failing and start over after a REGISTER',
      );
      const ceilings = [INITIAL, 2 * INITIAL, MAX, MAX, INITIAL];
      waits.forEach((wait, i) => {
        const { delay } = wait.detail;
        assert.ok(delay >= ceilings[i] / 2 && delay <= ceilings[i], `wait ${i + 1}: ${delay} ms, ceiling ${ceilings[i]}`);
        // Each wait is followed by a new dispatch, not before the wait is over (1 ms of timer rounding).
        const request = dispatcher.requests[i + 1];
        assert.ok(request.at >= wait.at + delay - 1, `dispatch ${i + 2} came ${request.at - wait.at} ms after a ${delay} ms wait`);
      });
      assert.equal(dispatcher.requests.length, 6);
      assert.ok(dispatcher.requests.every((r) => r.id === 'backoff' && r.termtype === 'Web'));

      const errors = events.of('error');
      assert.deepEqual(
        errors.map((e) => [e.code, e.status]),
        [
          ['dispatch', 503],
          ['dispatch', 503],
          ['connect', undefined],
          ['dispatch', 500],
        ],
      );
      assert.deepEqual(events.of('close'), [{ code: 1006, reason: '', willReconnect: true }]);
      assert.deepEqual(events.of('registered'), [{ url: cometA.url }, { url: cometB.url }]);
    });

    test('a REGRESP other than 0 and 3, or a close before REGRESP, is reported and retried', TIMEOUT, async () => {
      dispatcher.answer = () => ({ status: 200, body: cometA.addr });
      const client = newClient();
      const events = record(client);
      const connected = client.connect();
      await (await cometA.nextPeer()).register(9);
      const silent = await cometA.nextPeer();
      await silent.next();
      silent.close();
      await (await cometA.nextPeer()).register(0);
      await connected;

      const errors = events.of('error');
      assert.deepEqual(
        errors.map((e) => [e.code, e.regresp]),
        [
          ['register', 9],
          ['connect', undefined],
        ],
      );
      assert.deepEqual(
        events.of('reconnecting').map((r) => r.attempt),
        [1, 2],
      );
      assert.equal(dispatcher.requests.length, 3);
    });

    test('REGRESP 3 stops the client: connect() rejects with auth, and it does not reconnect', TIMEOUT, async () => {
      dispatcher.answer = () => ({ status: 200, body: cometA.addr });
      const client = newClient();
      const events = record(client);
      const connected = client.connect();
      await (await cometA.nextPeer()).register(3);
      await assert.rejects(connected, (err) => err instanceof GalopushError && err.code === 'auth' && err.regresp === 3);
      assert.equal(client.state, 'closed');
      assert.deepEqual(events.types(), ['open', 'error', 'close']);
      assert.equal(events.of('close')[0].willReconnect, false);
      await sleep(QUIET);
      assert.equal(dispatcher.requests.length, 1);
      assert.equal(cometA.peers.length, 1);
    });

    test('KICK is reported with its reason, acked with KICKRESP, and not fought', TIMEOUT, async () => {
      const { client, events, peer } = await registered();
      const kick = nextEvent(client, 'kick');
      peer.sendText(webVector(11).wire_text); // KICK tid 5, reason 1 (and reson 1)
      assert.deepEqual(await kick, { tid: 5, reason: 1 });
      assert.deepEqual(await peer.next(), { cmd: 12, tid: 5, data: { code: 0 } });
      assert.equal(client.state, 'closed');
      assert.deepEqual(events.types(), ['open', 'registered', 'kick', 'close']);
      assert.deepEqual(events.of('close'), [{ code: 1000, reason: 'kicked (reason 1)', willReconnect: false }]);
      assert.equal((await peer.closed).code, 1000, 'the client closed the connection');
      await sleep(QUIET);
      assert.equal(dispatcher.requests.length, 1);
      assert.equal(cometA.peers.length, 1);
      await rejectsWith(client.sendIm('after the kick'), 'not-registered');
    });

    test('a KICK with only the old `reson` field, autoAck off: its reason, and no KICKRESP unless acked', TIMEOUT, async () => {
      const { client, peer } = await registered({ framing: 'plain', autoAck: false });
      const kick = nextEvent(client, 'kick');
      peer.send({ cmd: 11, tid: 77, data: { reson: 4 } });
      assert.deepEqual(await kick, { tid: 77, reason: 4 });
      await peer.closed;
      assert.equal(peer.pending, 0, 'nothing sent after REGISTER');
      assert.equal(client.state, 'closed');
    });

    test('unreadable frames are reported and skipped; the connection goes on', TIMEOUT, async () => {
      const { client, events, peer } = await registered();
      const push = nextEvent(client, 'push');
      peer.sendText('this is not base64!');
      peer.send({ cmd: 5, tid: 20, data: { offline: 2 } });
      peer.send({ cmd: 6, tid: 21, data: { code: 0 } });
      peer.send({ cmd: 5, tid: 22, data: { msg: 'fine' } });
      assert.deepEqual(await push, { tid: 22, msg: 'fine', offline: 0, flag: 0 });
      assert.deepEqual(await peer.next(), { cmd: 6, tid: 22, data: { code: 0 } });
      assert.deepEqual(
        events.of('error').map((e) => e.code),
        ['protocol', 'protocol', 'protocol'],
      );
      assert.equal(client.state, 'registered');
    });

    test('close() while registered: the connection closes with 1000, what waits is rejected, nothing reconnects', TIMEOUT, async () => {
      const { client, events, peer } = await registered();
      const pending = client.sendIm('in flight');
      await peer.next();
      client.close();
      assert.equal(client.state, 'closed');
      await rejectsWith(pending, 'closed');
      assert.deepEqual(events.of('close'), [{ code: 1000, reason: 'closed by the client', willReconnect: false }]);
      assert.equal((await peer.closed).code, 1000);
      await rejectsWith(client.sendIm('after'), 'not-registered');
      await client.connect();
      await sleep(QUIET);
      assert.equal(dispatcher.requests.length, 1);
    });

    test('close() while waiting to retry, and before connect(): connect() rejects with closed', TIMEOUT, async () => {
      const client = newClient();
      const connected = client.connect();
      await nextEvent(client, 'reconnecting');
      client.close();
      await rejectsWith(connected, 'closed');
      assert.equal(client.state, 'closed');
      await sleep(QUIET);
      assert.equal(dispatcher.requests.length, 1);

      const never = newClient();
      never.close();
      await rejectsWith(never.connect(), 'closed');
      assert.equal(dispatcher.requests.length, 1);
    });

    test('tls: asks the dispatcher with tls=1 and connects with wss://', TIMEOUT, async () => {
      dispatcher.answer = () => ({ status: 200, body: cometA.addr });
      /** @type {string[]} */
      const urls = [];
      const Recording = class extends WebSocket {
        /** @param {string} url */
        constructor(url) {
          urls.push(url);
          super(url);
        }
      };
      const client = newClient({ tls: true, WebSocket: Recording });
      const events = record(client);
      client.connect();
      // The test comet has no TLS: the handshake fails and the client goes on trying.
      await nextEvent(client, 'reconnecting');
      assert.equal(dispatcher.requests[0].tls, '1');
      assert.deepEqual(urls, [`wss://${cometA.addr}/ws`]);
      assert.equal(events.of('error')[0].code, 'connect');
    });
  });
}

test('options are checked when the client is made', () => {
  const ok = { dispatchUrl: 'http://127.0.0.1:1', uid: 'u', token: 't', WebSocket: WsWebSocket };
  const bad = [
    { ...ok, dispatchUrl: undefined },
    { ...ok, url: 'ws://127.0.0.1:1/ws' },
    { ...ok, dispatchUrl: undefined, url: 'http://127.0.0.1:1/ws' },
    { ...ok, uid: '' },
    { ...ok, uid: 'é'.repeat(17) },
    { ...ok, token: 'x'.repeat(33) },
    { ...ok, token: undefined },
    { ...ok, framing: 'base64' },
    { ...ok, pingInterval: -1 },
    { ...ok, reconnectDelay: 0 },
    { ...ok, reconnectDelay: 100, maxReconnectDelay: 50 },
  ];
  for (const options of bad) {
    assert.throws(() => new GalopushClient(/** @type {any} */ (options)), /GalopushClient/, JSON.stringify(options));
  }
  assert.equal(new GalopushClient({ ...ok, uid: 'é'.repeat(16), token: '' }).state, 'idle');

  const builtIn = globalThis.WebSocket;
  Reflect.deleteProperty(globalThis, 'WebSocket');
  try {
    assert.throws(() => new GalopushClient({ ...ok, WebSocket: undefined }), /pass options.WebSocket/);
  } finally {
    if (builtIn !== undefined) globalThis.WebSocket = builtIn;
  }
});
