// Audio levels of the call, read on the AudioContext clock by an AudioWorklet (level-worklet.js):
// the input meter and the agent-voice meter, when the user stopped speaking, and when the
// agent's voice became audible. Mouth-to-ear latency is the time between those two instants,
// with the threshold the headless harness uses (DESIGN.md "Measurement conventions"):
// the user's speech ends after the last 20 ms window with a sample above -40 dBFS; the reply
// starts at its first sample above -40 dBFS.

export const LOUD = 10 ** (-40 / 20); // -40 dBFS as a sample amplitude
const ONSET_QUIET_S = 0.15; // the agent's voice starts after at least this much quiet
const SEGMENT_GAP_S = 0.3; // loud windows closer than this belong to one segment
const MAX_SEGMENTS = 200;

class Side {
  constructor() {
    this.level = 0; // 0..1 for the meter (-60..0 dBFS), fast up and slow down
    this.lastLoudEnd = null; // end of the last loud window (AudioContext seconds)
    this.segments = []; // [[start, end], …] of loud audio
    this.onsets = []; // first loud sample after a quiet stretch
    this.node = null;
    this.source = null;
  }

  take({ t, rms, peak, firstLoud }) {
    const db = 20 * Math.log10(rms + 1e-9);
    this.level = Math.max(Math.min(1, Math.max(0, (db + 60) / 60)), this.level * 0.85);
    if (peak <= LOUD) return null;
    const start = t + Math.max(0, firstLoud);
    const end = t + 0.02;
    const onset = this.lastLoudEnd == null || start - this.lastLoudEnd >= ONSET_QUIET_S;
    const last = this.segments[this.segments.length - 1];
    if (last && start - last[1] < SEGMENT_GAP_S) last[1] = end;
    else this.segments.push([start, end]);
    if (this.segments.length > MAX_SEGMENTS) this.segments.shift();
    this.lastLoudEnd = end;
    if (!onset) return null;
    this.onsets.push(start);
    if (this.onsets.length > MAX_SEGMENTS) this.onsets.shift();
    return start;
  }

  reset() {
    this.level = 0;
    this.lastLoudEnd = null;
    this.segments.length = 0;
    this.onsets.length = 0;
  }
}

export class AudioMonitor {
  constructor(ctx) {
    this.ctx = ctx;
    this.local = new Side();
    this.remote = new Side();
    this.onRemoteOnset = () => {};
    this.sink = null;
  }

  async init() {
    await this.ctx.audioWorklet.addModule('/static/level-worklet.js');
    // A silent path to the destination keeps the worklets running in every browser.
    this.sink = this.ctx.createGain();
    this.sink.gain.value = 0;
    this.sink.connect(this.ctx.destination);
  }

  now() { return this.ctx.currentTime; }

  attach(side, stream, onLoud) {
    this.detach(side);
    if (!stream || !stream.getAudioTracks().length) return;
    side.source = this.ctx.createMediaStreamSource(stream);
    side.node = new AudioWorkletNode(this.ctx, 'ringback-level', {
      numberOfInputs: 1, numberOfOutputs: 1, processorOptions: { threshold: LOUD },
    });
    side.node.port.onmessage = (e) => {
      const onset = side.take(e.data);
      if (onset != null && onLoud) onLoud(onset);
    };
    side.source.connect(side.node).connect(this.sink);
  }

  detach(side) {
    try { side.source?.disconnect(); } catch { /* already gone */ }
    try { side.node?.disconnect(); } catch { /* already gone */ }
    if (side.node) side.node.port.onmessage = null;
    side.source = null;
    side.node = null;
    side.level = 0;
  }

  attachLocal(stream) { this.attach(this.local, stream, null); }

  attachRemote(stream) { this.attach(this.remote, stream, (t) => this.onRemoteOnset(t)); }

  // The first time the agent became audible after `t` (AudioContext seconds), or null.
  firstRemoteOnsetAfter(t) {
    return this.remote.onsets.find((o) => o > t) ?? null;
  }

  close() {
    this.detach(this.local);
    this.detach(this.remote);
    if (this.ctx.state !== 'closed') this.ctx.close().catch(() => {});
  }
}
