// One WebRTC connection to the agent: offer/answer over HTTP, the `events` data channel, and
// a heartbeat that notices a dead agent in 1.2–1.6 s.
//
// The server does not trickle ICE, so the offer is sent once gathering is complete.
// Resume: with {resume: {session_id, session_secret}} the offer asks the server to continue
// that session; the server answers 200 either way, with `resumed: true` and the same
// session_id if it did, or a new session (the old one is gone) that the page goes on with
// as a fresh call. (A 404/410 from another server is treated like the latter.)
// Death: no pong for HEARTBEAT_DEAD_MS (once the agent has answered one ping), ICE 'failed',
// 'disconnected' for DISCONNECT_GRACE_MS, or the data channel closing while /healthz does not
// answer. A data channel that closes while the server is up is the agent hanging up.

const ICE_GATHER_TIMEOUT_MS = 2000;
const CONNECT_TIMEOUT_MS = 8000;
const HEARTBEAT_EVERY_MS = 400;
const HEARTBEAT_DEAD_MS = 1200; // a pong takes ~2 ms on a LAN; a busy agent answers in < 0.3 s
const DISCONNECT_GRACE_MS = 1000;
const HEALTH_TIMEOUT_MS = 1000;
const OFFER_TIMEOUT_MS = 10000; // a half-open connection must not stall the reconnect loop

export class CallError extends Error {
  constructor(message, { status = null, retry = false, retryAfterMs = 0, kind = 'rejected' } = {}) {
    super(message);
    this.status = status;
    this.retry = retry; // worth trying again (server unreachable, busy, restarting)
    this.retryAfterMs = retryAfterMs; // the server's Retry-After, when it gave one
    this.kind = kind; // unreachable | busy | timeout | rejected: what to tell the person
  }
}

export function authHeaders(token) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function waitForIceGathering(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', check);
      pc.removeEventListener('icecandidate', onCandidate);
      resolve();
    };
    const check = () => pc.iceGatheringState === 'complete' && done();
    const onCandidate = (e) => !e.candidate && done(); // null candidate = end of gathering
    const timer = setTimeout(done, ICE_GATHER_TIMEOUT_MS);
    pc.addEventListener('icegatheringstatechange', check);
    pc.addEventListener('icecandidate', onCandidate);
  });
}

async function serverUp(token) {
  try {
    const res = await fetch('/healthz', {
      headers: authHeaders(token), signal: AbortSignal.timeout(HEALTH_TIMEOUT_MS), cache: 'no-store',
    });
    return res.ok;
  } catch {
    return false;
  }
}

export class Connection {
  // handlers: onEvent(ev), onTrack(stream), onOpen(), onDead(reason), onEnded(reason), log(...)
  constructor({ track, iceServers, token, handlers }) {
    this.track = track;
    this.iceServers = iceServers;
    this.token = token;
    this.h = handlers;
    this.pc = null;
    this.dc = null;
    this.sessionId = null;
    this.secret = null;
    this.closed = false;
    this.lastPong = null;
    this.rttMs = null;
    this.timers = [];
  }

  // Connects; resolves {sessionId, secret, resumed} once the data channel is open.
  async open(resume = null) {
    const pc = (this.pc = new RTCPeerConnection({ iceServers: this.iceServers }));
    pc.addEventListener('connectionstatechange', () => this.onConnectionState());
    pc.addEventListener('track', (e) => {
      if (!this.closed) this.h.onTrack(e.streams[0] || new MediaStream([e.track]));
    });
    this.sender = pc.addTransceiver(this.track, { direction: 'sendrecv' }).sender;
    const dc = (this.dc = pc.createDataChannel('events', { ordered: true }));
    const opened = new Promise((resolve) => dc.addEventListener('open', resolve, { once: true }));
    dc.addEventListener('message', (e) => this.onMessage(e.data));
    dc.addEventListener('close', () => this.onChannelClosed());

    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc);
    if (this.closed) throw new CallError('cancelled');
    const answer = await this.postOffer(pc.localDescription, resume);
    if (this.closed) throw new CallError('cancelled');
    this.sessionId = answer.session_id ?? null;
    this.secret = answer.session_secret ?? null;
    const resumed = Boolean(resume && (answer.resumed ?? answer.session_id === resume.session_id));
    await pc.setRemoteDescription({ type: answer.type || 'answer', sdp: answer.sdp });
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new CallError('The agent did not answer in time.', { retry: true, kind: 'timeout' })),
        CONNECT_TIMEOUT_MS);
    });
    try {
      await Promise.race([opened, timeout]);
    } finally {
      clearTimeout(timer);
    }
    if (this.closed) throw new CallError('cancelled');
    this.startHeartbeat();
    this.h.onOpen();
    return { sessionId: this.sessionId, secret: this.secret, resumed };
  }

  async postOffer(desc, resume) {
    const body = { sdp: desc.sdp, type: desc.type };
    if (resume) body.resume = resume;
    let res;
    try {
      res = await fetch('/offer', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', ...authHeaders(this.token) },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(OFFER_TIMEOUT_MS),
      });
    } catch (e) {
      throw new CallError(`Cannot reach the server (${e.message}).`, { retry: true, kind: 'unreachable' });
    }
    const answer = await res.json().catch(() => null);
    if (resume && (res.status === 404 || res.status === 410)) {
      this.h.log(`session ${resume.session_id} is gone (HTTP ${res.status}): starting a new one`);
      return this.postOffer(desc, null);
    }
    if (res.status === 503 || res.status === 429) {
      // Busy, restarting, or too many attempts from this address: all pass; wait as told.
      const secs = Number.parseInt(res.headers.get('Retry-After') ?? '', 10);
      const when = Number.isFinite(secs) ? `in ${Math.max(secs, 0)} s` : 'later';
      throw new CallError(`The agent is busy; try again ${when}.`,
        { status: res.status, retry: true, retryAfterMs: Number.isFinite(secs) ? secs * 1000 : 0, kind: 'busy' });
    }
    if (res.status === 401 || res.status === 403) {
      throw new CallError('The server refused this page (check the ?token= in the address).',
        { status: res.status });
    }
    if (!res.ok || !answer?.sdp) {
      const why = answer?.error ? `: ${answer.error}` : ` (HTTP ${res.status})`;
      throw new CallError(`The call was rejected${why}.`, { status: res.status, retry: res.status >= 500 });
    }
    return answer;
  }

  send(message) {
    if (this.dc?.readyState === 'open') this.dc.send(JSON.stringify(message));
  }

  onMessage(data) {
    let ev;
    try { ev = JSON.parse(data); } catch { this.h.log('non-JSON message:', String(data)); return; }
    if (ev?.type === 'pong') {
      this.lastPong = performance.now();
      if (Number.isFinite(ev.t)) this.rttMs = Math.max(0, this.lastPong - ev.t);
      return;
    }
    if (!this.closed) this.h.onEvent(ev);
  }

  startHeartbeat() {
    const beat = setInterval(() => {
      if (this.closed) return;
      const now = performance.now();
      if (this.lastPong != null && now - this.lastPong > HEARTBEAT_DEAD_MS) {
        this.die('the agent stopped answering');
        return;
      }
      this.send({ type: 'ping', t: now });
    }, HEARTBEAT_EVERY_MS);
    this.timers.push(beat);
    this.send({ type: 'ping', t: performance.now() });
  }

  onConnectionState() {
    if (this.closed) return;
    const s = this.pc.connectionState;
    this.h.log('connection:', s);
    if (s === 'failed') this.die('the connection failed');
    else if (s === 'disconnected') {
      this.timers.push(setTimeout(() => {
        if (!this.closed && this.pc.connectionState === 'disconnected') this.die('the connection dropped');
      }, DISCONNECT_GRACE_MS));
    }
  }

  async onChannelClosed() {
    if (this.closed) return;
    const up = await serverUp(this.token);
    if (this.closed) return;
    if (up) this.end('The agent ended the call.');
    else this.die('the agent went away');
  }

  die(reason) {
    if (this.closed) return;
    this.close();
    this.h.onDead(reason);
  }

  end(reason) {
    if (this.closed) return;
    this.close();
    this.h.onEnded(reason);
  }

  // Hang up: tell the server (frees the session at once), then close.
  hangUp() {
    if (this.sessionId) {
      const headers = authHeaders(this.token);
      if (this.secret) headers['X-Session-Secret'] = this.secret;
      fetch(`/session/${encodeURIComponent(this.sessionId)}`, { method: 'DELETE', headers, keepalive: true })
        .catch(() => {});
    }
    this.close();
  }

  close() {
    this.closed = true;
    this.timers.forEach((t) => { clearInterval(t); clearTimeout(t); });
    this.timers = [];
    try { this.dc?.close(); } catch { /* already closed */ }
    try { this.pc?.close(); } catch { /* already closed */ }
  }
}
