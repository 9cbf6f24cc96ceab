// Connection quality both ways, in numbers a person can read.
// What we send: RTT, loss and jitter from the agent's RTCP receiver reports (remote-inbound-rtp).
// What we receive: loss and jitter of the agent's voice (inbound-rtp), loss over the last
// interval, not since the call started. How the agent hears us: its `link` events, in words.
// Anything a browser or a server reports that cannot be true (negative loss, negative
// buffering, NaN) is shown as unknown rather than printed.

const ms = (seconds) => (Number.isFinite(seconds) && seconds >= 0 ? seconds * 1000 : null);
const count = (v) => (Number.isFinite(v) && v >= 0 ? v : 0);
const pct = (part, whole) => (whole > 0 ? Math.min(100, Math.max(0, (100 * part) / whole)) : null);

export async function readQuality(pc, previous) {
  const report = await pc.getStats();
  let inbound = null;
  let remoteInbound = null;
  let pairRtt = null;
  for (const r of report.values()) {
    const audio = r.kind === 'audio' || r.mediaType === 'audio';
    if (r.type === 'inbound-rtp' && audio) inbound = r;
    else if (r.type === 'remote-inbound-rtp' && audio) remoteInbound = r;
    else if (r.type === 'candidate-pair' && r.nominated && r.state === 'succeeded') {
      pairRtt = ms(r.currentRoundTripTime);
    }
  }
  const received = count(inbound?.packetsReceived);
  const lost = count(inbound?.packetsLost);
  const dReceived = Math.max(0, received - (previous?.received ?? 0));
  const dLost = Math.max(0, lost - (previous?.lost ?? 0));
  return {
    snapshot: { received, lost },
    send: {
      rtt_ms: ms(remoteInbound?.roundTripTime) ?? pairRtt,
      loss_pct: remoteInbound && Number.isFinite(remoteInbound.fractionLost)
        ? Math.min(100, Math.max(0, remoteInbound.fractionLost * 100)) : null,
      jitter_ms: ms(remoteInbound?.jitter),
    },
    receive: {
      rtt_ms: pairRtt,
      loss_pct: inbound ? pct(dLost, dLost + dReceived) : null,
      jitter_ms: ms(inbound?.jitter),
    },
  };
}

// The agent's `link` report (cumulative counters) → a sentence, using the change since the
// previous report so an old burst of loss does not colour the whole call.
export function describeLink(ev, previous) {
  if (ev.path !== 'ringback') {
    return { words: `the agent receives you through aiortc's buffer (${ev.codec ?? 'audio'})` };
  }
  const delta = (k) => Math.max(0, count(ev[k]) - count(previous?.[k]));
  const slots = delta('frames_delivered');
  const concealed = pct(delta('frames_concealed'), slots);
  const repaired = pct(delta('frames_fec_recovered'), slots);
  const buffer = Number.isFinite(ev.playout_delay_ms) && ev.playout_delay_ms >= 0
    ? ev.playout_delay_ms : null;
  let words;
  if (!slots) words = 'the agent is not receiving your audio';
  else if (concealed < 1 && repaired < 2) words = 'the agent hears you well';
  else if (concealed < 5) words = 'the agent hears you with small gaps';
  else words = 'the agent hears you with gaps';
  return { words, concealed_pct: concealed, repaired_pct: repaired, buffer_ms: buffer };
}
