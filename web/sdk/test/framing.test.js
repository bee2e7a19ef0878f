// The SDK's wire format against the protocol's conformance vectors
// (crates/galopush-protocol/tests/data/vectors.json, the copy of SPEC's conformance/vectors.json):
// ring-xor (SPEC §3) and both WebSocket framings (SPEC §4), byte for byte; and galopush.d.ts
// against what the module exports.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import * as sdk from '../galopush.js';
import { GalopushError, decodeFrame, encodeFrame, ringXorDecode, ringXorEncode } from '../galopush.js';
import { unwrap, wrap } from './gateway.js';

const vectors = JSON.parse(
  readFileSync(new URL('../../../crates/galopush-protocol/tests/data/vectors.json', import.meta.url), 'utf8'),
);

/** @param {string} hex */
const bytes = (hex) => Uint8Array.from(Buffer.from(hex, 'hex'));
/** @param {Uint8Array} b */
const hex = (b) => Buffer.from(b).toString('hex');

test('ring-xor encodes and decodes every ring-xor vector byte for byte', () => {
  const ringXor = vectors.encodings.filter((/** @type {any} */ v) => v.encoding === 3);
  assert.ok(ringXor.length >= 8, `only ${ringXor.length} ring-xor vectors`);
  for (const v of ringXor) {
    assert.equal(hex(ringXorEncode(bytes(v.plain_hex))), v.encoded_hex, `encode ${v.plain_hex}`);
    assert.equal(hex(ringXorDecode(bytes(v.encoded_hex))), v.plain_hex, `decode ${v.encoded_hex}`);
  }
});

test('ring-xor leaves its input alone and returns a new array', () => {
  const input = bytes('68656c6c6f');
  assert.equal(hex(ringXorEncode(input)), '0a0d610d62');
  assert.equal(hex(ringXorDecode(input)), hex(ringXorDecode(bytes('68656c6c6f'))));
  assert.equal(hex(input), '68656c6c6f');
});

test('ring-xor turns the body of every TCP frame vector into its ring-xor twin', () => {
  const frames = vectors.frames;
  const inRingXor = frames.filter((/** @type {any} */ f) => f.encoding === 3);
  assert.ok(inRingXor.length >= 16, `only ${inRingXor.length} ring-xor frames`);
  for (const f of inRingXor) {
    const plain = frames.find((/** @type {any} */ p) => p.encoding === 0 && p.name === f.name && p.tid === f.tid);
    assert.ok(plain, `no encoding 0 twin of ${f.name}`);
    // The header byte, the TID and the length (absent for PING) are never encoded.
    const headerLength = f.type === 3 ? 5 : 9;
    const body = (/** @type {any} */ frame) => bytes(frame.wire_hex).subarray(headerLength);
    assert.equal(bytes(f.wire_hex)[0], (3 << 6) | f.type, f.name);
    assert.equal(hex(ringXorEncode(body(plain))), hex(body(f)), f.name);
    assert.equal(hex(ringXorDecode(body(f))), hex(body(plain)), f.name);
  }
});

test('compatible framing writes and reads every WebSocket vector byte for byte', () => {
  assert.ok(vectors.web.length >= 6, `only ${vectors.web.length} web vectors`);
  for (const v of vectors.web) {
    const message = JSON.parse(v.json);
    assert.equal(encodeFrame(message, 'compatible'), v.wire_text, v.json);
    assert.deepEqual(decodeFrame(v.wire_text), message, v.wire_text);
    assert.equal(wrap(message, 'compatible'), v.wire_text, `the test comet's codec: ${v.json}`);
  }
});

test('plain framing is the JSON itself, for every WebSocket vector', () => {
  for (const v of vectors.web) {
    const message = JSON.parse(v.json);
    assert.equal(encodeFrame(message, 'plain'), v.json);
    assert.deepEqual(decodeFrame(v.json), message);
    assert.deepEqual(decodeFrame(`  \n${v.json}`), message, 'leading white space, still plain');
  }
});

test('compatible framing reads base64 without padding and with white space around it', () => {
  const v = vectors.web.find((/** @type {any} */ w) => w.wire_text.endsWith('='));
  assert.ok(v, 'a padded vector');
  const message = JSON.parse(v.json);
  assert.deepEqual(decodeFrame(v.wire_text.replace(/=+$/, '')), message);
  assert.deepEqual(decodeFrame(` ${v.wire_text}\n`), message);
});

test('messages outside ASCII cross both framings as UTF-8, as the test comet reads them', () => {
  const message = { cmd: 9, tid: 0xffffffff, data: { msg: '推送 ✓ "quoted" \\ \u0001 😀' } };
  for (const framing of /** @type {const} */ (['compatible', 'plain'])) {
    const text = encodeFrame(message, framing);
    assert.deepEqual(decodeFrame(text), message);
    assert.deepEqual(unwrap(text), { framing, message });
    assert.deepEqual(decodeFrame(wrap(message, framing)), message);
  }
});

test('what is not a message is a protocol error', () => {
  const notMessages = [
    'not base64 at all!',
    '{"cmd": 1, "tid": ',
    '{"tid": 1, "data": {}}',
    '{"cmd": 1, "tid": -1}',
    '{"cmd": "1", "tid": 1}',
    '{"cmd": 5, "tid": 1, "data": [1]}',
    '[1, 2]',
    encodeFrame(/** @type {any} */ ({ cmd: 5 }), 'compatible'),
  ];
  for (const text of notMessages) {
    assert.throws(
      () => decodeFrame(text),
      (err) => err instanceof GalopushError && err.code === 'protocol',
      text,
    );
  }
});

test('galopush.d.ts declares exactly what galopush.js exports', () => {
  const declarations = readFileSync(new URL('../galopush.d.ts', import.meta.url), 'utf8');
  const declared = [...declarations.matchAll(/^export declare (?:const|class|function) (\w+)/gm)].map((m) => m[1]);
  assert.deepEqual(declared.sort(), Object.keys(sdk).sort());
  const methods = Object.getOwnPropertyNames(sdk.GalopushClient.prototype).filter((name) => name !== 'constructor');
  for (const method of methods) {
    assert.match(declarations, new RegExp(`^  (?:readonly )?${method}[(:]`, 'm'), `GalopushClient.${method}`);
  }
});
