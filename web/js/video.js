// The video room of the open conversation: rampart's SFU over /rtc (signaling protocol v1).
//
// Two peer connections: the publisher (this page offers its camera and microphone, the server
// answers) and the subscriber (the server offers everyone else's tracks, this page answers).
// Candidates trickle both ways. On `reconnect` (the server restarted this participant) or a
// dropped socket, the room rebuilds itself: new connections, the same camera, the tiles back.
// ICE uses the TURN relay the server hands out in `joined` (`ice_servers`, credentials of this
// participant's own); `?ice=relay` in the page's address forces every packet through it (to
// check from a network that the relay works).

import { parseFrame } from './api.js';

const BACKOFF_START_MS = 500;
const BACKOFF_MAX_MS = 8_000;

export class VideoRoom extends EventTarget {
  constructor(token, room) {
    super();
    this.token = token;
    this.room = room;
    this.ws = null;
    this.state = 'idle';
    this.stopped = false;
    this.backoff = BACKOFF_START_MS;
    this.local = null;
    this.publisher = null;
    this.subscriber = null;
    /** Candidates that arrived before their connection had a remote description. */
    this.early = { publisher: [], subscriber: [] };
    this.participant = null;
    /** participant id → { user, tracks: Map(track id → kind) } */
    this.participants = new Map();
    /** stream id (the publisher's participant id) → MediaStream */
    this.streams = new Map();
    /** From `joined`: the server's TURN relay with this participant's credentials. */
    this.iceServers = [];
    this.icePolicy = new URLSearchParams(location.search).get('ice') === 'relay' ? 'relay' : 'all';
  }

  /** Whether this server has an SFU: a build without it answers /rtc with 501. */
  static async available(token) {
    try {
      const response = await fetch(`/rtc?token=${encodeURIComponent(token)}`);
      return response.status !== 501;
    } catch {
      return false;
    }
  }

  async start() {
    this.stopped = false;
    this.setState('connecting');
    try {
      this.local = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 360 } });
    } catch (error) {
      this.setState('failed', `camera or microphone refused: ${error.message}`);
      return;
    }
    this.emit('local', { stream: this.local });
    this.connect();
  }

  leave() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws?.readyState === WebSocket.OPEN) this.send({ type: 'leave' });
    this.ws?.close(1000, 'left');
    this.closeConnections();
    for (const track of this.local?.getTracks() ?? []) track.stop();
    this.local = null;
    this.setState('idle');
  }

  /** Mutes or unmutes this page's `kind` ('audio' or 'video'). */
  setMuted(kind, muted) {
    for (const track of this.local?.getTracks() ?? []) {
      if (track.kind !== kind) continue;
      track.enabled = !muted;
      this.send({ type: 'mute', track: track.id, muted });
    }
  }

  /** Inbound and outbound RTP statistics (tests and the curious). */
  async stats() {
    const result = { framesDecoded: 0, packetsReceived: 0, pliCount: 0, framesEncoded: 0, candidateTypes: [], relayProtocols: [] };
    for (const pc of [this.subscriber, this.publisher]) {
      if (!pc) continue;
      const report = await pc.getStats();
      report.forEach((entry) => {
        // The local end of each connection's selected pair: host, srflx or relay (and how the
        // browser reaches the relay: udp, tcp or tls).
        if (entry.type === 'transport' && entry.selectedCandidatePairId) {
          const pair = report.get(entry.selectedCandidatePairId);
          const local = pair && report.get(pair.localCandidateId);
          if (local) result.candidateTypes.push(local.candidateType);
          if (local?.relayProtocol) result.relayProtocols.push(local.relayProtocol);
        }
        if (entry.type === 'inbound-rtp') {
          result.framesDecoded += entry.framesDecoded ?? 0;
          result.packetsReceived += entry.packetsReceived ?? 0;
        }
        if (entry.type === 'outbound-rtp') {
          result.pliCount += entry.pliCount ?? 0;
          result.framesEncoded += entry.framesEncoded ?? 0;
        }
      });
    }
    return result;
  }

  // ---- signaling ---------------------------------------------------------------------------

  connect() {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const ws = new WebSocket(`${scheme}://${location.host}/rtc?token=${encodeURIComponent(this.token)}`);
    this.ws = ws;
    ws.onopen = () => {
      this.backoff = BACKOFF_START_MS;
      this.send({ type: 'join', room: this.room });
    };
    ws.onmessage = (event) => {
      const frame = parseFrame(event.data);
      if (frame) this.onFrame(frame).catch((error) => this.emit('error', { code: 'client', message: error.message }));
    };
    ws.onclose = () => {
      if (this.ws !== ws || this.stopped) return;
      this.closeConnections();
      this.setState('reconnecting');
      this.timer = setTimeout(() => this.connect(), this.backoff);
      this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
    };
  }

  send(frame) {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(frame));
  }

  async onFrame(frame) {
    switch (frame.type) {
      case 'joined':
        this.closeConnections();
        this.participant = frame.participant;
        this.iceServers = (frame.ice_servers ?? []).map(({ urls, username, credential }) => ({ urls, username, credential }));
        this.participants.clear();
        for (const other of frame.participants) {
          this.participants.set(other.participant, { user: other.user, tracks: new Map(other.tracks.map((t) => [t.track, t.kind])) });
        }
        this.emit('participants');
        await this.publish();
        break;
      case 'participant_joined':
        this.participants.set(frame.participant, { user: frame.user, tracks: new Map() });
        this.emit('participants');
        break;
      case 'participant_left':
        this.participants.delete(frame.participant);
        this.dropStream(frame.participant);
        this.emit('participants');
        break;
      case 'track_published':
        this.participants.get(frame.participant)?.tracks.set(frame.track, frame.kind);
        this.emit('participants');
        break;
      case 'track_unpublished':
        this.participants.get(frame.participant)?.tracks.delete(frame.track);
        this.emit('participants');
        break;
      case 'answer':
        if (frame.target === 'publisher' && this.publisher) {
          await this.publisher.setRemoteDescription({ type: 'answer', sdp: frame.sdp });
          await this.flushCandidates('publisher');
          this.setState('live');
        }
        break;
      case 'offer':
        if (frame.target === 'subscriber') await this.answerSubscriber(frame.sdp);
        break;
      case 'candidate': {
        const pc = frame.target === 'publisher' ? this.publisher : this.subscriber;
        if (pc?.remoteDescription) await pc.addIceCandidate(frame.candidate);
        else this.early[frame.target]?.push(frame.candidate);
        break;
      }
      case 'reconnect':
        // The server restarted this participant: new connections, same camera. With `rejoin`
        // the room moved to another instance: new connections once its `joined` comes.
        this.setState('reconnecting');
        this.closeConnections();
        if (!frame.rejoin) await this.publish();
        break;
      case 'error':
        this.emit('error', frame);
        if (frame.code === 'forbidden' || frame.code === 'room_full' || frame.code === 'room_limit') {
          this.stopped = true;
          this.ws?.close(1000, 'refused');
          this.setState('failed', frame.message);
        }
        break;
      default:
        break;
    }
  }

  async flushCandidates(target) {
    const pc = target === 'publisher' ? this.publisher : this.subscriber;
    const queued = this.early[target];
    this.early[target] = [];
    for (const candidate of queued) await pc.addIceCandidate(candidate);
  }

  newConnection(target) {
    const pc = new RTCPeerConnection({ iceServers: this.iceServers, iceTransportPolicy: this.icePolicy });
    pc.onicecandidate = (event) => {
      if (event.candidate) this.send({ type: 'candidate', target, candidate: event.candidate.toJSON() });
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === 'failed' && !this.stopped) this.setState('reconnecting');
    };
    return pc;
  }

  async publish() {
    if (!this.local) return;
    this.publisher = this.newConnection('publisher');
    for (const track of this.local.getTracks()) this.publisher.addTrack(track, this.local);
    const offer = await this.publisher.createOffer();
    await this.publisher.setLocalDescription(offer);
    this.send({ type: 'offer', target: 'publisher', sdp: this.publisher.localDescription.sdp });
  }

  async answerSubscriber(sdp) {
    if (!this.subscriber) {
      this.subscriber = this.newConnection('subscriber');
      this.subscriber.ontrack = (event) => this.onTrack(event);
    }
    await this.subscriber.setRemoteDescription({ type: 'offer', sdp });
    await this.flushCandidates('subscriber');
    const answer = await this.subscriber.createAnswer();
    await this.subscriber.setLocalDescription(answer);
    this.send({ type: 'answer', target: 'subscriber', sdp: this.subscriber.localDescription.sdp });
  }

  onTrack(event) {
    const stream = event.streams[0];
    if (!stream) return;
    const participant = stream.id;
    this.streams.set(participant, stream);
    stream.onremovetrack = () => {
      if (stream.getTracks().length === 0) this.dropStream(participant);
    };
    this.emit('stream', { participant, stream, user: this.participants.get(participant)?.user ?? participant });
  }

  dropStream(participant) {
    if (this.streams.delete(participant)) this.emit('stream-ended', { participant });
  }

  closeConnections() {
    for (const pc of [this.publisher, this.subscriber]) pc?.close();
    this.publisher = null;
    this.subscriber = null;
    this.early = { publisher: [], subscriber: [] };
    for (const participant of [...this.streams.keys()]) this.dropStream(participant);
  }

  setState(state, detail = '') {
    this.state = state;
    this.emit('state', { state, detail });
  }

  emit(type, detail = {}) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
