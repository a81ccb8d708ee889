// tessera.js — the browser client of Tessera's room signaling (GET /v1/rtc, PRODUCT.md §7).
// An ES module with no build step and no dependencies:
//
//   import { Room } from '/tessera.js';
//   const room = await Room.connect('wss://media.example.com/v1/rtc', token);
//   room.addEventListener('stream', (e) => attach(e.detail.user, e.detail.stream, e.detail.mediaStream));
//   await room.publishCamera();
//
// Connections: each published stream (`main`, `aux`) has its own client-offered `pub` peer
// connection; everything received comes on one server-offered `sub` connection that the server
// renegotiates as streams come and go. With `autoSubscribe` (the default) the server subscribes
// the room's streams by itself.
//
// Errors are `TesseraError`s with a `code`: `Room.connect` rejects with 'connect_failed' when the
// socket cannot be reached or has not opened within 10 s (a reconnect then tries again), a
// request with no reply within 15 s with 'timeout' ('disconnected' if the socket closed under
// it), otherwise with the server's error code.
//
// Events (all `CustomEvent`s; `detail` is the server message unless said otherwise):
//   participant_joined, participant_left, track_published, track_unpublished, track_muted,
//   role_changed, first_media, custom, kicked, error (a server `error` without a pending request),
//   active_speakers { speakers: [{user, level 0–100}] } loudest first, on change,
//   quality { local: {uplink, downlink, uplink_rtt, uplink_loss, downlink_rtt, downlink_loss},
//             remote: [{user, uplink}] } every 2 s; scores 0 unknown, 1 best … 5, 6 disconnected,
//   stats { tracks: [{direction, user, stream, kind, codec, bitrate_kbps, fps, width, height,
//           layer, loss_pct, jitter_ms, rtt_ms, sample_rate, channels}] } with `statsIntervalMs`,
//   custom carries `channel`: 'ws', 'reliable' or 'lossy' (how it arrived),
//   stream          { user, stream, mediaStream }: a remote stream appeared or got a track,
//   stream_removed  { user, stream },
//   reconnecting, reconnected { resumed }, disconnected { reason }.

/** @typedef {{user: string, role: number, user_type: number, info: ?string, tracks: Array<{stream: string, kind: string, codec: ?string, layers: string[], muted: boolean}>}} Participant */
/** @typedef {{audio?: boolean|MediaTrackConstraints, video?: boolean|MediaTrackConstraints, simulcast?: boolean}} CameraOptions */

const PING_EVERY_MS = 5000;
const REQUEST_TIMEOUT_MS = 15000;
const CONNECT_TIMEOUT_MS = 10000;
/** The server keeps a dropped session this long for a resume (PRODUCT.md §3.4). */
const RESUME_WINDOW_MS = 15000;

export class TesseraError extends Error {
  /** @param {string} code @param {string} message */
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.code = code;
  }
}

export class Room extends EventTarget {
  /**
   * Joins a room. `url` is the signaling WebSocket (ws[s]://host/v1/rtc); `token` a user token.
   * @param {string} url @param {string} token
   * @param {{autoSubscribe?: boolean, terminal?: number, statsIntervalMs?: number}} [options]
   * @returns {Promise<Room>}
   */
  static async connect(url, token, options = {}) {
    const room = new Room(url, token, options);
    await room.#open(null);
    return room;
  }

  /** @private */
  constructor(url, token, options) {
    super();
    this.url = url;
    this.token = token;
    this.options = options;
    /** @type {?string} */ this.sessionId = null;
    /** @type {?string} */ this.user = null;
    /** @type {number} */ this.role = 0;
    /** @type {number} */ this.privileges = 0;
    /** @type {Map<string, Participant>} others in the room, by user id */
    this.participants = new Map();
    /** @type {Map<string, MediaStream>} remote streams by "user/stream" */
    this.remoteStreams = new Map();
    /** @type {Map<string, {pc: RTCPeerConnection, media: MediaStream, simulcast: boolean}>} our publications by stream */
    this.publications = new Map();
    this.iceServers = [];
    this.ws = null;
    this.sub = null;
    this.subTracks = new Map(); // mid -> {user, stream, kind}
    this.pending = new Map(); // id -> {resolve, reject, timer}
    this.nextId = 1;
    this.closed = false;
    this.pinger = null;
    /** @type {?{reliable: RTCDataChannel, lossy: RTCDataChannel}} custom-message channels (publish with `dataChannels`) */
    this.channels = null;
  }

  async #open(resume) {
    const ws = new WebSocket(this.url);
    this.ws = ws;
    await new Promise((resolve, reject) => {
      // A connect the network swallows (SYNs dropped) can hang for minutes: give up on it,
      // so that a join fails with a reason and a reconnect tries again.
      const timer = setTimeout(() => {
        ws.onopen = ws.onerror = null;
        ws.close();
        reject(new TesseraError('connect_failed', `no answer from ${this.url} in ${CONNECT_TIMEOUT_MS / 1000} s`));
      }, CONNECT_TIMEOUT_MS);
      ws.onopen = () => { clearTimeout(timer); resolve(); };
      ws.onerror = () => { clearTimeout(timer); reject(new TesseraError('connect_failed', `cannot reach ${this.url}`)); };
    });
    ws.onmessage = (e) => this.#onMessage(JSON.parse(e.data));
    ws.onclose = (e) => this.#onClose(e);
    const join = { type: 'join', token: this.token, auto_subscribe: this.options.autoSubscribe ?? true };
    if (this.options.terminal) join.terminal = this.options.terminal;
    if (this.options.statsIntervalMs) join.stats_interval_ms = this.options.statsIntervalMs;
    if (resume) join.resume = resume;
    const joined = await this.#request(join);
    this.sessionId = joined.session_id;
    this.user = joined.user;
    this.role = joined.role;
    this.privileges = joined.privileges;
    this.iceServers = joined.ice_servers || [];
    this.participants = new Map(joined.participants.map((p) => [p.user, p]));
    clearInterval(this.pinger);
    this.pinger = setInterval(() => this.#send({ type: 'ping' }), PING_EVERY_MS);
    return joined;
  }

  #send(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  /** Sends a message with an id and resolves with the reply (or rejects with its error). */
  #request(msg) {
    const id = String(this.nextId++);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new TesseraError('timeout', `no reply to ${msg.type}`));
      }, REQUEST_TIMEOUT_MS);
      this.pending.set(id, { resolve, reject, timer });
      this.#send({ ...msg, id });
    });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  async #onMessage(m) {
    const waiting = m.id != null && this.pending.get(m.id);
    if (waiting) {
      this.pending.delete(m.id);
      clearTimeout(waiting.timer);
      if (m.type === 'error') waiting.reject(new TesseraError(m.code, m.message));
      else waiting.resolve(m);
      // An offer answering a request is still an offer to answer.
      if (m.type !== 'offer') return;
    }
    switch (m.type) {
      case 'offer':
        return this.#onSubOffer(m);
      case 'participant_joined':
        this.participants.set(m.user, { user: m.user, role: m.role, user_type: m.user_type, info: m.info ?? null, tracks: [] });
        break;
      case 'participant_left':
        this.participants.delete(m.user);
        break;
      case 'track_published': {
        const p = this.participants.get(m.user);
        if (p && !p.tracks.some((t) => t.stream === m.stream && t.kind === m.kind)) p.tracks.push({ stream: m.stream, kind: m.kind, codec: m.codec, layers: m.layers || [], muted: false });
        break;
      }
      case 'track_unpublished': {
        const p = this.participants.get(m.user);
        if (p) p.tracks = p.tracks.filter((t) => !(t.stream === m.stream && t.kind === m.kind));
        break;
      }
      case 'track_muted': {
        const t = this.participants.get(m.user)?.tracks.find((t) => t.stream === m.stream && t.kind === m.kind);
        if (t) t.muted = m.muted;
        break;
      }
      case 'role_changed': {
        const p = this.participants.get(m.user);
        if (p) {
          p.role = m.role;
          if (m.role === 21) p.tracks = [];
        }
        break;
      }
      case 'custom':
        m.channel = 'ws';
        break;
      case 'kicked':
        this.closed = true;
        break;
      case 'pong':
      case 'ok':
        return;
    }
    this.#emit(m.type, m);
  }

  #peer() {
    return new RTCPeerConnection({ iceServers: this.iceServers, bundlePolicy: 'max-bundle' });
  }

  /** The server's offer on the `sub` connection: answer it, map its sections to users. */
  async #onSubOffer(m) {
    if (!this.sub) {
      this.sub = this.#peer();
      this.sub.ontrack = (e) => this.#onRemoteTrack(e);
    }
    const before = new Map(this.subTracks);
    this.subTracks = new Map(m.tracks.map((t) => [t.mid, t]));
    await this.sub.setRemoteDescription({ type: 'offer', sdp: m.sdp });
    await this.sub.setLocalDescription(await this.sub.createAnswer());
    this.#send({ type: 'answer', pc: 'sub', sdp: this.sub.localDescription.sdp });
    // Sections no longer offered: their tracks leave their streams.
    for (const [mid, t] of before) {
      if (this.subTracks.has(mid)) continue;
      const key = `${t.user}/${t.stream}`;
      const ms = this.remoteStreams.get(key);
      const tr = this.sub.getTransceivers().find((x) => x.mid === mid);
      if (ms && tr) ms.removeTrack(tr.receiver.track);
      if (ms && ms.getTracks().length === 0) {
        this.remoteStreams.delete(key);
        this.#emit('stream_removed', { user: t.user, stream: t.stream });
      }
    }
  }

  #onRemoteTrack(e) {
    const t = this.subTracks.get(e.transceiver.mid);
    if (!t) return;
    const key = `${t.user}/${t.stream}`;
    let ms = this.remoteStreams.get(key);
    if (!ms) {
      ms = new MediaStream();
      this.remoteStreams.set(key, ms);
    }
    for (const old of ms.getTracks().filter((x) => x.kind === e.track.kind)) ms.removeTrack(old);
    ms.addTrack(e.track);
    this.#emit('stream', { user: t.user, stream: t.stream, mediaStream: ms });
  }

  /**
   * Publishes a MediaStream as `main` or `aux` on its own `pub` connection. With `simulcast`
   * the video goes as three layers (h, m, l). With `dataChannels` (main only) the connection
   * also carries the custom-message channels `tessera-reliable` and `tessera-lossy`
   * (PRODUCT.md §8): `sendCustom` can use them, and messages to us come on them.
   * @param {'main'|'aux'} stream @param {MediaStream} media @param {{simulcast?: boolean, dataChannels?: boolean}} [options]
   */
  async publish(stream, media, options = {}) {
    const old = this.publications.get(stream);
    if (old) old.pc.close();
    const pc = this.#peer();
    for (const track of media.getTracks()) {
      const init = { direction: 'sendonly', streams: [media] };
      if (track.kind === 'video' && options.simulcast) {
        // Three temporal layers in each (Chrome's VP8 default; with H.264 every other picture
        // is then a non-reference one): the server can halve a layer's frame rate for a
        // viewer just short of it. A browser that refuses the mode publishes without it.
        init.sendEncodings = [{ rid: 'h' }, { rid: 'm', scaleResolutionDownBy: 2 }, { rid: 'l', scaleResolutionDownBy: 4 }].map((e) => ({ ...e, scalabilityMode: 'L1T3' }));
      }
      try {
        pc.addTransceiver(track, init);
      } catch (e) {
        if (!init.sendEncodings) throw e;
        pc.addTransceiver(track, { ...init, sendEncodings: init.sendEncodings.map(({ scalabilityMode, ...rest }) => rest) });
      }
    }
    if (options.dataChannels && stream === 'main') this.#openChannels(pc);
    await pc.setLocalDescription(await pc.createOffer());
    const tracks = pc.getTransceivers().filter((t) => t.sender.track).map((t) => ({ mid: t.mid, kind: t.sender.track.kind, ...(t.sender.track.kind === 'video' && options.simulcast ? { simulcast: ['h', 'm', 'l'] } : {}) }));
    const answer = await this.#request({ type: 'publish', stream, sdp: pc.localDescription.sdp, tracks });
    await pc.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
    this.publications.set(stream, { pc, media, simulcast: !!options.simulcast });
    return pc;
  }

  /**
   * Camera and microphone as `main`.
   * @param {CameraOptions} [options]
   * @returns {Promise<MediaStream>}
   */
  async publishCamera(options = {}) {
    const media = await navigator.mediaDevices.getUserMedia({ audio: options.audio ?? true, video: options.video ?? true });
    await this.publish('main', media, options);
    return media;
  }

  /**
   * The screen (and its audio, when the browser offers it) as `aux`.
   * @param {{audio?: boolean}} [options]
   * @returns {Promise<MediaStream>}
   */
  async publishScreen(options = {}) {
    const media = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: options.audio ?? false });
    await this.publish('aux', media);
    // The browser's own "Stop sharing" ends the publication too.
    media.getVideoTracks()[0].addEventListener('ended', () => this.unpublish('aux').catch(() => {}));
    return media;
  }

  /** Ends a publication. @param {'main'|'aux'} stream */
  async unpublish(stream) {
    const p = this.publications.get(stream);
    this.publications.delete(stream);
    if (p) {
      p.media.getTracks().forEach((t) => t.stop());
      p.pc.close();
    }
    await this.#request({ type: 'unpublish', stream });
  }

  /**
   * Mutes or unmutes a published track: the track stops sending (it stays negotiated) and the
   * room is told (`track_muted`).
   * @param {'main'|'aux'} stream @param {'audio'|'video'} kind @param {boolean} muted
   */
  async mute(stream, kind, muted) {
    const p = this.publications.get(stream);
    if (p) p.media.getTracks().filter((t) => t.kind === kind).forEach((t) => { t.enabled = !muted; });
    await this.#request({ type: 'mute', stream, kind, muted });
  }

  /**
   * Subscribes to another participant's stream (needed only without `autoSubscribe`).
   * @param {string} user @param {'main'|'aux'} stream
   * @param {{audio?: boolean, video?: boolean, quality?: 'auto'|'h'|'m'|'l'}} [options]
   */
  async subscribe(user, stream, options = {}) {
    await this.#request({ type: 'subscribe', user, stream, audio: options.audio ?? true, video: options.video ?? true, quality: options.quality ?? 'auto' });
  }

  /** @param {string} user @param {'main'|'aux'} stream */
  async unsubscribe(user, stream) {
    await this.#request({ type: 'unsubscribe', user, stream });
  }

  /** Switches between anchor (20) and audience (21); to audience, publications end. @param {20|21} role */
  async switchRole(role) {
    await this.#request({ type: 'switch_role', role });
    this.role = role;
    if (role === 21) {
      for (const p of this.publications.values()) p.pc.close();
      this.publications.clear();
    }
  }

  /** Replaces the session's token (same app, room and user). @param {string} token */
  async updateToken(token) {
    await this.#request({ type: 'update_token', token });
    this.token = token;
  }

  /**
   * Sends a custom message (PRODUCT.md §8; anchors only) over the socket, reliable and ordered,
   * to everyone else or to `to`. Resolves with its `seq`; rejects with `custom_rate_limited`,
   * `custom_too_large`, `custom_bad_cmd_id` or `not_anchor`. Receivers get a `custom` event
   * with `{from, cmd_id, seq, data}` (`data` base64).
   * @param {number} cmdId 1–10 @param {Uint8Array|string} data at most 1000 bytes @param {string[]} [to]
   * @returns {Promise<number>}
   */
  async sendCustom(cmdId, data, to) {
    const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
    const b64 = btoa(String.fromCharCode(...bytes));
    const reply = await this.#request({ type: 'custom', cmd_id: cmdId, data: b64, ...(to ? { to } : {}) });
    return reply.seq;
  }

  /** The custom-message channels on a `pub` connection; frames to us arrive as `custom`. */
  #openChannels(pc) {
    const open = (label, init) => {
      const dc = pc.createDataChannel(label, init);
      dc.binaryType = 'arraybuffer';
      dc.onmessage = (e) => this.#onChannelFrame(label === 'tessera-lossy' ? 'lossy' : 'reliable', new Uint8Array(e.data));
      return dc;
    };
    this.channels = { reliable: open('tessera-reliable', { ordered: true }), lossy: open('tessera-lossy', { ordered: false, maxRetransmits: 0 }) };
  }

  // Receive frame: cmd_id (1 B), seq (u32 BE), user-id length (1 B), user id, payload.
  #onChannelFrame(channel, b) {
    if (b.length < 6 || b.length < 6 + b[5]) return;
    const seq = new DataView(b.buffer, b.byteOffset).getUint32(1);
    const from = new TextDecoder().decode(b.subarray(6, 6 + b[5]));
    const payload = b.subarray(6 + b[5]);
    this.#emit('custom', { type: 'custom', from, cmd_id: b[0], seq, data: btoa(String.fromCharCode(...payload)), channel });
  }

  /** Whether the `reliable` or `lossy` data channel is open. @param {'reliable'|'lossy'} kind */
  channelOpen(kind) {
    return this.channels?.[kind]?.readyState === 'open';
  }

  /**
   * Sends a custom message on the `pub` connection's data channel of `kind` (to everyone; the
   * server numbers it and refuses it over the socket, as an `error` event, when over a limit).
   * The frame is `cmd_id` (1 byte), then the payload.
   * @param {'reliable'|'lossy'} kind @param {number} cmdId @param {Uint8Array|string} data
   */
  sendOnChannel(kind, cmdId, data) {
    const dc = this.channels?.[kind];
    if (!dc || dc.readyState !== 'open') throw new TesseraError('no_channel', `the ${kind} data channel is not open`);
    const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
    const frame = new Uint8Array(1 + bytes.length);
    frame[0] = cmdId;
    frame.set(bytes, 1);
    dc.send(frame);
  }

  /** Leaves the room: every connection closes. */
  async leave() {
    this.closed = true;
    clearInterval(this.pinger);
    try {
      await this.#request({ type: 'leave' });
    } catch (_) { /* leaving anyway */ }
    this.#closeAll();
    this.ws.close();
  }

  #closeAll() {
    for (const p of this.publications.values()) p.pc.close();
    this.publications.clear();
    if (this.sub) this.sub.close();
    this.sub = null;
    this.subTracks.clear();
    for (const key of this.remoteStreams.keys()) {
      const [user, stream] = key.split('/');
      this.#emit('stream_removed', { user, stream });
    }
    this.remoteStreams.clear();
  }

  /** The socket dropped: resume within the server's window, keeping every connection. */
  async #onClose(e) {
    clearInterval(this.pinger);
    for (const [, w] of this.pending) {
      clearTimeout(w.timer);
      w.reject(new TesseraError('disconnected', 'the signaling socket closed'));
    }
    this.pending.clear();
    if (this.closed || e.code === 4001 || e.code === 4003) {
      this.#closeAll();
      this.#emit('disconnected', { reason: e.code === 4003 ? 'kicked' : e.reason || 'closed' });
      return;
    }
    this.#emit('reconnecting', {});
    const until = Date.now() + RESUME_WINDOW_MS + 30000;
    for (let delay = 500; Date.now() < until && !this.closed; delay = Math.min(delay * 2, 4000)) {
      await new Promise((r) => setTimeout(r, delay));
      try {
        const joined = await this.#open(this.sessionId);
        if (!joined.resumed) {
          // Too late: a new session. Publish again; the server subscribes anew.
          const pubs = [...this.publications.entries()];
          this.#closeAll();
          for (const [stream, p] of pubs) await this.publish(stream, p.media, { simulcast: p.simulcast });
        }
        this.#emit('reconnected', { resumed: !!joined.resumed });
        return;
      } catch (_) { /* try again */ }
    }
    this.#closeAll();
    this.#emit('disconnected', { reason: 'lost' });
  }
}
