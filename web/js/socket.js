// The chat WebSocket (protocol v1) as a client must run it: reconnect with backoff, resend what
// was not acked (sends are idempotent by client_msg_id), confirm every pushed message with
// `delivered`, and hand each message id to the page once however often it is delivered.

import { parseFrame, randomId } from './api.js';

const BACKOFF_START_MS = 500;
const BACKOFF_MAX_MS = 10_000;
/** Codes after which the same frame may simply be sent again. */
const RETRYABLE = new Set(['unavailable', 'internal', 'rate_limited']);
const RETRY_DELAY_MS = 1_000;
/** Ids remembered for dedupe (a backlog replay repeats what was not confirmed). */
const SEEN_LIMIT = 20_000;

export class ChatSocket extends EventTarget {
  constructor(token) {
    super();
    this.token = token;
    this.ws = null;
    this.state = 'idle';
    this.backoff = BACKOFF_START_MS;
    this.stopped = false;
    /** client_msg_id → send frame, until acked or refused for good. */
    this.pending = new Map();
    this.seen = new Set();
    this.connects = 0;
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.ws?.close(1000, 'bye');
  }

  connect() {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const ws = new WebSocket(`${scheme}://${location.host}/ws?token=${encodeURIComponent(this.token)}`);
    this.ws = ws;
    this.setState(this.connects === 0 ? 'connecting' : 'reconnecting');
    ws.onopen = () => {
      this.connects += 1;
      this.backoff = BACKOFF_START_MS;
      this.setState('open');
      for (const frame of this.pending.values()) ws.send(JSON.stringify(frame));
    };
    ws.onmessage = (event) => {
      const frame = parseFrame(event.data);
      if (frame) this.onFrame(frame);
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) {
        this.setState('closed');
        return;
      }
      this.setState('reconnecting');
      const delay = this.backoff * (0.5 + Math.random());
      this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
      this.timer = setTimeout(() => this.connect(), delay);
    };
  }

  onFrame(frame) {
    switch (frame.type) {
      case 'ack':
        this.pending.delete(frame.client_msg_id);
        this.emit('ack', frame);
        break;
      case 'error':
        if (frame.client_msg_id && this.pending.has(frame.client_msg_id)) {
          if (RETRYABLE.has(frame.code)) {
            const id = frame.client_msg_id;
            setTimeout(() => this.resend(id), RETRY_DELAY_MS);
          } else {
            this.pending.delete(frame.client_msg_id);
          }
        }
        this.emit('frame-error', frame);
        break;
      case 'message':
        this.raw({ type: 'delivered', id: frame.id });
        if (!this.seen.has(frame.id)) {
          this.remember(frame.id);
          this.emit('message', frame);
        }
        break;
      default:
        break;
    }
  }

  /** Sends a message; returns its client_msg_id. It is resent until acked. */
  send(conversation, body) {
    const client_msg_id = randomId();
    const frame = { type: 'send', conversation, client_msg_id, body };
    this.pending.set(client_msg_id, frame);
    this.raw(frame);
    return client_msg_id;
  }

  resend(clientMsgId) {
    const frame = this.pending.get(clientMsgId);
    if (frame) this.raw(frame);
  }

  /** Marks an id as already shown (history loaded over HTTP). */
  remember(id) {
    this.seen.add(id);
    if (this.seen.size > SEEN_LIMIT) this.seen.delete(this.seen.values().next().value);
  }

  raw(frame) {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(frame));
  }

  setState(state) {
    this.state = state;
    this.emit('state', { state });
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
