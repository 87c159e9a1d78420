// The drawbridge console: plain JavaScript over the admin JSON API.
// Every change is one API call; the page shows what /api/v1/status says,
// polled every POLL_MS.
'use strict';

const POLL_MS = 1500;
const state = { csrf: null, auth: null, timer: null, sites: new Map(), backends: new Map(), servers: new Map(), shape: '' };

function $(id) { return document.getElementById(id); }

// An element with attributes (on* as listeners) and children.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

let uid = 0;
// A labelled input: the wrapper, and the input.
function field(label, attrs) {
  const id = 'f' + (++uid);
  const input = el('input', Object.assign({ id }, attrs));
  return [el('p', { class: 'field' }, el('label', { for: id, text: label }), input), input];
}

// A labelled select of [value, text, selected] options: the wrapper, and
// the select.
function choice(label, attrs, options) {
  const id = 'f' + (++uid);
  const select = el('select', Object.assign({ id }, attrs),
    ...options.map(([value, text, selected]) => el('option', { value, text, selected })));
  return [el('p', { class: 'field' }, el('label', { for: id, text: label }), select), select];
}

function say(text, bad) {
  const m = $('msg');
  m.textContent = text;
  m.className = 'msg ' + (bad ? 'bad' : 'ok');
}

async function call(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (state.csrf && method !== 'GET') headers['X-Drawbridge-CSRF'] = state.csrf;
  let r;
  try {
    r = await fetch(path, {
      method, headers, credentials: 'same-origin', cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    return { status: 0, data: { error: 'the admin listener does not answer: ' + e.message } };
  }
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (r.status === 401 && state.auth === 'token' && !path.startsWith('/console/')) showLogin('The session has ended: log in again.');
  return { status: r.status, data };
}

// A change through the API; says what happened.
async function change(method, path, body, done) {
  const r = await call(method, path, body);
  if (r.status >= 200 && r.status < 300) {
    say(done);
    refresh();
    return r.data;
  }
  say((r.data && r.data.error) || ('error ' + r.status), true);
  return null;
}

function enc(s) { return encodeURIComponent(s); }

// ---------------------------------------------------------------- login

function showLogin(error) {
  stopPolling();
  state.csrf = null;
  $('console').hidden = true;
  $('logout').hidden = true;
  $('who').textContent = '';
  $('login').hidden = false;
  $('login-error').textContent = error || '';
  $('token').value = '';
  $('token').focus();
}

function showConsole() {
  $('login').hidden = true;
  $('login-error').textContent = '';
  $('console').hidden = false;
  $('logout').hidden = state.auth !== 'token';
  $('who').textContent = state.auth === 'token' ? 'logged in with the admin token' : 'loopback client, no token configured';
  startPolling();
}

async function start() {
  const r = await call('GET', '/console/session');
  if (r.status !== 200 || !r.data) {
    $('login').hidden = true;
    say((r.data && r.data.error) || ('error ' + r.status), true);
    return;
  }
  state.auth = r.data.auth;
  if (r.data.auth === 'token' && !r.data.session) { showLogin(''); return; }
  state.csrf = r.data.csrf || null;
  showConsole();
}

$('login-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const r = await call('POST', '/console/login', { token: $('token').value });
  $('token').value = '';
  if (r.status === 200 && r.data && r.data.csrf) {
    state.csrf = r.data.csrf;
    say('Logged in.');
    showConsole();
  } else {
    $('login-error').textContent = r.status === 401
      ? 'Wrong token.'
      : ((r.data && r.data.error) || ('error ' + r.status));
    $('token').focus();
  }
});

$('logout').addEventListener('click', async () => {
  const r = await call('POST', '/console/logout');
  if (r.status === 200) { showLogin(''); say('Logged out.'); }
  else say((r.data && r.data.error) || ('error ' + r.status), true);
});

// -------------------------------------------------------------- polling

function startPolling() {
  stopPolling();
  refresh();
}

function stopPolling() {
  if (state.timer) clearTimeout(state.timer);
  state.timer = null;
}

let busy = false;
async function refresh() {
  if (busy) return;
  busy = true;
  try {
    const r = await call('GET', '/api/v1/status');
    if (r.status === 200 && r.data) {
      render(r.data);
      await drainViews(r.data);
      $('updated').textContent = 'Updated ' + new Date().toLocaleTimeString();
    } else if (r.status !== 401) {
      say((r.data && r.data.error) || ('status: error ' + r.status), true);
    }
  } finally {
    busy = false;
  }
  if (!$('console').hidden) {
    if (state.timer) clearTimeout(state.timer);
    state.timer = setTimeout(refresh, POLL_MS);
  }
}

// The page is built once per set of sites and backends and updated in
// place, so that what an operator types survives the polling. Server cards
// are keyed by name: a server added or deleted at runtime gets or loses its
// card, the others stay as they are.
function render(status) {
  const shape = JSON.stringify([status.sites.map((s) => s.name), status.backends.map((b) => b.name)]);
  if (shape !== state.shape) {
    state.shape = shape;
    state.sites.clear();
    state.backends.clear();
    state.servers.clear();
    $('sites').replaceChildren(...status.sites.map(siteCard));
    $('backends').replaceChildren(...status.backends.map(backendBlock));
  }
  for (const s of status.sites) updateSite(s);
  for (const b of status.backends) {
    syncServers(b);
    for (const s of b.servers) updateServer(s, b.servers.length);
  }
}

// ---------------------------------------------------------------- sites

function rfc3339(local) {
  // A datetime-local value is local time; the API takes UTC RFC 3339.
  const d = new Date(local);
  if (isNaN(d.getTime())) return null;
  return d.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

function siteCard(site) {
  const name = site.name;
  const base = '/api/v1/sites/' + enc(name);
  const v = {};
  const badge = el('span', { class: 'badge' });
  const facts = el('dl', { class: 'facts' });
  const [fMsg, msg] = field('Message on the maintenance page', { type: 'text', maxlength: '500', 'data-input': 'message' });
  const [fRetry, retry] = field('Retry-After (seconds)', { type: 'number', min: '0', inputmode: 'numeric', 'data-input': 'retry_after' });
  const [fFrom, from] = field('Window from (optional)', { type: 'datetime-local', 'data-input': 'from' });
  const [fUntil, until] = field('Window until (optional)', { type: 'datetime-local', 'data-input': 'until' });
  const on = el('button', {
    type: 'button', class: 'danger', 'data-action': 'maint-on',
    onclick: () => {
      const body = { enabled: true };
      if (msg.value.trim() !== '') body.message = msg.value.trim();
      if (retry.value !== '') body.retry_after = Number(retry.value);
      if (from.value) body.from = rfc3339(from.value);
      if (until.value) body.until = rfc3339(until.value);
      change('PUT', base + '/maintenance', body, 'Site ' + name + ': maintenance on.');
    },
  }, 'Maintenance on');
  const off = el('button', {
    type: 'button', 'data-action': 'maint-off',
    onclick: () => change('PUT', base + '/maintenance', { enabled: false }, 'Site ' + name + ': maintenance off.'),
  }, 'Maintenance off');

  const allowList = el('ul', { class: 'allow', 'aria-label': 'Allow list of ' + name });
  const [fCidr, cidr] = field('Address or CIDR to let through', { type: 'text', placeholder: '203.0.113.7/32', 'data-input': 'cidr' });
  const add = el('button', {
    type: 'button', 'data-action': 'allow-add',
    onclick: async () => {
      if (!cidr.value.trim()) { say('Enter an address or CIDR.', true); cidr.focus(); return; }
      if (await change('POST', base + '/allow', { cidr: cidr.value.trim() }, 'Site ' + name + ': ' + cidr.value.trim() + ' allowed.')) cidr.value = '';
    },
  }, 'Add');

  const [fTtl, ttl] = field('Bypass token valid for', { type: 'text', value: '8h', 'data-input': 'ttl' });
  const secret = el('div', { class: 'secret', hidden: true, role: 'status', 'aria-live': 'polite', 'data-output': 'bypass' });
  const issue = el('button', {
    type: 'button', 'data-action': 'bypass',
    onclick: async () => {
      const t = await change('POST', base + '/bypass-tokens', { ttl: ttl.value.trim() || '8h' }, 'Site ' + name + ': bypass token issued.');
      if (t) showSecret(secret, t, site);
    },
  }, 'Issue bypass token');

  v.badge = badge; v.facts = facts; v.allowList = allowList; v.allowKey = null; v.name = name; v.base = base;
  state.sites.set(name, v);
  const hosts = (site.hosts || []).join(', ') || 'default site';
  return el('article', { class: 'card', 'data-site': name, 'aria-labelledby': 'site-' + name },
    el('h3', { id: 'site-' + name }, name + ' ', badge),
    el('p', { class: 'meta', text: hosts + ' → backend ' + site.backend }),
    facts,
    el('h4', { text: 'Maintenance' }),
    fMsg,
    el('div', { class: 'row' }, fRetry, fFrom, fUntil),
    el('div', { class: 'row' }, on, off),
    el('h4', { text: 'Allow list' }),
    allowList,
    el('div', { class: 'row' }, fCidr, add),
    el('h4', { text: 'Bypass' }),
    el('div', { class: 'row' }, fTtl, issue),
    secret,
  );
}

function showSecret(box, t, site) {
  const cookie = t.cookie;
  const name = t.cookie_name || cookie.split('=')[0];
  const host = (site.hosts && site.hosts[0]) || 'the site';
  const hide = el('button', { type: 'button', 'data-action': 'bypass-hide', onclick: () => { box.hidden = true; box.replaceChildren(); } }, 'Hide');
  box.replaceChildren(
    el('strong', { text: 'Shown once: copy it now. Valid until ' + t.expires + '.' }),
    el('p', {}, 'Cookie: ', el('code', { 'data-output': 'cookie', text: cookie })),
    el('p', {}, 'In a browser on ' + host + ', open the developer console and run ',
      el('code', { text: 'document.cookie = "' + cookie + '; path=/"' }), ', then reload.'),
    el('p', {}, 'With curl: ', el('code', { text: "curl -b '" + cookie + "' https://" + (site.hosts && site.hosts[0] || 'HOST') + '/' })),
    el('p', { class: 'meta', text: 'Cookie name ' + name + '; it lets the holder through maintenance until it expires.' }),
    hide,
  );
  box.hidden = false;
}

function updateSite(site) {
  const v = state.sites.get(site.name);
  if (!v) return;
  const m = site.maintenance || {};
  v.badge.textContent = site.in_maintenance ? 'in maintenance' : 'serving';
  v.badge.className = 'badge ' + (site.in_maintenance ? 'bad' : 'ok');
  v.badge.setAttribute('data-status', site.in_maintenance ? 'maintenance' : 'serving');
  const rows = [
    ['Maintenance', m.enabled ? 'on' : 'off'],
    ['Message', m.message || '—'],
    ['Retry-After', (m.retry_after !== undefined ? m.retry_after + ' s' : '—')],
  ];
  if (m.paths && m.paths.length) rows.push(['Paths', m.paths.join(', ')]);
  if (m.from) rows.push(['From', m.from]);
  if (m.until) rows.push(['Until', m.until]);
  setFacts(v.facts, rows);
  const allow = site.allow || [];
  const key = allow.join(' ');
  if (key !== v.allowKey) {
    v.allowKey = key;
    v.allowList.replaceChildren(...(allow.length ? allow.map((c) => el('li', {},
      el('code', { text: c }),
      el('button', {
        type: 'button', 'data-action': 'allow-remove', 'aria-label': 'Remove ' + c + ' from the allow list of ' + site.name,
        onclick: () => change('DELETE', v.base + '/allow', { cidr: c }, 'Site ' + site.name + ': ' + c + ' removed.'),
      }, 'Remove'))) : [el('li', { class: 'meta', text: 'empty: nobody gets through maintenance by address' })]));
  }
}

function setFacts(dl, rows) {
  const key = JSON.stringify(rows);
  if (dl.dataset.key === key) return;
  dl.dataset.key = key;
  dl.replaceChildren(...rows.flatMap(([k, val]) => [el('dt', { text: k }), el('dd', { text: String(val) })]));
}

// -------------------------------------------------------------- servers

function backendBlock(backend) {
  const list = el('div', { class: 'servers' });
  state.backends.set(backend.name, { list, keys: [] });
  return el('section', { class: 'backend', 'data-backend': backend.name, 'aria-label': 'Backend ' + backend.name },
    el('h3', { text: 'Backend ' + backend.name }),
    list,
    addServerForm(backend.name));
}

// The backend's server cards as the API lists them: the cards of deleted
// servers go, new servers get one, the others are left in place (a moved
// element would lose the keyboard focus).
function syncServers(backend) {
  const blk = state.backends.get(backend.name);
  if (!blk) return;
  const keys = backend.servers.map((s) => backend.name + '/' + s.name);
  if (keys.join('\n') === blk.keys.join('\n')) return;
  for (const k of blk.keys) {
    if (keys.includes(k)) continue;
    const v = state.servers.get(k);
    if (v) v.card.remove();
    state.servers.delete(k);
  }
  backend.servers.forEach((s, i) => {
    const k = keys[i];
    const card = (state.servers.get(k) || { card: serverCard(backend.name, s) }).card;
    if (blk.list.children[i] !== card) blk.list.insertBefore(card, blk.list.children[i] || null);
  });
  blk.keys = keys;
}

function addServerForm(backend) {
  const [fName, name] = field('Name', { type: 'text', required: true, maxlength: '100', placeholder: 'app-03', autocomplete: 'off', 'data-input': 'server-name' });
  const [fAddr, addr] = field('Address (ip:port)', { type: 'text', required: true, placeholder: '10.0.0.3:8080', autocomplete: 'off', 'data-input': 'server-addr' });
  const [fWeight, weight] = field('Weight (optional, 0–256)', { type: 'number', min: '0', max: '256', inputmode: 'numeric', placeholder: '1', 'data-input': 'server-weight' });
  const [fState, initial] = choice('Initial state', { 'data-input': 'server-state' },
    [['ready', 'Ready'], ['drain', 'Drain'], ['maint', 'Maint', true]]);
  const [fMax, maxConns] = field('Max conns (optional)', { type: 'number', min: '0', inputmode: 'numeric', placeholder: 'no limit', 'data-input': 'server-max-conns' });
  const [fSlow, slowstart] = field('Slow start (optional)', { type: 'text', placeholder: '30s', autocomplete: 'off', 'data-input': 'server-slowstart' });
  const form = el('form', {
    class: 'add-server', 'aria-label': 'Add a server to backend ' + backend, novalidate: true,
    onsubmit: async (ev) => {
      ev.preventDefault();
      const body = { name: name.value.trim(), addr: addr.value.trim(), state: initial.value };
      if (!body.name) { say('Enter the new server\'s name.', true); name.focus(); return; }
      if (!body.addr) { say('Enter the new server\'s address (ip:port).', true); addr.focus(); return; }
      if (weight.value !== '') body.weight = Number(weight.value);
      if (maxConns.value !== '') body.max_conns = Number(maxConns.value);
      if (slowstart.value.trim() !== '') body.slowstart = slowstart.value.trim();
      if (await change('POST', '/api/v1/backends/' + enc(backend) + '/servers', body,
        'Server ' + backend + '/' + body.name + ' added (' + body.state + ').')) {
        form.reset();
      }
    },
  },
  el('h4', { text: 'Add server' }),
  el('div', { class: 'row' }, fName, fAddr),
  el('div', { class: 'row' }, fMax, fSlow),
  el('div', { class: 'row' }, fWeight, fState,
    el('button', { type: 'submit', 'data-action': 'server-add' }, 'Add server')));
  return form;
}

// Why a server cannot be deleted now, or null if it can.
function whyNotDelete(server, count) {
  if (count <= 1) return 'The backend\'s last server cannot be deleted.';
  if (server.state !== 'maint') return 'Set it to Maint to delete it.';
  if (server.inflight > 0) return 'Wait until nothing is in flight (' + server.inflight + ' now) to delete it.';
  return null;
}

function serverCard(backend, server) {
  const key = backend + '/' + server.name;
  const base = '/api/v1/backends/' + enc(backend) + '/servers/' + enc(server.name);
  const v = { base, key, addr: server.addr, buttons: {} };
  const badge = el('span', { class: 'badge' });
  const facts = el('dl', { class: 'facts' });
  const stateButtons = ['ready', 'drain', 'maint'].map((s) => {
    const b = el('button', {
      type: 'button', 'data-action': 'state-' + s, 'aria-pressed': 'false',
      onclick: () => change('PUT', base + '/state', { state: s }, 'Server ' + key + ': ' + s + '.'),
    }, { ready: 'Ready', drain: 'Drain', maint: 'Maint' }[s]);
    v.buttons[s] = b;
    return b;
  });
  const [fWeight, weight] = field('Weight (0–256)', { type: 'number', min: '0', max: '256', inputmode: 'numeric', value: String(server.weight), 'data-input': 'weight' });
  const setWeight = el('button', {
    type: 'button', 'data-action': 'weight',
    onclick: () => {
      if (weight.value === '') { say('Enter a weight.', true); weight.focus(); return; }
      change('PUT', base + '/weight', { weight: Number(weight.value) }, 'Server ' + key + ': weight ' + weight.value + '.');
    },
  }, 'Set weight');
  const drain = el('div', { class: 'drain', 'data-output': 'drain', hidden: true });
  const hint = el('span', { class: 'meta', id: 'delete-hint-' + key, 'data-output': 'delete-hint' });
  const del = el('button', {
    type: 'button', class: 'danger', 'data-action': 'server-delete', disabled: true,
    'aria-label': 'Delete server ' + key, 'aria-describedby': 'delete-hint-' + key,
    onclick: () => {
      if (!window.confirm('Delete server ' + key + ' (' + v.addr + ') from the backend?')) return;
      change('DELETE', base, undefined, 'Server ' + key + ' deleted.');
    },
  }, 'Delete');
  const meta = el('p', { class: 'meta' });
  v.badge = badge; v.facts = facts; v.drain = drain; v.weight = weight; v.state = server.state;
  v.meta = meta; v.del = del; v.hint = hint;
  state.servers.set(key, v);
  return v.card = el('article', { class: 'card', 'data-server': key, 'aria-labelledby': 'server-' + key },
    el('h3', { id: 'server-' + key }, server.name + ' ', badge),
    meta,
    facts,
    el('div', { class: 'row', role: 'group', 'aria-label': 'State of ' + key }, ...stateButtons),
    el('div', { class: 'row' }, fWeight, setWeight),
    drain,
    el('div', { class: 'row delete' }, del, hint),
  );
}

function ago(rfc) {
  if (!rfc) return 'never';
  const s = Math.max(0, Math.round((Date.now() - Date.parse(rfc)) / 1000));
  return rfc + ' (' + s + ' s ago)';
}

function updateServer(server, count) {
  const v = state.servers.get(server.backend + '/' + server.name);
  if (!v) return;
  v.state = server.state;
  v.addr = server.addr;
  const meta = server.addr + (server.backup ? ' (backup)' : '') + (server.added ? ', added at runtime' : '');
  if (v.meta.textContent !== meta) v.meta.textContent = meta;
  const why = whyNotDelete(server, count);
  v.del.disabled = why !== null;
  if (v.hint.textContent !== (why || '')) v.hint.textContent = why || '';
  v.card.setAttribute('data-inflight', String(server.inflight));
  v.card.setAttribute('data-weight', String(server.weight));
  v.badge.textContent = server.state + ', ' + server.health;
  v.badge.className = 'badge ' + (server.health !== 'up' ? 'bad' : server.state === 'ready' ? 'ok' : 'warn');
  v.badge.setAttribute('data-state', server.state);
  const rows = [
    ['State', server.state],
    ['Health', server.health],
    ['Weight', server.weight],
    ['In flight', server.inflight],
    ['Last sticky request', ago(server.sticky_last_seen)],
    ['Requests', server.requests_total],
  ];
  if (server.clients !== undefined) rows.push(['Clients', server.clients]);
  setFacts(v.facts, rows);
  for (const [s, b] of Object.entries(v.buttons)) b.setAttribute('aria-pressed', String(s === server.state));
  if (server.state === 'ready') {
    v.drain.hidden = true;
    v.drain.className = 'drain';
    v.drain.replaceChildren();
    v.verdict = null;
    v.figures = null;
    v.drain.removeAttribute('data-safe');
  }
}

function idleSeconds() {
  const n = Number($('idle').value);
  return Number.isFinite(n) && n >= 0 ? Math.floor(n) : 60;
}

// The drain verdict of every server out of rotation, from the API.
async function drainViews(status) {
  const idle = idleSeconds();
  const out = [];
  for (const b of status.backends) {
    for (const s of b.servers) {
      if (s.state === 'ready') continue;
      const v = state.servers.get(b.name + '/' + s.name);
      if (!v) continue;
      out.push(call('GET', v.base + '/drained?timeout=0&idle=' + idle).then((r) => {
        if (!r.data || (r.status !== 200 && r.status !== 408) || v.state === 'ready') return;
        showDrain(v, r.data, idle);
      }));
    }
  }
  await Promise.all(out);
}

// The verdict is a live region (announced when it changes); the figures,
// which change every second, are not.
function showDrain(v, d, idle) {
  const since = d.seconds_since_sticky;
  const safe = d.drained === true;
  if (!v.verdict) {
    v.verdict = el('strong', { role: 'status', 'aria-live': 'polite' });
    v.figures = el('span');
    v.drain.replaceChildren(v.verdict, v.figures);
  }
  const verdict = safe ? 'Safe to stop' : 'Draining: not yet safe to stop';
  if (v.verdict.textContent !== verdict) v.verdict.textContent = verdict;
  v.figures.textContent = 'In flight: ' + d.inflight + '. ' + (since === null || since === undefined
    ? 'No sticky request seen.'
    : 'Last sticky request ' + since + ' s ago (needs ' + idle + ' s).');
  v.drain.className = 'drain' + (safe ? ' safe' : '');
  v.drain.setAttribute('data-safe', String(safe));
  v.drain.hidden = false;
}

document.addEventListener('visibilitychange', () => {
  if (!document.hidden && !$('console').hidden) refresh();
});

start();
