// The demo web terminal: a GalopushClient (the browser SDK, served beside this page) that asks
// this page's origin — the public listener, which serves the dispatcher — for a comet, registers
// with the uid and code typed in, lists every push, callback, IM and kick as it arrives (the SDK
// acks them), and sends IMs up, showing the IMRESP code each got.

import { GalopushClient } from './galopush.js';

const $ = (/** @type {string} */ id) => /** @type {any} */ (document.getElementById(id));

/** @type {GalopushClient | null} */
let client = null;

/**
 * Adds a line to the log.
 * @param {string} kind a class: push, callback, im, kick, im-up, info, error
 * @param {string} label
 * @param {string} [text]
 */
function log(kind, label, text = '') {
  const item = document.createElement('li');
  item.className = kind;
  const time = document.createElement('time');
  time.textContent = new Date().toLocaleTimeString();
  const tag = document.createElement('b');
  tag.textContent = label;
  const body = document.createElement('span');
  body.textContent = text;
  item.append(time, tag, body);
  $('log').prepend(item);
}

/** @param {string} text @param {string} [className] */
function state(text, className = '') {
  $('state').textContent = text;
  $('state').className = `state ${className}`;
}

/** @param {boolean} registered */
function enable(registered) {
  $('im-text').disabled = !registered;
  $('im-send').disabled = !registered;
}

function stopped() {
  client = null;
  enable(false);
  $('connect').disabled = false;
  $('disconnect').disabled = true;
}

$('login').addEventListener('submit', (/** @type {Event} */ e) => {
  e.preventDefault();
  if (client) return;
  const uid = $('uid').value.trim();
  try {
    client = new GalopushClient({
      dispatchUrl: location.origin,
      tls: location.protocol === 'https:',
      uid,
      token: $('code').value,
      framing: $('framing').value,
    });
  } catch (err) {
    log('error', 'error', err.message);
    return;
  }
  const c = client;
  c.addEventListener('open', (/** @type {any} */ e) => {
    state(`connected to ${e.detail.url}, registering…`);
  });
  c.addEventListener('registered', (/** @type {any} */ e) => {
    state(`registered as ${uid}`, 'ok');
    log('info', 'registered', `${uid} on ${e.detail.url}`);
    enable(true);
  });
  c.addEventListener('push', (/** @type {any} */ e) => {
    const { msg, offline, flag } = e.detail;
    const extra = offline ? ` (${offline} while offline)` : '';
    log('push', 'push', `${msg}${extra}${flag ? ' · web flag' : ''}`);
  });
  c.addEventListener('callback', (/** @type {any} */ e) => log('callback', 'callback', e.detail.msg));
  c.addEventListener('im', (/** @type {any} */ e) => log('im', 'IM', e.detail.msg));
  c.addEventListener('kick', (/** @type {any} */ e) => {
    const why = { 1: 'logged in elsewhere', 2: 'Android/iOS exclusion', 3: 'session timeout', 4: 'logged out' };
    log('kick', 'kick', `reason ${e.detail.reason}: ${why[e.detail.reason] ?? 'unknown'}`);
    state('kicked', 'bad');
    stopped();
  });
  c.addEventListener('close', (/** @type {any} */ e) => {
    enable(false);
    if (e.detail.willReconnect) state('connection closed; reconnecting…', 'bad');
  });
  c.addEventListener('reconnecting', (/** @type {any} */ e) => {
    state(`reconnecting in ${Math.round(e.detail.delay / 1000)} s (attempt ${e.detail.attempt})`, 'bad');
  });
  c.addEventListener('error', (/** @type {any} */ e) => {
    const err = e.detail;
    log('error', 'error', err?.message ?? String(err));
    if (err?.code === 'auth') {
      state('REGISTER refused: is this uid logged in with this code?', 'bad');
      stopped();
    }
  });
  $('connect').disabled = true;
  $('disconnect').disabled = false;
  state('asking the dispatcher for a comet…');
  c.connect().catch(() => {});
});

$('disconnect').addEventListener('click', () => {
  client?.close();
  state('not connected');
  log('info', 'closed', 'disconnected by you');
  stopped();
});

$('im').addEventListener('submit', async (/** @type {Event} */ e) => {
  e.preventDefault();
  if (!client) return;
  const text = $('im-text').value;
  $('im-text').value = '';
  try {
    const code = await client.sendIm(text);
    log('im-up', 'IM sent', `${text} → IMRESP ${code}${code === 0 ? ' (accepted)' : ' (not accepted: send it again later)'}`);
  } catch (err) {
    log('error', 'IM failed', `${text}: ${err.message}`);
  }
});
