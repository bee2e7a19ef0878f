// The operator console: asks for the API token when the API wants one, then every second reads
// /v1/stats and /v1/comets and shows them — comets and their sessions, deliveries per second by
// outcome, the inbox and outbox, refusals, counters — and, on demand, one user's terminals with
// a logout button, and a form that sends a push, callback or IM through /pub.

import { Api, Unauthorized } from './api.js';
import { RateChart } from './chart.js';

const REFRESH_MS = 1000;
/** Seconds the chart shows. */
const CHART_WINDOW = 300;
/** The terminal types of SPEC §2, by bit. */
const TERMTYPES = [
  [1, 'Android'],
  [2, 'iOS'],
  [4, 'WinPhone'],
  [8, 'Web'],
  [16, 'PC'],
];
const KINDS = [
  ['push', 'push'],
  ['callback', 'callback'],
  ['im', 'IM'],
];

const api = new Api();
const $ = (/** @type {string} */ id) => /** @type {any} */ (document.getElementById(id));

const chart = new RateChart($('chart'), $('legend'), [
  { key: 'acked', label: 'acked' },
  { key: 'failed', label: 'failed (not acked live; stored or sent again)' },
  { key: 'stored', label: 'stored offline' },
  { key: 'dropped', label: 'dropped' },
], CHART_WINDOW);

/** The inbound topics' names, from /v1/stats, for the send form. */
let topics = { push: 'push', callback: 'callback', msgDownward: 'msgDownward' };
/** The uid whose terminals are shown, if any. */
let shownUid = '';
let timer = 0;

/**
 * A table cell.
 * @param {string | number} text
 * @param {string} [className]
 */
function cell(text, className) {
  const td = document.createElement('td');
  td.textContent = String(text);
  if (className) td.className = className;
  return td;
}

/** @param {string} text @param {boolean} [bad] */
function status(text, bad = false) {
  $('status').textContent = text;
  $('status').classList.toggle('bad', bad);
}

/** @param {number} n a rate */
function rate(n) {
  return n >= 100 ? n.toFixed(0) : n.toFixed(2);
}

/** @param {number} ms */
function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function askForToken(message = '') {
  clearTimeout(timer);
  status('the API needs its token', true);
  $('token-error').textContent = message;
  $('token-error').hidden = !message;
  $('forget').hidden = true;
  if (!$('token-dialog').open) $('token-dialog').showModal();
  $('token-input').focus();
}

/** Reads everything once and shows it; then again in a second. */
async function refresh() {
  clearTimeout(timer);
  const sent = api.token;
  try {
    const [stats, comets] = await Promise.all([api.get('/v1/stats'), api.get('/v1/comets')]);
    topics = stats.topics;
    showComets(stats, comets);
    showChart(stats);
    showQueues(stats);
    showRefusals(stats);
    showCounters(stats);
    if (shownUid) await showUser(shownUid);
    status(`updated ${new Date(stats.at).toLocaleTimeString()} · bus: ${stats.bus}`);
    $('forget').hidden = !api.token;
  } catch (err) {
    if (err instanceof Unauthorized) {
      askForToken(sent ? 'The API refused that token.' : '');
      return;
    }
    status(`cannot reach the API: ${err.message}`, true);
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

function showComets(stats, comets) {
  const byId = new Map(stats.sessions.comets.map((/** @type {any} */ c) => [c.id, c]));
  const rows = comets.map((/** @type {any} */ c) => {
    const counts = byId.get(c.id)?.termtypes ?? {};
    const tr = document.createElement('tr');
    tr.dataset.comet = c.id;
    tr.append(cell(c.id), cell(c.tls ? `${c.tcp} · TLS ${c.tls}` : c.tcp),
      cell(c.wss ? `${c.ws} · WSS ${c.wss}` : c.ws), cell(c.sessions, 'n'),
      ...TERMTYPES.map(([, name]) => cell(counts[name] ?? 0, 'n')));
    return tr;
  });
  if (rows.length === 0) {
    const tr = document.createElement('tr');
    tr.append(cell('no comet has joined', 'muted'));
    rows.push(tr);
  }
  $('comets').tBodies[0].replaceChildren(...rows);
  const total = document.createElement('tr');
  total.append(cell('all'), cell(''), cell(''), cell(stats.sessions.total, 'n'),
    ...TERMTYPES.map(([, name]) => cell(stats.sessions.termtypes[name], 'n')));
  $('comets').tFoot.replaceChildren(total);
}

function showChart(stats) {
  const perSecond = stats.rates['1s'];
  const values = { acked: 0, failed: 0, stored: 0, dropped: 0 };
  for (const [kind] of KINDS) {
    const d = perSecond.deliveries[kind];
    values.acked += d.acked + d.fromStore;
    values.failed += d.failed;
    values.stored += d.stored;
  }
  values.dropped = Object.values(perSecond.dropped).reduce((/** @type {number} */ a, b) => a + b, 0);
  chart.add(stats.at, values);
  const lastMinute = stats.rates['1m'].deliveries;
  const rows = KINDS.map(([kind, label]) => {
    const d = stats.deliveries[kind];
    const tr = document.createElement('tr');
    tr.dataset.kind = kind;
    tr.append(cell(label), cell(d.acked, 'n'), cell(d.failed, 'n'), cell(d.stored, 'n'),
      cell(d.fromStore, 'n'), cell(rate(lastMinute[kind].acked + lastMinute[kind].fromStore), 'n'));
    return tr;
  });
  $('deliveries').tBodies[0].replaceChildren(...rows);
}

function showQueues(stats) {
  const items = [];
  for (const [name, queue, what] of [
    ['inbox', stats.inbox, 'accepted by /pub, not yet applied'],
    ['outbox', stats.outbox, 'waiting for the webhook or nsqd'],
  ]) {
    const dt = document.createElement('dt');
    dt.textContent = `${name}: ${queue.pending} of ${queue.limit}`;
    const dd = document.createElement('dd');
    const meter = document.createElement('meter');
    meter.max = queue.limit;
    meter.value = queue.pending;
    meter.high = queue.limit / 2;
    meter.optimum = 0;
    const note = document.createElement('span');
    note.className = 'muted';
    note.textContent = what;
    dd.append(meter, note);
    items.push(dt, dd);
  }
  $('queues').replaceChildren(...items);
}

function showRefusals(stats) {
  const lastMinute = stats.rates['1m'];
  const rows = Object.entries(stats.refused).map(([reason, total]) => {
    const tr = document.createElement('tr');
    tr.className = total > 0 ? 'hot' : 'muted';
    tr.append(cell(reason), cell(total, 'n'),
      cell(Math.round(lastMinute.refused[reason] * lastMinute.seconds), 'n'));
    return tr;
  });
  $('refusals').tBodies[0].replaceChildren(...rows);
}

function showCounters(stats) {
  const lastMinute = stats.rates['1m'];
  const rows = [];
  for (const group of ['dropped', 'kicks', 'imUp', 'registrations']) {
    for (const [name, total] of Object.entries(stats[group])) {
      const tr = document.createElement('tr');
      tr.append(cell(`${group} · ${name}`), cell(total, 'n'), cell(rate(lastMinute[group][name]), 'n'));
      rows.push(tr);
    }
  }
  $('counters').tBodies[0].replaceChildren(...rows);
}

/** @param {string} uid */
async function showUser(uid) {
  const user = await api.get(`/v1/users/${encodeURIComponent(uid)}`);
  if (uid !== shownUid) return;
  const rows = user.terminals.map((/** @type {any} */ t) => {
    const tr = document.createElement('tr');
    tr.dataset.termtype = String(t.termtype);
    const name = TERMTYPES.find(([bit]) => bit === t.termtype)?.[1] ?? String(t.termtype);
    const live = t.live ? `on ${t.live.comet} for ${ago(t.live.since)}` : 'not live';
    const logout = document.createElement('button');
    logout.type = 'button';
    logout.className = 'danger';
    logout.textContent = 'Log out';
    logout.disabled = !t.login && !t.live;
    logout.addEventListener('click', () => logOut(uid, t.termtype));
    const action = document.createElement('td');
    action.append(logout);
    tr.append(cell(name), cell(t.login ? 'logged in' : 'logged out', t.login ? '' : 'muted'),
      cell(t.deviceToken ? 'yes' : 'no'), cell(live, t.live ? 'live' : 'muted'),
      cell(t.offline.push, 'n'), cell(t.offline.callback, 'n'), cell(t.offline.im, 'n'), action);
    return tr;
  });
  $('user-table').tBodies[0].replaceChildren(...rows);
  $('user-table').hidden = rows.length === 0;
  $('logout-all').hidden = rows.length === 0;
  $('user-message').textContent = rows.length === 0
    ? `${uid} has no login record and no live terminal.`
    : `${uid}: ${rows.length} terminal type(s).`;
}

/** @param {string} uid @param {number} mask */
async function logOut(uid, mask) {
  try {
    await api.post(`/v1/users/${encodeURIComponent(uid)}/logout?termtype=${mask}`);
    $('user-message').textContent = `Logout of ${uid} (termtype ${mask}) sent.`;
    await refresh();
  } catch (err) {
    if (err instanceof Unauthorized) return askForToken('The API refused that token.');
    $('user-message').textContent = `Logout failed: ${err.message}`;
  }
}

$('token-form').addEventListener('submit', () => {
  api.token = $('token-input').value.trim();
  $('token-input').value = '';
  refresh();
});

$('forget').addEventListener('click', () => {
  api.token = '';
  refresh();
});

$('user-form').addEventListener('submit', async (/** @type {Event} */ e) => {
  e.preventDefault();
  shownUid = $('user-uid').value.trim();
  $('user-message').textContent = 'reading…';
  try {
    await showUser(shownUid);
  } catch (err) {
    if (err instanceof Unauthorized) return askForToken('The API refused that token.');
    $('user-message').textContent = err.message;
    $('user-table').hidden = true;
  }
});

$('logout-all').addEventListener('click', () => logOut(shownUid, 31));

$('send-form').addEventListener('submit', async (/** @type {Event} */ e) => {
  e.preventDefault();
  const kind = $('send-kind').value;
  const mask = [...$('send-types').querySelectorAll('input:checked')]
    .reduce((/** @type {number} */ m, /** @type {HTMLInputElement} */ box) => m | Number(box.value), 0);
  if (mask === 0) {
    $('send-result').textContent = 'Pick at least one terminal type.';
    return;
  }
  const message = {
    receivers: [{ uid: $('send-uid').value.trim(), termtype: mask }],
    flag: 0,
    body: $('send-body').value,
  };
  const topic = topics[kind];
  $('send-result').textContent = 'sending…';
  try {
    await api.post(`/pub?topic=${encodeURIComponent(topic)}`, JSON.stringify(message));
    $('send-result').textContent = `Accepted on ${topic} at ${new Date().toLocaleTimeString()}.`;
  } catch (err) {
    if (err instanceof Unauthorized) return askForToken('The API refused that token.');
    $('send-result').textContent = `Refused: ${err.message}`;
  }
});

refresh();
