// ringback browser client: the page's state, controls, transcript and numbers.
// connection.js places and watches one WebRTC connection; this module keeps the call going
// across connections (reconnect with backoff, resume), so the transcript outlives them. A
// first call to a server that is down or busy is tried again the same way, with a countdown
// in words ("Can't reach the server — trying again in 4 s") until it answers or Hang up.
// levels.js measures the audio (meters, mouth-to-ear latency); quality.js reads getStats().
//
// Automation contract (tests, scripts): window.ringback =
//   {state, connected, captions: [{who, text, final}],
//    turns: [{turn, heard, reply, interrupted, mouth_to_ear_ms, server: {…metrics}}],
//    stats: {send, receive, agent, heartbeat_rtt_ms, mouth_to_ear}, events, sessionId, pc, audio,
//    history: [{state, t}]}
// state: idle | connecting | ready | listening | hearing | thinking | speaking | interrupted
//        | reconnecting | ended | failed.  Controls: #call #hangup #mute #mic #processing.
// Query parameters: ?raw=1 starts with the browser's echo cancellation, noise suppression and
// auto gain off; ?ice=stun:host:port adds ICE servers; ?token=T sends "Authorization: Bearer T".

import { CallError, Connection } from './connection.js';
import { AudioMonitor } from './levels.js';
import { describeLink, readQuality } from './quality.js';

const $ = (id) => document.getElementById(id);
const ui = {
  call: $('call'), hangup: $('hangup'), mute: $('mute'), mic: $('mic'), processing: $('processing'),
  status: $('status'), statusText: $('status-text'), mutedBadge: $('muted-badge'), error: $('error'),
  transcript: $('transcript'), announcer: $('announcer'), latency: $('latency'),
  latencySummary: $('latency-summary'), breakdown: $('server-breakdown'),
  breakdownNote: $('breakdown-note'), breakdownRest: $('breakdown-rest'), link: $('link'),
  quality: $('quality'), log: $('log'), meterIn: $('meter-in'), meterOut: $('meter-out'),
  audio: $('remote'),
};
const params = new URLSearchParams(location.search);
const TOKEN = params.get('token') || null;
const ICE_SERVERS = params.getAll('ice').flatMap((v) => v.split(','))
  .map((s) => s.trim()).filter(Boolean).map((urls) => ({ urls }));
const MIC_KEY = 'ringback.mic';

const LABELS = {
  idle: 'Press Call to start', connecting: 'Connecting…', ready: 'Ready — start talking',
  listening: 'Listening', hearing: 'Hearing you', thinking: 'Thinking', speaking: 'Speaking',
  interrupted: 'Interrupted', reconnecting: 'Reconnecting…', ended: 'Call ended', failed: 'Call failed',
};
const AGENT_STATES = {
  listening: 'listening', processing_speech: 'hearing', thinking: 'thinking',
  speaking: 'speaking', interrupted: 'interrupted',
};
const INTERRUPTED_HOLD_MS = 1200; // long enough to read
const READY_FALLBACK_MS = 3000; // an agent that never says `ready` (older server)
const STATS_EVERY_MS = 2000;
const BACKOFF = { firstMs: 250, baseMs: 500, capMs: 4000, giveUpMs: 90_000 };
// Calling while the server is down (restarting, not yet up): keep trying, as reconnect does,
// for longer than a restart takes; the person sees why and can Hang up at any time.
const FIRST_CALL_GIVE_UP_MS = 300_000;
const RETRY_WORDS = {
  unreachable: "Can't reach the server — trying again in", busy: 'The agent is busy — trying again in',
  timeout: "The agent didn't answer — trying again in",
};
const SERVER_STAGES = [
  ['eou_delay_ms', 'decided you had finished'], ['asr_complete_ms', 'had your words'],
  ['llm_first_token_ms', 'first words of the answer'], ['tts_first_chunk_ms', 'voice ready'],
  ['time_to_first_audio_ms', 'first sound sent'],
];
const MIC_ERRORS = {
  NotAllowedError: 'Microphone access was denied. Allow the microphone for this page and press Call again.',
  SecurityError: 'Microphone access was denied. Allow the microphone for this page and press Call again.',
  NotFoundError: 'No microphone was found. Connect one and press Call again.',
  NotReadableError: 'The microphone is in use by another application or could not be opened.',
  insecure: 'Microphone access needs a secure page (https:// or http://localhost).',
};

const rb = (window.ringback = {
  state: 'idle', connected: false, captions: [], turns: [], stats: {},
  events: [], sessionId: null, pc: null, audio: null, history: [],
});
let call = null; // the call in progress (it survives reconnects), null when idle
let callCount = 0;
const captionNodes = new Map(); // caption object -> its <p>
const agentCaptions = new Map(); // "call:turn" -> caption object

// ---- small helpers ---------------------------------------------------------------------
function log(...parts) {
  const text = parts.map((p) => (typeof p === 'string' ? p : JSON.stringify(p))).join(' ');
  ui.log.append(`${new Date().toISOString().slice(11, 23)} ${text}\n`);
  while (ui.log.childNodes.length > 400) ui.log.firstChild.remove();
}
function el(tag, className, text = '') {
  const node = document.createElement(tag);
  if (className) node.className = className;
  node.textContent = text;
  return node;
}
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const fmtMs = (v) => (Number.isFinite(v) && v >= 0 ? `${Math.round(v)} ms` : '–');
const fmtPct = (v) => {
  if (!Number.isFinite(v)) return '–';
  return `${v > 0 && v < 10 ? v.toFixed(1) : Math.round(v)} %`;
};
function percentile(values, p) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}
function showError(message) {
  ui.error.textContent = message;
  ui.error.hidden = !message;
}
function announce(text) {
  ui.announcer.append(el('p', '', text));
  while (ui.announcer.childNodes.length > 20) ui.announcer.firstChild.remove();
}

// ---- what the page says it is doing ------------------------------------------------------
let heldUntil = 0; // the Interrupted label stays up until then
let holdTimer = null;
function show(state, text = LABELS[state]) {
  if (rb.state !== state) {
    rb.history.push({ state, t: performance.now() });
    if (rb.history.length > 500) rb.history.shift();
  }
  rb.state = state;
  document.body.dataset.phase = state;
  ui.statusText.textContent = text;
}
function showAgentState() {
  const c = call;
  if (!c || c.reconnecting || !c.ready) return;
  const s = c.agentState || 'listening';
  show(s === 'listening' && !c.spoken ? 'ready' : s);
}
function onAgentState(raw) {
  const c = call;
  const s = AGENT_STATES[raw] ?? 'listening';
  if (s !== 'listening') c.spoken = true;
  c.agentState = s;
  if (s === 'interrupted') {
    heldUntil = performance.now() + INTERRUPTED_HOLD_MS;
    clearTimeout(holdTimer);
    holdTimer = setTimeout(showAgentState, INTERRUPTED_HOLD_MS);
    showAgentState();
    return;
  }
  if (performance.now() < heldUntil) return; // shown when the hold ends
  showAgentState();
}
function setInCall(active) {
  ui.call.hidden = active;
  ui.hangup.hidden = !active;
  ui.mute.disabled = !active;
  if (active) ui.hangup.focus();
  else if (document.activeElement === ui.hangup || document.activeElement === document.body) ui.call.focus();
}
function setMuted(muted) {
  ui.mute.setAttribute('aria-pressed', String(muted));
  ui.mute.textContent = muted ? 'Unmute' : 'Mute';
  ui.mutedBadge.hidden = !muted;
  document.body.classList.toggle('is-muted', muted);
}

// ---- transcript ------------------------------------------------------------------------
function addCaption(who, text, final, className = who) {
  const caption = { who, text, final };
  rb.captions.push(caption);
  const node = el('p', `${className}${final ? '' : ' partial'}`);
  node.append(el('span', 'text', text));
  captionNodes.set(caption, node);
  ui.transcript.append(node);
  return caption;
}
function updateCaption(caption, text, final) {
  caption.text = text;
  caption.final = final;
  const node = captionNodes.get(caption);
  node.querySelector('.text').textContent = text;
  node.classList.toggle('partial', !final);
  return node;
}
function removeCaption(caption) {
  captionNodes.get(caption)?.remove();
  captionNodes.delete(caption);
  rb.captions.splice(rb.captions.indexOf(caption), 1);
}
const scrollDown = () => { ui.transcript.scrollTop = ui.transcript.scrollHeight; };
function onUserText(c, text, final) {
  if (!c.userCaption) {
    if (!text.trim()) return;
    c.userCaption = addCaption('user', text, false);
  }
  updateCaption(c.userCaption, text, final);
  if (final) {
    if (!text.trim()) removeCaption(c.userCaption);
    else announce(`You: ${text}`);
    c.userCaption = null;
  }
  scrollDown();
}
function agentCaption(c, turn) {
  const key = `${c.number}.${c.epoch}:${turn}`;
  let caption = agentCaptions.get(key);
  if (!caption) {
    caption = addCaption('agent', '', false);
    agentCaptions.set(key, caption);
  }
  return [key, caption];
}
function divider(text) {
  ui.transcript.append(el('p', 'divider', text));
  scrollDown();
}

// ---- turns and the latency the user felt -------------------------------------------------
// At the user's final: their speech ended at the last loud input window before it. The reply
// is heard at the first loud agent sample after that; it usually arrives after the final.
function armLatency(c) {
  const end = c.monitor?.local.lastLoudEnd;
  c.pending = end == null ? null : { end, ms: null, turn: null };
  matchLatency(c);
}
function matchLatency(c) {
  const p = c.pending;
  if (!p || p.ms != null) return;
  const onset = c.monitor.firstRemoteOnsetAfter(p.end);
  if (onset == null) return;
  p.ms = (onset - p.end) * 1000;
  if (p.turn) {
    p.turn.mouth_to_ear_ms = p.ms;
    renderTurnNote(p.turn, p.note);
    renderLatency();
  }
}
function onTurn(c, ev) {
  const [key, caption] = agentCaption(c, ev.turn);
  const reply = String(ev.reply ?? '');
  const node = updateCaption(caption, reply || caption.text, true);
  if (!reply && !caption.text && !ev.interrupted) {
    removeCaption(caption);
    agentCaptions.delete(key);
  }
  if (ev.interrupted) {
    node.classList.add('interrupted');
    if (!node.querySelector('.tag')) node.append(el('span', 'tag', 'interrupted'));
  }
  const record = {
    turn: ev.turn, heard: String(ev.heard ?? ''), reply, interrupted: Boolean(ev.interrupted),
    mouth_to_ear_ms: null, server: ev.metrics || {}, over_budget: ev.over_budget || [],
    session_id: c.sessionId,
  };
  if (c.pending) {
    record.mouth_to_ear_ms = c.pending.ms;
    c.pending.turn = record;
  }
  rb.turns.push(record);
  c.turnNote = el('p', 'turn-note');
  captionNodes.get(caption)?.after(c.turnNote);
  if (c.pending) c.pending.note = c.turnNote;
  renderTurnNote(record, c.turnNote);
  if (reply) announce(`Agent: ${reply}${ev.interrupted ? ' (interrupted)' : ''}`);
  renderLatency();
  scrollDown();
}
function renderTurnNote(record, node) {
  if (!node) return;
  node.textContent = Number.isFinite(record.mouth_to_ear_ms)
    ? `answered ${fmtMs(record.mouth_to_ear_ms)} after you stopped` : '';
}
function renderLatency() {
  const measured = rb.turns.filter((t) => Number.isFinite(t.mouth_to_ear_ms));
  const values = measured.map((t) => t.mouth_to_ear_ms);
  const last = rb.turns[rb.turns.length - 1];
  const summary = { turns: values.length, p50: percentile(values, 50), p90: percentile(values, 90) };
  rb.stats.mouth_to_ear = summary;
  if (!last) return;
  ui.latency.textContent = Number.isFinite(last.mouth_to_ear_ms)
    ? `${fmtMs(last.mouth_to_ear_ms)} from the end of your words to the agent's voice`
    : `last reply: not measured${last.interrupted ? ' (interrupted)' : ''}`;
  ui.latencySummary.textContent = values.length
    ? `median ${fmtMs(summary.p50)} · 90th percentile ${fmtMs(summary.p90)} over ${values.length} `
      + `repl${values.length === 1 ? 'y' : 'ies'} (measured in this page)`
    : '';
  const m = last.server;
  const parts = SERVER_STAGES.filter(([k]) => Number.isFinite(m[k])).map(([k, label]) => [label, fmtMs(m[k])]);
  const sent = m.time_to_first_audio_ms;
  const rest = Number.isFinite(last.mouth_to_ear_ms) && Number.isFinite(sent)
    ? `The other ${fmtMs(Math.max(0, last.mouth_to_ear_ms - sent))} were the network and audio buffering both ways.`
    : '';
  ui.breakdownNote.textContent = parts.length
    ? `Inside the agent, counted from when it heard you stop:` : '';
  ui.breakdown.replaceChildren(...parts.flatMap(([label, v]) => [el('dt', '', label), el('dd', '', v)]));
  ui.breakdownRest.textContent = rest;
}

// ---- connection quality ------------------------------------------------------------------
function renderQuality() {
  const s = rb.stats;
  const rows = [];
  if (s.send) {
    rows.push(['You → agent', `round trip ${fmtMs(s.send.rtt_ms)} · loss ${fmtPct(s.send.loss_pct)} · jitter ${fmtMs(s.send.jitter_ms)}`]);
  }
  if (s.receive) {
    rows.push(['Agent → you', `loss ${fmtPct(s.receive.loss_pct)} · jitter ${fmtMs(s.receive.jitter_ms)}`]);
  }
  if (s.agent?.buffer_ms != null || s.agent?.concealed_pct != null) {
    rows.push(['Agent\u2019s buffer', `${fmtMs(s.agent.buffer_ms)} · repaired ${fmtPct(s.agent.repaired_pct)} · concealed ${fmtPct(s.agent.concealed_pct)}`]);
  }
  ui.quality.replaceChildren(...rows.flatMap(([k, v]) => [el('dt', '', k), el('dd', '', v)]));
  ui.link.textContent = s.agent?.words
    ? s.agent.words.charAt(0).toUpperCase() + s.agent.words.slice(1)
    : ({ reconnecting: 'Reconnecting…' }[rb.state] ?? (rb.connected ? 'Measuring…' : 'Not connected'));
}
async function pollQuality(c) {
  const conn = c.conn;
  if (call !== c || !conn?.pc || !rb.connected) return;
  try {
    const q = await readQuality(conn.pc, c.qualitySnapshot);
    if (call !== c || conn !== c.conn) return;
    c.qualitySnapshot = q.snapshot;
    rb.stats.send = q.send;
    rb.stats.receive = q.receive;
    rb.stats.heartbeat_rtt_ms = conn.rttMs;
    renderQuality();
  } catch (e) {
    log('getStats failed:', String(e?.message || e));
  }
}
function clearQuality() {
  rb.stats = {};
  renderQuality();
}

// ---- events from the agent ---------------------------------------------------------------
function onEvent(c, ev) {
  rb.events.push(ev);
  if (rb.events.length > 2000) rb.events.splice(0, 500);
  if (ev?.type !== 'link') log(ev);
  switch (ev?.type) {
    case 'hello': rb.sessionId = c.sessionId || ev.session_id || null; break;
    case 'ready': onReady(c); break;
    case 'state': onAgentState(ev.state); break;
    case 'partial': onUserText(c, String(ev.text ?? ''), false); break;
    case 'final':
      onUserText(c, String(ev.text ?? ''), true);
      if (String(ev.text ?? '').trim()) armLatency(c);
      break;
    case 'reply': {
      // An announcement (a timer firing) is a caption of its own, outside any turn.
      const [, caption] = agentCaption(c, ev.announcement ? `a${rb.events.length}` : ev.turn);
      const piece = String(ev.text ?? '').trim();
      if (piece) updateCaption(caption, caption.text ? `${caption.text} ${piece}` : piece, false);
      scrollDown();
      break;
    }
    case 'retracted': {
      const key = `${c.number}.${c.epoch}:${ev.turn}`;
      const caption = agentCaptions.get(key);
      if (caption) removeCaption(caption);
      agentCaptions.delete(key);
      break;
    }
    case 'turn': onTurn(c, ev); break;
    case 'tool': {
      const outcome = ev.error != null ? `failed: ${ev.error}` : String(ev.result ?? '');
      const args = JSON.stringify(ev.arguments ?? {});
      const ms = Math.round(Number(ev.ms) || 0);
      ui.transcript.append(el('p', 'tool', `${ev.name}(${args}) → ${outcome.slice(0, 200)} · ${ms} ms`));
      scrollDown();
      break;
    }
    case 'hangup':
      divider('The agent ended the call');
      setTimeout(() => { if (call === c) hangUp('The agent ended the call', { notify: false }); }, 300);
      break;
    case 'error': showError(ev.message || 'The agent reported an error.'); break;
    case 'link':
      rb.stats.agent = describeLink(ev, c.lastLink);
      c.lastLink = ev;
      renderQuality();
      break;
    default: break; // unknown types: debug log only
  }
}
function onReady(c) {
  clearTimeout(c.readyTimer);
  if (c.ready) return;
  c.ready = true;
  showAgentState();
}

// ---- the microphone ----------------------------------------------------------------------
function micConstraints() {
  const on = ui.processing.checked;
  const audio = { echoCancellation: on, noiseSuppression: on, autoGainControl: on };
  const id = ui.mic.value || localStorage.getItem(MIC_KEY) || '';
  if (id) audio.deviceId = { exact: id };
  return { audio };
}
async function openMic() {
  if (!navigator.mediaDevices?.getUserMedia) throw new CallError(MIC_ERRORS.insecure);
  try {
    return await navigator.mediaDevices.getUserMedia(micConstraints());
  } catch (e) {
    if (e?.name === 'OverconstrainedError' && ui.mic.value) { // the remembered mic is gone
      ui.mic.value = '';
      localStorage.removeItem(MIC_KEY);
      return openMic();
    }
    throw new CallError(MIC_ERRORS[e?.name] || `Could not open the microphone: ${e?.message || e}`);
  }
}
async function refreshMics() {
  if (!navigator.mediaDevices?.enumerateDevices) return;
  let devices = [];
  try { devices = await navigator.mediaDevices.enumerateDevices(); } catch { return; }
  const mics = devices.filter((d) => d.kind === 'audioinput' && d.deviceId && d.deviceId !== 'default');
  const chosen = ui.mic.value || localStorage.getItem(MIC_KEY) || '';
  const options = [el('option', '', 'Default microphone')];
  options[0].value = '';
  mics.forEach((d, i) => {
    const o = el('option', '', d.label || `Microphone ${i + 1}`);
    o.value = d.deviceId;
    options.push(o);
  });
  ui.mic.replaceChildren(...options);
  ui.mic.value = mics.some((d) => d.deviceId === chosen) ? chosen : '';
}
// A new microphone or processing setting during a call: swap the track being sent.
async function switchInput() {
  const c = call;
  if (!c?.stream) return;
  try {
    const stream = await openMic();
    if (call !== c) { stream.getTracks().forEach((t) => t.stop()); return; }
    const track = stream.getAudioTracks()[0];
    track.enabled = !c.muted;
    await c.conn?.sender?.replaceTrack(track);
    c.stream.getTracks().forEach((t) => t.stop());
    c.stream = stream;
    c.monitor?.attachLocal(stream);
    log('microphone switched:', track.label);
  } catch (e) {
    showError(e.message || String(e));
  }
}

// ---- the call ------------------------------------------------------------------------------
async function connect(c, resume) {
  const track = c.stream.getAudioTracks()[0];
  const conn = new Connection({
    track, iceServers: ICE_SERVERS, token: TOKEN,
    handlers: {
      log,
      onEvent: (ev) => call === c && c.conn === conn && onEvent(c, ev),
      onTrack: (stream) => {
        if (call !== c || c.conn !== conn) return;
        ui.audio.srcObject = stream;
        ui.audio.play().catch(() => {}); // autoplay is allowed after the Call click
        c.monitor?.attachRemote(stream);
      },
      onOpen: () => {
        if (call !== c) return;
        rb.connected = true;
        document.body.dataset.connection = 'connected';
        conn.send({ type: 'mute', muted: c.muted });
      },
      onDead: (reason) => call === c && c.conn === conn && reconnect(c, reason),
      onEnded: (reason) => call === c && c.conn === conn && hangUp(reason, { notify: false }),
    },
  });
  c.conn = conn;
  rb.pc = conn.pc;
  try {
    const result = await conn.open(resume);
    rb.pc = conn.pc;
    if (!result.resumed) {
      if (resume) divider('The agent restarted — new conversation, same transcript');
      c.epoch += 1;
      c.lastLink = null;
    }
    c.sessionId = result.sessionId;
    c.secret = result.secret;
    rb.sessionId = result.sessionId;
    c.qualitySnapshot = null;
    log('session:', String(result.sessionId), result.resumed ? '(resumed)' : '');
    c.reconnecting = false;
    c.ready = false;
    c.spoken = false;
    c.agentState = 'listening';
    show('connecting', 'Connected — one moment…');
    c.readyTimer = setTimeout(() => onReady(c), READY_FALLBACK_MS);
  } catch (e) {
    conn.close();
    throw e;
  }
}

async function reconnect(c, reason) {
  if (call !== c || c.reconnecting) return;
  c.reconnecting = true;
  rb.connected = false;
  document.body.dataset.connection = 'reconnecting';
  clearTimeout(c.readyTimer);
  if (c.userCaption) onUserText(c, c.userCaption.text, true);
  show('reconnecting', `Reconnecting… (${reason})`);
  rb.stats = { mouth_to_ear: rb.stats.mouth_to_ear };
  renderQuality();
  log('reconnecting:', reason);
  const started = performance.now();
  for (let attempt = 0; ; attempt += 1) {
    // Exponential backoff with jitter: many pages that lost one server do not return in step.
    const delay = attempt === 0 ? Math.random() * BACKOFF.firstMs
      : Math.min(BACKOFF.capMs, BACKOFF.baseMs * 2 ** (attempt - 1)) * (0.5 + Math.random() / 2);
    await sleep(delay);
    if (call !== c) return;
    if (performance.now() - started > BACKOFF.giveUpMs) {
      hangUp('Could not reconnect to the agent. Press Call to try again.', { failed: true, title: 'Disconnected' });
      return;
    }
    show('reconnecting', `Reconnecting… (attempt ${attempt + 1})`);
    const resume = c.sessionId ? { session_id: c.sessionId, session_secret: c.secret ?? '' } : null;
    try {
      await connect(c, resume);
      return;
    } catch (e) {
      if (call !== c) return;
      log('reconnect attempt failed:', String(e?.message || e));
      if (e instanceof CallError && !e.retry && e.status && e.status < 500) {
        hangUp(e.message, { failed: true, title: 'Disconnected' });
        return;
      }
      if (e instanceof CallError && e.retryAfterMs > 0) await sleep(e.retryAfterMs);
    }
  }
}

// Waits `ms` before the next attempt, saying so each second; false if the call was cancelled.
async function countdown(c, kind, ms) {
  const end = performance.now() + ms;
  for (;;) {
    if (call !== c) return false;
    const left = end - performance.now();
    if (left <= 0) return true;
    const secs = Math.ceil(left / 1000);
    show('connecting', `${RETRY_WORDS[kind] ?? RETRY_WORDS.timeout} ${secs} s`);
    await sleep(left - (secs - 1) * 1000); // wake when the number shown changes
  }
}

// The first connection of a call: a server that is down, busy or restarting is tried again
// with backoff until it answers (or the person hangs up). False: the call was cancelled.
async function connectFirst(c) {
  const started = performance.now();
  for (let attempt = 0; ; attempt += 1) {
    try {
      await connect(c, null);
      return true;
    } catch (e) {
      if (call !== c) return false;
      if (!(e instanceof CallError) || !e.retry) throw e;
      if (performance.now() - started > FIRST_CALL_GIVE_UP_MS) {
        throw new CallError(`${e.message} Press Call to try again.`, { status: e.status });
      }
      log('call attempt failed:', String(e.message));
      // Exponential backoff with jitter, and never sooner than the server's Retry-After.
      const backoff = Math.min(BACKOFF.capMs, BACKOFF.baseMs * 2 ** attempt) * (0.5 + Math.random() / 2);
      if (!(await countdown(c, e.kind, Math.max(backoff, e.retryAfterMs)))) return false;
      show('connecting', e.kind === 'unreachable' ? 'Trying the server again…' : 'Calling again…');
    }
  }
}

async function startCall() {
  callCount += 1;
  const c = (call = {
    number: callCount, epoch: 0, muted: false, stream: null, monitor: null, conn: null,
    sessionId: null, secret: null, reconnecting: false, ready: false, spoken: false,
  });
  showError('');
  setInCall(true);
  setMuted(false);
  if (rb.captions.length || rb.turns.length) divider(`New call · ${new Date().toLocaleTimeString()}`);
  show('connecting', 'Asking for the microphone…');
  // The AudioContext is created inside the click so that it may run.
  const Ctx = window.AudioContext || window.webkitAudioContext;
  try {
    c.stream = await openMic();
    if (call !== c) { c.stream.getTracks().forEach((t) => t.stop()); return; }
    refreshMics();
    if (Ctx && window.AudioWorkletNode) {
      const monitor = new AudioMonitor(new Ctx());
      try {
        await monitor.init();
        monitor.attachLocal(c.stream);
        monitor.onRemoteOnset = () => call === c && matchLatency(c);
        c.monitor = monitor;
        rb.audio = monitor;
      } catch (e) {
        log('level meters unavailable:', String(e?.message || e));
        monitor.close();
      }
    }
    if (call !== c) return;
    show('connecting');
    if (!(await connectFirst(c))) return;
    c.statsTimer = setInterval(() => pollQuality(c), STATS_EVERY_MS);
    renderQuality();
  } catch (e) {
    if (call !== c) return;
    log('call failed:', String(e?.message || e));
    const title = c.stream ? 'Could not reach the agent' : 'Microphone unavailable';
    hangUp(e instanceof CallError ? e.message : `The call failed: ${e?.message || e}`, { failed: true, title });
  }
}

// failed: `message` goes to the error box and the status says `title`.
function hangUp(message = 'Call ended', { failed = false, notify = true, title = 'Call failed' } = {}) {
  const c = call;
  if (!c) return;
  call = null;
  if (notify) c.conn?.hangUp();
  else c.conn?.close();
  clearInterval(c.statsTimer);
  clearTimeout(c.readyTimer);
  clearTimeout(holdTimer);
  heldUntil = 0;
  c.stream?.getTracks().forEach((t) => t.stop());
  c.monitor?.close();
  rb.audio = null;
  ui.audio.srcObject = null;
  if (c.userCaption) onUserText(c, c.userCaption.text, true);
  rb.connected = false;
  rb.pc = null;
  document.body.dataset.connection = 'closed';
  setInCall(false);
  setMuted(false);
  clearQuality();
  show(failed ? 'failed' : 'ended', failed ? title : message);
  if (failed) showError(message);
}

function toggleMute() {
  const c = call;
  if (!c) return;
  c.muted = !c.muted;
  c.stream?.getAudioTracks().forEach((t) => { t.enabled = !c.muted; });
  c.conn?.send({ type: 'mute', muted: c.muted }); // the agent stops waiting for more words
  setMuted(c.muted);
}

// Meters: both levels, every animation frame while a call has a monitor.
let meterFrame = 0;
function drawMeters() {
  const m = call?.monitor;
  const levels = [[ui.meterIn, m ? m.local.level : 0], [ui.meterOut, m ? m.remote.level : 0]];
  meterFrame += 1;
  for (const [node, level] of levels) {
    node.style.setProperty('--level', level.toFixed(3));
    if (meterFrame % 15 === 0) node.setAttribute('aria-valuenow', String(Math.round(level * 100)));
  }
  requestAnimationFrame(drawMeters);
}

// ---- wiring ------------------------------------------------------------------------------
ui.processing.checked = params.get('raw') !== '1';
if (!window.RTCPeerConnection) {
  ui.call.disabled = true;
  show('failed', 'This browser cannot place calls (no WebRTC).');
} else {
  ui.call.addEventListener('click', () => { if (!call) startCall(); });
  ui.hangup.addEventListener('click', () => hangUp('Call ended'));
  ui.mute.addEventListener('click', toggleMute);
  ui.mic.addEventListener('change', () => {
    if (ui.mic.value) localStorage.setItem(MIC_KEY, ui.mic.value);
    else localStorage.removeItem(MIC_KEY);
    switchInput();
  });
  ui.processing.addEventListener('change', switchInput);
  window.addEventListener('pagehide', () => hangUp('Call ended'));
  refreshMics();
  requestAnimationFrame(drawMeters);
}
renderQuality();
