// AudioWorklet processor: the level of one audio input, 20 ms window by 20 ms window.
// Each window posts {t, rms, peak, firstLoud}: t is the window's start on the AudioContext
// clock, firstLoud the offset in seconds of its first sample louder than `threshold` (-1: none).
// Sample-accurate on the audio clock, which a requestAnimationFrame poll of an AnalyserNode
// (16 ms and throttled in background tabs) is not.

const WINDOW_S = 0.02;

class LevelProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.threshold = options.processorOptions.threshold;
    this.size = Math.round(sampleRate * WINDOW_S);
    this.start(currentTime);
  }

  start(t) {
    this.t0 = t;
    this.n = 0;
    this.sum = 0;
    this.peak = 0;
    this.firstLoud = -1;
  }

  process(inputs) {
    const samples = inputs[0]?.[0];
    if (!samples) return true; // nothing connected yet
    for (let i = 0; i < samples.length; i += 1) {
      if (this.n === 0) this.start(currentTime + i / sampleRate);
      const v = samples[i];
      const a = Math.abs(v);
      this.sum += v * v;
      if (a > this.peak) this.peak = a;
      if (this.firstLoud < 0 && a > this.threshold) this.firstLoud = this.n / sampleRate;
      this.n += 1;
      if (this.n === this.size) {
        this.port.postMessage({
          t: this.t0, rms: Math.sqrt(this.sum / this.n), peak: this.peak, firstLoud: this.firstLoud,
        });
        this.n = 0;
      }
    }
    return true;
  }
}

registerProcessor('ringback-level', LevelProcessor);
