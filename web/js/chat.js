// The chat page: sign in with a token, list and create conversations, chat over /ws with acks
// shown per message, page through history, search with highlights. Keeps its pieces small so
// the video room (SFU) can join this page as another module.

import { api, ApiError, escapeHtml, highlightHtml, saved, shortTime, tokenFromFragment } from './api.js';
import { ChatSocket } from './socket.js';
import { VideoRoom } from './video.js';

const TOKEN_KEY = 'rampart.token';
const HISTORY_PAGE = 50;
const CONVERSATION_PAGE = 50;

const $ = (id) => document.getElementById(id);

const state = {
  token: null,
  me: null,
  socket: null,
  /** id → conversation body from the API (plus `unread`). */
  conversations: new Map(),
  order: [],
  nextBefore: null,
  current: null,
  /** Oldest message id shown in the current thread (history cursor). */
  oldest: null,
  /** Whether the server has an SFU (video rooms), and the room this page is in. */
  videoAvailable: false,
  video: null,
};

async function start() {
  const token = tokenFromFragment() ?? saved.get(TOKEN_KEY);
  if (!token) return showSignIn();
  await signIn(token);
}

function showSignIn(message = '') {
  state.socket?.stop();
  state.socket = null;
  $('app').hidden = true;
  $('sign-out').hidden = true;
  $('sign-in').hidden = false;
  $('me').textContent = '';
  $('sign-in-error').textContent = message;
  setConnection('idle');
}

async function signIn(token) {
  try {
    state.me = await api('GET', '/api/me', { token });
  } catch (error) {
    saved.remove(TOKEN_KEY);
    const why = error instanceof ApiError && error.status === 401 ? 'That token was refused.' : error.message;
    return showSignIn(why);
  }
  state.token = token;
  saved.set(TOKEN_KEY, token);
  $('sign-in').hidden = true;
  $('app').hidden = false;
  $('sign-out').hidden = false;
  $('me').textContent = state.me.display_name === state.me.id ? state.me.id : `${state.me.display_name} (${state.me.id})`;
  connect();
  state.videoAvailable = await VideoRoom.available(token);
  await loadConversations(true);
}

function connect() {
  const socket = new ChatSocket(state.token);
  state.socket = socket;
  socket.addEventListener('state', (event) => setConnection(event.detail.state));
  socket.addEventListener('message', (event) => onMessage(event.detail));
  socket.addEventListener('ack', (event) => onAck(event.detail));
  socket.addEventListener('frame-error', (event) => onFrameError(event.detail));
  socket.start();
}

function setConnection(connection) {
  const label = { idle: 'offline', connecting: 'connecting…', open: 'online', reconnecting: 'reconnecting…', closed: 'offline' };
  $('connection').dataset.state = connection;
  $('connection').textContent = label[connection] ?? connection;
}

// ---- conversations ----------------------------------------------------------------------------

async function loadConversations(reset) {
  const query = { limit: CONVERSATION_PAGE, before: reset ? undefined : state.nextBefore };
  try {
    const page = await api('GET', '/api/conversations', { token: state.token, query });
    if (reset) {
      state.order = [];
    }
    for (const conversation of page.conversations) {
      const known = state.conversations.get(conversation.id);
      state.conversations.set(conversation.id, { ...conversation, unread: known?.unread ?? 0 });
      if (!state.order.includes(conversation.id)) state.order.push(conversation.id);
    }
    state.nextBefore = page.next_before;
    $('more-conversations').hidden = !page.next_before;
    renderConversations();
  } catch (error) {
    $('aside-error').textContent = error.message;
  }
}

function renderConversations() {
  const list = $('conversations');
  list.innerHTML = '';
  for (const id of state.order) {
    const conversation = state.conversations.get(id);
    const item = document.createElement('li');
    item.dataset.id = id;
    item.className = id === state.current ? 'current' : '';
    const others = conversation.members.filter((member) => member !== state.me.id);
    const title = conversation.title || others.join(', ') || 'Just you';
    const latest = conversation.latest_message;
    item.innerHTML = `
      <span class="title">${escapeHtml(title)}</span>
      ${conversation.unread ? `<span class="unread">${conversation.unread}</span>` : ''}
      <span class="preview">${latest ? `${escapeHtml(latest.sender)}: ${escapeHtml(latest.body)}` : '<em>no messages yet</em>'}</span>`;
    item.addEventListener('click', () => openConversation(id));
    list.appendChild(item);
  }
}

/** Moves a conversation to the top with `message` as its latest. */
function bump(message) {
  const conversation = state.conversations.get(message.conversation);
  if (!conversation) {
    // A conversation created by someone else: fetch it.
    api('GET', `/api/conversations/${encodeURIComponent(message.conversation)}`, { token: state.token })
      .then((fetched) => {
        state.conversations.set(fetched.id, { ...fetched, unread: message.conversation === state.current ? 0 : 1 });
        state.order = [fetched.id, ...state.order.filter((id) => id !== fetched.id)];
        renderConversations();
      })
      .catch(() => {});
    return;
  }
  conversation.latest_message = message;
  conversation.last_activity_at = message.created_at;
  if (message.conversation !== state.current && message.sender !== state.me.id) conversation.unread += 1;
  state.order = [message.conversation, ...state.order.filter((id) => id !== message.conversation)];
  renderConversations();
}

async function createConversation(event) {
  event.preventDefault();
  $('aside-error').textContent = '';
  const members = $('new-members').value.split(/[\s,]+/).filter(Boolean);
  try {
    const created = await api('POST', '/api/conversations', {
      token: state.token,
      body: { members, title: $('new-title').value.trim() },
    });
    $('new-members').value = '';
    $('new-title').value = '';
    await loadConversations(true);
    await openConversation(created.id);
  } catch (error) {
    $('aside-error').textContent = error.message;
  }
}

// ---- the open conversation -------------------------------------------------------------------

async function openConversation(id) {
  state.current = id;
  state.oldest = null;
  const conversation = state.conversations.get(id);
  if (conversation) conversation.unread = 0;
  renderConversations();
  $('search-results').hidden = true;
  $('thread-title').textContent = conversation?.title || 'Conversation';
  $('thread-members').textContent = conversation ? `Members: ${conversation.members.join(', ')}` : '';
  $('messages').innerHTML = '';
  $('composer').hidden = false;
  if (state.video && state.video.room !== id) leaveVideo();
  $('video').hidden = !state.videoAvailable;
  await loadOlder();
  $('body').focus();
}

async function loadOlder() {
  const id = state.current;
  try {
    const page = await api('GET', `/api/conversations/${encodeURIComponent(id)}/messages`, {
      token: state.token,
      query: { limit: HISTORY_PAGE, before: state.oldest ?? undefined },
    });
    if (id !== state.current) return;
    const list = $('messages');
    const anchor = list.firstChild;
    // Newest first from the API: insert oldest at the top.
    for (const message of [...page.messages].reverse()) {
      state.socket?.remember(message.id);
      if (!list.querySelector(`[data-id="${CSS.escape(message.id)}"]`)) {
        list.insertBefore(renderMessage(message), anchor);
      }
    }
    if (page.messages.length) state.oldest = page.messages[page.messages.length - 1].id;
    $('older').hidden = page.messages.length < HISTORY_PAGE;
    if (!anchor) list.lastElementChild?.scrollIntoView({ block: 'end' });
  } catch (error) {
    $('aside-error').textContent = error.message;
  }
}

function renderMessage(message, status = 'stored') {
  const item = document.createElement('li');
  if (message.id) item.dataset.id = message.id;
  if (message.client_msg_id) item.dataset.clientMsgId = message.client_msg_id;
  item.className = `message ${message.sender === state.me.id ? 'mine' : ''}`;
  item.dataset.status = status;
  item.innerHTML = `
    <span class="sender">${escapeHtml(message.sender)}</span>
    <span class="body">${escapeHtml(message.body)}</span>
    <span class="meta"><time>${escapeHtml(shortTime(message.created_at))}</time>
      <span class="status" title="${status}"></span></span>`;
  return item;
}

function append(message, status) {
  const list = $('messages');
  const item = renderMessage(message, status);
  list.appendChild(item);
  item.scrollIntoView({ block: 'end' });
  return item;
}

function onMessage(message) {
  bump(message);
  if (message.conversation !== state.current) return;
  if ($('messages').querySelector(`[data-id="${CSS.escape(message.id)}"]`)) return;
  append(message, 'stored');
}

function send(event) {
  event.preventDefault();
  const input = $('body');
  const body = input.value;
  if (!body.trim() || !state.current) return;
  const clientMsgId = state.socket.send(state.current, body);
  append({ client_msg_id: clientMsgId, sender: state.me.id, body, created_at: new Date().toISOString() }, 'pending');
  input.value = '';
}

function onAck(ack) {
  const item = $('messages').querySelector(`[data-client-msg-id="${CSS.escape(ack.client_msg_id)}"]`);
  if (!item) return;
  item.dataset.status = 'acked';
  item.dataset.id = ack.id;
  item.querySelector('.status').title = 'stored';
  state.socket.remember(ack.id);
  const conversation = state.conversations.get(state.current);
  if (conversation) {
    bump({ id: ack.id, conversation: state.current, sender: state.me.id, body: item.querySelector('.body').textContent, created_at: ack.created_at });
  }
}

function onFrameError(error) {
  if (!error.client_msg_id) return;
  const item = $('messages').querySelector(`[data-client-msg-id="${CSS.escape(error.client_msg_id)}"]`);
  if (!item) return;
  const retrying = ['unavailable', 'internal', 'rate_limited'].includes(error.code);
  item.dataset.status = retrying ? 'pending' : 'failed';
  item.querySelector('.status').title = `${error.code}: ${error.message}`;
}

// ---- search ----------------------------------------------------------------------------------

async function search(event) {
  event.preventDefault();
  const q = $('search-input').value.trim();
  if (!q) return;
  try {
    const results = await api('GET', '/api/search', { token: state.token, query: { q, limit: 50 } });
    const hits = $('hits');
    hits.innerHTML = '';
    if (!results.hits.length) hits.innerHTML = '<li class="empty">No messages match.</li>';
    for (const hit of results.hits) {
      const item = document.createElement('li');
      const conversation = state.conversations.get(hit.conversation);
      item.innerHTML = `
        <span class="where">${escapeHtml(conversation?.title || 'conversation')} · ${escapeHtml(hit.sender)} · ${escapeHtml(shortTime(hit.created_at))}</span>
        <span class="highlight">${highlightHtml(hit.highlight)}</span>`;
      item.addEventListener('click', () => openConversation(hit.conversation));
      hits.appendChild(item);
    }
    $('search-results').hidden = false;
  } catch (error) {
    $('aside-error').textContent = error.message;
  }
}

// ---- wiring ----------------------------------------------------------------------------------

$('token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  signIn($('token-input').value.trim());
});
$('sign-out').addEventListener('click', () => {
  saved.remove(TOKEN_KEY);
  state.conversations.clear();
  state.order = [];
  state.current = null;
  leaveVideo();
  showSignIn();
});
$('new-conversation').addEventListener('submit', createConversation);
$('composer').addEventListener('submit', send);
$('older').addEventListener('click', loadOlder);
$('more-conversations').addEventListener('click', () => loadConversations(false));
$('search-form').addEventListener('submit', search);
$('video-join').addEventListener('click', joinVideo);
$('video-leave').addEventListener('click', leaveVideo);
$('video-mic').addEventListener('click', () => toggleMute('audio', 'video-mic', 'Mute mic', 'Unmute mic'));
$('video-camera').addEventListener('click', () => toggleMute('video', 'video-camera', 'Camera off', 'Camera on'));
$('close-search').addEventListener('click', () => {
  $('search-results').hidden = true;
});

// ---- video room --------------------------------------------------------------------------------

function joinVideo() {
  if (!state.current || state.video) return;
  const room = new VideoRoom(state.token, state.current);
  state.video = room;
  window.rampartVideo = room;
  room.addEventListener('state', (event) => setVideoState(event.detail.state, event.detail.detail));
  room.addEventListener('local', (event) => showTile('local', `${state.me.id} (you)`, event.detail.stream, true));
  room.addEventListener('stream', (event) => showTile(event.detail.participant, event.detail.user, event.detail.stream, false));
  room.addEventListener('stream-ended', (event) => document.querySelector(`#video-tiles [data-participant="${CSS.escape(event.detail.participant)}"]`)?.remove());
  room.addEventListener('participants', () => {
    for (const [participant, info] of room.participants) {
      const label = document.querySelector(`#video-tiles [data-participant="${CSS.escape(participant)}"] figcaption`);
      if (label) label.textContent = info.user;
    }
  });
  room.addEventListener('error', (event) => setVideoState(room.state, `${event.detail.code}: ${event.detail.message}`));
  for (const id of ['video-mic', 'video-camera', 'video-leave']) $(id).hidden = false;
  $('video-join').hidden = true;
  room.start();
}

function leaveVideo() {
  state.video?.leave();
  state.video = null;
  $('video-tiles').innerHTML = '';
  for (const id of ['video-mic', 'video-camera', 'video-leave']) $(id).hidden = true;
  $('video-mic').textContent = 'Mute mic';
  $('video-camera').textContent = 'Camera off';
  $('video-join').hidden = false;
  setVideoState('idle');
}

function toggleMute(kind, button, muteLabel, unmuteLabel) {
  if (!state.video) return;
  const muted = $(button).textContent === muteLabel;
  state.video.setMuted(kind, muted);
  $(button).textContent = muted ? unmuteLabel : muteLabel;
}

function setVideoState(videoState, detail = '') {
  const label = { idle: '', connecting: 'connecting…', live: 'live', reconnecting: 'reconnecting…', failed: 'unavailable' };
  $('video-state').dataset.state = videoState;
  $('video-state').textContent = [label[videoState] ?? videoState, detail].filter(Boolean).join(' — ');
}

function showTile(participant, name, stream, muted) {
  let tile = document.querySelector(`#video-tiles [data-participant="${CSS.escape(participant)}"]`);
  if (!tile) {
    tile = document.createElement('figure');
    tile.dataset.participant = participant;
    tile.className = participant === 'local' ? 'tile local' : 'tile';
    const video = document.createElement('video');
    video.autoplay = true;
    video.playsInline = true;
    video.muted = muted;
    const caption = document.createElement('figcaption');
    tile.append(video, caption);
    $('video-tiles').append(tile);
  }
  tile.querySelector('figcaption').textContent = name;
  tile.querySelector('video').srcObject = stream;
}

start();
