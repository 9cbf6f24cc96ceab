// ringback browser client: places one WebRTC call to the voice agent.
// Flow: getUserMedia -> RTCPeerConnection (sendrecv audio + "events" data channel)
//   -> wait for ICE gathering to finish (the server does not trickle) -> POST /offer -> answer.
// JSON messages on "events" drive the status line, transcript and latency readout.
// Test hooks: window.ringback {state, sessionId, events, pc}; body[data-connection], body[data-agent-state].
// Query params: ?raw=1 turns off browser audio processing; ?ice=stun:host:port adds ICE server(s).

const $ = (id) => document.getElementById(id);
const ui = {
  call: $('call'), status: $('status'), error: $('error'), transcript: $('transcript'),
  latency: $('latency'), link: $('link'), log: $('log'), meter: $('meter'), audio: $('remote'),
};
const params = new URLSearchParams(location.search);
const RAW = params.get('raw') === '1';
const ICE_SERVERS = params.getAll('ice').flatMap((v) => v.split(','))
  .map((s) => s.trim()).filter(Boolean).map((urls) => ({ urls }));
const ICE_TIMEOUT_MS = 2000;
const DISCONNECT_GRACE_MS = 4000; // 'disconnected' can recover on its own
const METRICS = [
  ['time_to_first_audio_ms', 'first audio'], ['eou_delay_ms', 'end of speech'],
  ['asr_complete_ms', 'ASR'], ['llm_first_token_ms', 'LLM first token'],
  ['tts_first_chunk_ms', 'TTS first chunk'], ['total_ms', 'total'],
];

const rb = (window.ringback = { state: null, sessionId: null, events: [], pc: null });
let call = null; // the active call: {stream, pc, dc, audioCtx, sessionId, raf, disconnectTimer}
let phase = 'idle'; // connection part of the status line
let userLine = null; // in-progress user transcript line
const agentLines = new Map(); // turn number -> agent line element

class CallError extends Error {}

// ---- status / UI helpers -------------------------------------------------
function renderStatus() {
  ui.status.textContent = rb.state ? `${phase} · ${rb.state}` : phase;
}
function setPhase(text, isError = false) {
  phase = text;
  ui.status.classList.toggle('is-error', isError);
  renderStatus();
}
const setConnection = (s) => { document.body.dataset.connection = s; };
function setAgentState(s) {
  rb.state = s || null;
  if (s) document.body.dataset.agentState = s;
  else delete document.body.dataset.agentState;
  renderStatus();
}
function showError(msg) {
  ui.error.textContent = msg;
  ui.error.hidden = !msg;
}
function setButton(active) {
  ui.call.textContent = active ? 'Hang up' : 'Call';
  ui.call.classList.toggle('hangup', active);
}
function setMeter(level, announce = true) {
  ui.meter.style.setProperty('--level', level.toFixed(3));
  if (announce) ui.meter.setAttribute('aria-valuenow', String(Math.round(level * 100)));
}
function log(...parts) {
  const text = parts.map((p) => (typeof p === 'string' ? p : JSON.stringify(p))).join(' ');
  ui.log.append(`${new Date().toISOString().slice(11, 23)} ${text}\n`);
  while (ui.log.childNodes.length > 300) ui.log.firstChild.remove();
}

// ---- transcript ------------------------------------------------------------
function el(tag, className, text = '') {
  const node = document.createElement(tag);
  node.className = className;
  node.textContent = text;
  return node;
}
const addLine = (className) => ui.transcript.appendChild(el('p', className));
const scrollDown = () => { ui.transcript.scrollTop = ui.transcript.scrollHeight; };
function setUserText(text = '', final = false) {
  if (!userLine) {
    if (!text.trim()) return;
    userLine = addLine('user partial');
  }
  userLine.textContent = text;
  if (final) {
    userLine.classList.remove('partial');
    if (!text.trim()) userLine.remove();
    userLine = null;
  }
  scrollDown();
}
function agentLine(turn) {
  let line = agentLines.get(turn);
  if (!line) {
    line = addLine('agent');
    line.dataset.turn = String(turn);
    line.append(el('span', 'text'));
    agentLines.set(turn, line);
  }
  return line;
}
function appendReply(turn, text = '') {
  const span = agentLine(turn).querySelector('.text');
  const piece = text.trim();
  if (piece) span.textContent = span.textContent ? `${span.textContent} ${piece}` : piece;
  scrollDown();
}
const fmtMs = (v) => (v == null || !Number.isFinite(Number(v)) ? '–' : `${Math.round(v)} ms`);

function endTurn(ev) {
  const m = ev.metrics || {};
  let anchor = agentLines.get(ev.turn);
  if (anchor || ev.reply || ev.interrupted) {
    anchor = agentLine(ev.turn);
    const span = anchor.querySelector('.text');
    if (ev.interrupted) {
      span.textContent = ev.reply || ''; // only what the user actually heard
      anchor.classList.add('interrupted');
      if (!anchor.querySelector('.tag')) anchor.append(' ', el('span', 'tag', '(interrupted)'));
    } else if (ev.reply) {
      span.textContent = ev.reply;
    }
  }
  const metrics = el('p', 'metrics',
    `turn ${ev.turn} · first audio ${fmtMs(m.time_to_first_audio_ms)} · total ${fmtMs(m.total_ms)}`);
  if (anchor) anchor.after(metrics);
  else ui.transcript.append(metrics);
  ui.latency.textContent = `turn ${ev.turn}${ev.interrupted ? ' (interrupted)' : ''}: ` +
    METRICS.map(([key, label]) => `${label} ${fmtMs(m[key])}`).join(' · ');
  scrollDown();
}

// How the agent hears us: loss, repair and buffering, from its `link` reports (every 2 s).
function showLink(ev) {
  if (!ui.link) return;
  ui.link.textContent = ev.path === 'ringback'
    ? `agent receives: ${ev.packets_lost} lost, ${ev.frames_fec_recovered} FEC-recovered, ` +
      `${ev.frames_concealed} concealed · buffer ${fmtMs(ev.playout_delay_ms)} ` +
      `(target ${fmtMs(ev.target_delay_ms)})`
    : `agent receives through aiortc's buffer (${ev.codec})`;
}

function onEvent(data) {
  let ev;
  try { ev = JSON.parse(data); } catch { return log('non-JSON message:', String(data)); }
  rb.events.push(ev);
  log(ev);
  switch (ev?.type) {
    case 'hello':
      if (ev.session_id) call.sessionId ||= ev.session_id;
      rb.sessionId = call.sessionId;
      break;
    case 'state': setAgentState(ev.state); break;
    case 'partial': setUserText(String(ev.text ?? ''), false); break;
    case 'final': setUserText(String(ev.text ?? ''), true); break;
    case 'reply': appendReply(ev.turn, String(ev.text ?? '')); break;
    case 'turn': endTurn(ev); break;
    case 'error': showError(ev.message || 'server error'); break;
    case 'link': showLink(ev); break;
    default: break; // unknown types: debug log only
  }
}

// ---- call lifecycle --------------------------------------------------------
const MIC_ERRORS = {
  NotAllowedError: 'Microphone permission was denied. Allow microphone access and try again.',
  SecurityError: 'Microphone permission was denied. Allow microphone access and try again.',
  NotFoundError: 'No microphone was found. Connect one and try again.',
  NotReadableError: 'The microphone is in use by another application or could not be opened.',
  insecure: 'Microphone access needs a secure page (https:// or http://localhost).',
};
const micErrorMessage = (e) => MIC_ERRORS[e?.name] || `Could not open the microphone: ${e?.message || e}`;

function waitForIceGathering(pc, timeoutMs) {
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
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener('icegatheringstatechange', check);
    pc.addEventListener('icecandidate', onCandidate);
  });
}

async function postOffer(desc) {
  const res = await fetch('/offer', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ sdp: desc.sdp, type: desc.type }),
  }).catch((e) => { throw new CallError(`Cannot reach the server (${e.message}).`); });
  const body = await res.json().catch(() => null);
  if (res.status === 503) {
    const header = res.headers.get('Retry-After');
    let secs = Number.parseInt(header, 10);
    if (Number.isNaN(secs) && header) secs = Math.ceil((Date.parse(header) - Date.now()) / 1000);
    const when = Number.isFinite(secs) ? `in ${Math.max(secs, 0)} s` : 'later';
    throw new CallError(`server busy, try again ${when}${body?.error ? ` (${body.error})` : ''}`);
  }
  if (!res.ok || !body?.sdp) {
    throw new CallError(body?.error ? `Call rejected: ${body.error}` : `Call failed (HTTP ${res.status}).`);
  }
  return body;
}

function startMeter(c) {
  if (!c.audioCtx) return;
  try {
    const analyser = c.audioCtx.createAnalyser();
    analyser.fftSize = 1024;
    c.audioCtx.createMediaStreamSource(c.stream).connect(analyser);
    const buf = new Float32Array(analyser.fftSize);
    let level = 0, frame = 0;
    const tick = () => {
      analyser.getFloatTimeDomainData(buf);
      let sum = 0;
      for (const v of buf) sum += v * v;
      const db = 20 * Math.log10(Math.sqrt(sum / buf.length) + 1e-9);
      level = Math.max(Math.min(1, Math.max(0, (db + 60) / 60)), level * 0.9); // fast up, slow down
      setMeter(level, ++frame % 15 === 0);
      c.raf = requestAnimationFrame(tick);
    };
    tick();
  } catch (e) {
    log('mic meter unavailable:', String(e?.message || e));
  }
}

function onConnectionState(c) {
  if (call !== c) return;
  const s = c.pc.connectionState;
  setConnection(s);
  log('connection:', s);
  clearTimeout(c.disconnectTimer);
  if (s === 'connected') setPhase('connected');
  else if (s === 'failed') hangUp('Connection failed.', { error: true, connection: 'failed' });
  else if (s === 'closed') hangUp('Call ended.');
  else if (s === 'disconnected') {
    setPhase('connection interrupted, waiting…');
    c.disconnectTimer = setTimeout(() => call === c &&
      hangUp('Connection lost.', { error: true, connection: 'disconnected' }), DISCONNECT_GRACE_MS);
  } else setPhase('connecting…');
}

// Releases everything a call holds; safe to call more than once.
function release(c) {
  if (c.sessionId && !c.deleted) {
    c.deleted = true;
    fetch(`/session/${encodeURIComponent(c.sessionId)}`, { method: 'DELETE', keepalive: true })
      .catch(() => {});
  }
  c.stream?.getTracks().forEach((t) => t.stop());
  try { c.dc?.close(); } catch { /* already closed */ }
  c.pc?.close();
  cancelAnimationFrame(c.raf);
  clearTimeout(c.disconnectTimer);
  if (c.audioCtx && c.audioCtx.state !== 'closed') c.audioCtx.close().catch(() => {});
}

function hangUp(message = 'Call ended.', { error = false, connection = 'closed' } = {}) {
  const c = call;
  if (!c) return;
  call = null;
  release(c);
  ui.audio.srcObject = null;
  setButton(false);
  setMeter(0);
  setConnection(connection);
  setAgentState(null);
  if (userLine) setUserText(userLine.textContent, true);
  setPhase(message, error);
}

function resetView() {
  ui.transcript.replaceChildren();
  agentLines.clear();
  userLine = null;
  rb.events.length = 0;
  rb.sessionId = null;
  ui.latency.textContent = 'no turns yet';
  showError('');
}

async function startCall() {
  const c = (call = {});
  const stale = () => call !== c; // user hung up meanwhile (hangUp already released c)
  resetView();
  setButton(true);
  setPhase('requesting microphone…');
  // Create the AudioContext inside the click gesture so it is allowed to run.
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (Ctx) c.audioCtx = new Ctx();
  try {
    if (!navigator.mediaDevices?.getUserMedia) throw new CallError(MIC_ERRORS.insecure);
    const on = !RAW; // ?raw=1: no browser-side processing (tests feed exact audio)
    const audio = { echoCancellation: on, noiseSuppression: on, autoGainControl: on };
    c.stream = await navigator.mediaDevices.getUserMedia({ audio })
      .catch((e) => { throw new CallError(micErrorMessage(e)); });
    if (stale()) return release(c);
    startMeter(c);

    setPhase('connecting…');
    const pc = (c.pc = rb.pc = new RTCPeerConnection({ iceServers: ICE_SERVERS }));
    setConnection(pc.connectionState);
    pc.addEventListener('connectionstatechange', () => onConnectionState(c));
    pc.addEventListener('track', (e) => {
      if (call !== c) return;
      ui.audio.srcObject = e.streams[0] || new MediaStream([e.track]);
      ui.audio.play().catch(() => {}); // autoplay is allowed after the Call click
    });
    pc.addTransceiver(c.stream.getAudioTracks()[0], { direction: 'sendrecv', streams: [c.stream] });
    c.dc = pc.createDataChannel('events', { ordered: true });
    c.dc.addEventListener('message', (e) => call === c && onEvent(e.data));
    c.dc.addEventListener('close', () => call === c && hangUp('The agent ended the call.'));

    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc, ICE_TIMEOUT_MS);
    if (stale()) return;
    const answer = await postOffer(pc.localDescription);
    c.sessionId = answer.session_id;
    if (stale()) return release(c); // sends the DELETE for the session we just got
    rb.sessionId = c.sessionId;
    log('session:', String(c.sessionId));
    await pc.setRemoteDescription({ type: answer.type || 'answer', sdp: answer.sdp });
  } catch (e) {
    if (stale()) return;
    log('call failed:', String(e?.message || e));
    hangUp(e instanceof CallError ? e.message : `Call failed: ${e?.message || e}`, { error: true });
  }
}

// ---- wiring ----------------------------------------------------------------
if (!window.RTCPeerConnection) {
  ui.call.disabled = true;
  setPhase('This browser does not support WebRTC.', true);
} else {
  ui.call.addEventListener('click', () => (call ? hangUp('Call ended.') : startCall()));
  window.addEventListener('pagehide', () => hangUp('Call ended.'));
}
