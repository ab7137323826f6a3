// The operator console: the actor tree refreshed live, readiness and circuit states, crashes with
// their recent actions and backtrace, dead letters with retry, quarantine, and chaos buttons
// when the server has chaos enabled. Everything comes from the admin API with the admin token.

import { api, ApiError, escapeHtml, saved, shortTime } from './api.js';

const TOKEN_KEY = 'rampart.admin_token';
const FAST_REFRESH_MS = 1_000;
const SLOW_REFRESH_MS = 3_000;

const $ = (id) => document.getElementById(id);
const state = { token: null, chaos: false, timers: [] };

async function start() {
  const token = sessionStorage.getItem(TOKEN_KEY) ?? saved.get(TOKEN_KEY);
  if (!token) return showSignIn();
  await open(token);
}

function showSignIn(message = '') {
  for (const timer of state.timers) clearInterval(timer);
  state.timers = [];
  $('panels').hidden = true;
  $('sign-out').hidden = true;
  $('sign-in').hidden = false;
  $('sign-in-error').textContent = message;
}

async function open(token) {
  let info;
  try {
    info = await api('GET', '/admin/info', { token });
  } catch (error) {
    sessionStorage.removeItem(TOKEN_KEY);
    const why = error instanceof ApiError && error.status === 401 ? 'That token was refused.' : error.message;
    return showSignIn(why);
  }
  state.token = token;
  state.chaos = info.chaos_enabled;
  sessionStorage.setItem(TOKEN_KEY, token);
  $('version').textContent = `v${info.version} · up since ${shortTime(info.started_at)}`;
  $('chaos-note').hidden = !state.chaos;
  $('sign-in').hidden = true;
  $('sign-out').hidden = false;
  $('panels').hidden = false;
  refreshFast();
  refreshSlow();
  state.timers.push(setInterval(refreshFast, FAST_REFRESH_MS), setInterval(refreshSlow, SLOW_REFRESH_MS));
}

function admin(method, path, body) {
  return api(method, path, { token: state.token, body }).catch((error) => {
    if (error instanceof ApiError && error.status === 401) showSignIn('The token is no longer accepted.');
    throw error;
  });
}

async function refreshFast() {
  await Promise.allSettled([refreshActors(), refreshReadiness()]);
}

async function refreshSlow() {
  await Promise.allSettled([refreshCrashes(), refreshDeadLetters(), refreshQuarantine()]);
}

async function refreshActors() {
  const { actors } = await admin('GET', '/admin/actors');
  const body = $('actors').querySelector('tbody');
  body.innerHTML = '';
  for (const actor of actors) {
    const row = document.createElement('tr');
    row.dataset.path = actor.path;
    const depth = actor.path.split('/').length - 2;
    if (actor.summary) {
      row.innerHTML = `
        <td>${escapeHtml(actor.path)}</td>
        <td>${actor.running} running, ${actor.restarting} restarting</td>
        <td class="restarts">${actor.restarts}</td><td></td><td></td><td>${actor.count} in group</td><td></td>`;
    } else {
      const failure = actor.last_failure
        ? `${escapeHtml(shortTime(actor.last_failure.at))} ${escapeHtml(actor.last_failure.message)}`
        : '';
      row.className = `status-${actor.status}${actor.stalled ? ' stalled' : ''}`;
      row.innerHTML = `
        <td>${escapeHtml(actor.path)} <small>${escapeHtml(actor.kind)} · ${escapeHtml(actor.restart)}</small></td>
        <td class="status">${escapeHtml(actor.status)}${actor.stalled ? ' (stalled)' : ''}</td>
        <td class="restarts">${actor.restarts}</td>
        <td>${actor.stalls}</td>
        <td>${actor.backlog}</td>
        <td class="failure">${failure}</td>
        <td>${state.chaos && actor.status === 'running' ? '<button type="button" class="panic">panic</button>' : ''}</td>`;
      row.querySelector('.panic')?.addEventListener('click', () => panic(actor.path));
    }
    // Through the CSSOM: the page's CSP refuses inline style attributes.
    row.firstElementChild.style.paddingLeft = `${0.5 + depth}em`;
    body.appendChild(row);
  }
  $('actors-updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
}

async function panic(path) {
  try {
    await admin('POST', '/admin/chaos/panic', { actor: path });
  } catch (error) {
    alert(`${path}: ${error.message}`);
  }
  refreshActors();
}

async function refreshReadiness() {
  // /ready answers 503 with the same body when failing: read it either way.
  const response = await fetch('/ready');
  const ready = await response.json();
  $('readiness').dataset.state = ready.status === 'pass' ? 'open' : ready.status === 'warn' ? 'reconnecting' : 'closed';
  $('readiness').textContent = `readiness: ${ready.status}`;
  const body = $('checks').querySelector('tbody');
  body.innerHTML = '';
  for (const [name, checks] of Object.entries(ready.checks ?? {})) {
    for (const check of checks) {
      const row = document.createElement('tr');
      row.className = `check-${check.status}`;
      const detail = [check.observedValue, check.output].filter((part) => part !== undefined && part !== null).join(' · ');
      row.innerHTML = `<td>${escapeHtml(name)}</td><td>${escapeHtml(check.status)}</td><td>${escapeHtml(detail)}</td>`;
      body.appendChild(row);
    }
  }
}

async function refreshCrashes() {
  const { crashes } = await admin('GET', '/admin/crashes');
  const list = $('crashes');
  list.innerHTML = crashes.length ? '' : '<li class="empty">No crashes recorded.</li>';
  for (const crash of crashes.slice(0, 50)) {
    const item = document.createElement('li');
    const where = crash.actor ?? crash.route ?? crash.task ?? crash.source;
    item.innerHTML = `<span class="when">${escapeHtml(shortTime(crash.at))}</span>
      <span class="what">${escapeHtml(crash.source)} · ${escapeHtml(where)}</span>
      <span class="text">${escapeHtml(crash.message)}</span>`;
    item.addEventListener('click', () => showCrash(crash.id));
    list.appendChild(item);
  }
}

async function showCrash(id) {
  const crash = await admin('GET', `/admin/crashes/${encodeURIComponent(id)}`);
  const detail = $('crash-detail');
  const actions = Array.isArray(crash.recent_actions) ? crash.recent_actions : [];
  detail.innerHTML = `
    <div class="detail-head"><h3>${escapeHtml(crash.message)}</h3><button type="button" id="close-crash">Close</button></div>
    <p>${escapeHtml(crash.source)} · ${escapeHtml(crash.actor ?? crash.route ?? crash.task ?? '')} · ${escapeHtml(crash.location ?? '')}
      · thread ${escapeHtml(crash.thread ?? '-')} ${crash.request_id ? `· request ${escapeHtml(crash.request_id)}` : ''}</p>
    <h4>Recent actions</h4>
    <ol class="actions">${actions.map((action) => `<li><code>${escapeHtml(JSON.stringify(action))}</code></li>`).join('')}</ol>
    <h4>Backtrace</h4>
    <pre>${escapeHtml(crash.backtrace)}</pre>`;
  detail.hidden = false;
  $('close-crash').addEventListener('click', () => {
    detail.hidden = true;
  });
}

async function refreshDeadLetters() {
  const { dead_letters: letters } = await admin('GET', '/admin/dead-letters', undefined);
  const list = $('dead-letters');
  list.innerHTML = letters.length ? '' : '<li class="empty">No dead letters.</li>';
  for (const letter of letters) {
    const item = document.createElement('li');
    item.innerHTML = `<span class="when">${escapeHtml(shortTime(letter.at))}</span>
      <span class="what">${escapeHtml(letter.kind)} · ${letter.attempts} attempts</span>
      <span class="text">${escapeHtml(letter.reason)}</span>
      <button type="button">Retry</button>`;
    item.querySelector('button').addEventListener('click', async () => {
      try {
        await admin('POST', `/admin/dead-letters/${encodeURIComponent(letter.id)}/retry`);
      } catch (error) {
        alert(error.message);
      }
      refreshDeadLetters();
    });
    list.appendChild(item);
  }
}

async function refreshQuarantine() {
  const { records } = await admin('GET', '/admin/quarantine');
  const list = $('quarantine');
  list.innerHTML = records.length ? '' : '<li class="empty">Nothing quarantined.</li>';
  for (const record of records.slice(-50).reverse()) {
    const item = document.createElement('li');
    item.innerHTML = `<span class="when">${escapeHtml(shortTime(record.at))}</span>
      <span class="what">${escapeHtml(record.actor)} · ${escapeHtml(record.message_type)} · key ${escapeHtml(record.key)}</span>
      <span class="text">${escapeHtml(record.event?.kind ?? '')}</span>`;
    list.appendChild(item);
  }
}

$('token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  open($('token-input').value.trim());
});
$('sign-out').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  showSignIn();
});

start();
