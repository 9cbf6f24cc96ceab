"""OutboundAudioTrack: the agent's voice as an aiortc track.

aiortc has no pacer: its sender calls `recv()` in a loop, so the track paces itself on the
injected monotonic clock, one 20 ms slot of 48 kHz mono per call. It plays silence when idle.
`enqueue()` applies backpressure: it waits while more than `max_ahead_ms` of audio is queued,
so a TTS faster than real time never buffers a whole reply.

What `recv()` returns depends on the codec the sender negotiated:

- Opus (the normal case): encoded `av.Packet`s. agent.media.patches tells the track when the
  sender starts (`encode_opus`); from then on the track encodes each slot itself, inline on the
  event loop, with `agent.media.opus.SpeechEncoder` (the same libopus settings aiortc's patched
  encoder has, byte-identical packets). aiortc then only packs them (`OpusEncoder.pack`): no
  thread-pool round trip per frame and no pure-Python audio level. Settled digital silence is
  not re-encoded (see SpeechEncoder). pts counts 48 kHz samples, so the RTP timestamp advances
  960 per slot and jumps over skipped slots. Packets carry no ssrc-audio-level extension.
- anything else (PCMU/PCMA callers, or a track no sender told): 20 ms `av.AudioFrame`s of
  48 kHz mono s16, encoded by aiortc (in its thread pool).
"""

from __future__ import annotations

import asyncio
import fractions
import logging
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, TypeAlias

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from agent.audio import OUT_FRAME_SAMPLES, OUT_RATE_HZ, Pcm16
from agent.clock import Clock
from agent.media.opus import OpusSendConfig, SpeechEncoder
from agent.media.playout import PlayoutBuffer

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    OpusPacket: TypeAlias = av.Packet[av.stream.Stream]

FRAME_S = OUT_FRAME_SAMPLES / OUT_RATE_HZ
TIME_BASE = fractions.Fraction(1, OUT_RATE_HZ)
# Beyond this lateness the schedule restarts from now instead of bursting frames to catch up.
RESYNC_LATE_S = 0.1


class OutboundAudioTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(
        self,
        clock: Clock,
        max_ahead_ms: int = 300,
        on_mark_started: Callable[[Hashable, float], None] | None = None,
        playout: PlayoutBuffer | None = None,
        on_sent: Callable[[Pcm16, float], None] | None = None,
    ) -> None:
        """`playout`: the buffer frames are pulled from (a test peer's may mix in an echo).
        `on_sent(pcm, t)`: every 20 ms slot as sent (silence too), with its clock time — the
        reference an echo check compares the inbound audio with (agent/media/echo.py)."""
        super().__init__()
        self._clock = clock
        self._buffer = playout or PlayoutBuffer()
        self._max_ahead = OUT_RATE_HZ * max_ahead_ms // 1000
        self._on_mark_started = on_mark_started
        self._on_sent = on_sent
        self._changed = asyncio.Event()
        self._epoch = 0  # bumped by clear(): audio still waiting for room then is stale
        self._t0: float | None = None
        self._frames = 0
        self._encoder: SpeechEncoder | None = None
        self.frames_sent = 0
        self.audio_frames_sent = 0

    @property
    def buffered_ms(self) -> float:
        return self._buffer.buffered_samples * 1000 / OUT_RATE_HZ

    @property
    def underruns(self) -> int:
        return self._buffer.underruns

    @property
    def encoder(self) -> SpeechEncoder | None:
        """The inline Opus encoder, once `encode_opus` was called."""
        return self._encoder

    def encode_opus(self, send: OpusSendConfig) -> None:
        """From the next `recv()` on, return Opus packets encoded with these settings.

        Called by agent.media.patches when a sender starts with Opus as its codec; a second
        call (same sender, replaceTrack) keeps the encoder and its state.
        """
        if self._encoder is None:
            self._encoder = SpeechEncoder(send)

    async def recv(self) -> av.AudioFrame | OpusPacket:
        if self.readyState != "live":
            raise MediaStreamError
        now = self._clock.now()
        if self._t0 is None:
            self._t0 = now
        deadline = self._t0 + self._frames * FRAME_S
        if deadline > now:
            await self._clock.sleep(deadline - now)
        elif now - deadline > RESYNC_LATE_S:
            # Skip the missed slots in the timestamps too: pts follows the real clock, so a
            # receiver sees a gap, not a sudden change in delay.
            skipped = int((now - deadline) / FRAME_S)
            log.debug(
                "outbound track %.0f ms late, skipping %d frames", (now - deadline) * 1000, skipped
            )
            self._frames += skipped
        pulled = self._buffer.pull()
        t = self._clock.now()
        for mark in pulled.started:
            if self._on_mark_started is not None:
                self._on_mark_started(mark, t)
        self._wake()
        if self._on_sent is not None:
            self._on_sent(pulled.pcm, t)
        data: av.AudioFrame | OpusPacket
        if self._encoder is not None:
            data = av.Packet(self._encoder.encode(pulled.pcm))
        else:
            data = av.AudioFrame.from_ndarray(
                pulled.pcm.reshape(1, -1), format="s16", layout="mono"
            )
            data.sample_rate = OUT_RATE_HZ
        data.pts = self._frames * OUT_FRAME_SAMPLES
        data.time_base = TIME_BASE
        self._frames += 1
        self.frames_sent += 1
        if pulled.audio_samples:
            self.audio_frames_sent += 1
        return data

    async def enqueue(self, pcm: Pcm16, mark: Hashable) -> None:
        """Queue 48 kHz mono PCM; waits while more than max_ahead_ms is already queued.

        Audio whose call was still waiting for room when `clear()` ran is dropped.
        """
        epoch = self._epoch
        while self._buffer.buffered_samples > self._max_ahead:
            await self._wait_change()
            if self._epoch != epoch:
                return
        self._buffer.push(pcm, mark)

    async def wait_drained(self) -> None:
        """Until everything queued has been handed to the encoder."""
        while not self._buffer.idle:
            await self._wait_change()

    def end_stream(self) -> None:
        """The current reply has queued all its audio (an empty buffer is its end)."""
        self._buffer.end_stream()

    @property
    def concealed_frames(self) -> int:
        return self._buffer.concealed_frames

    def clear(self) -> int:
        """Barge-in: stop within one frame (short fade). Returns the queued samples dropped."""
        dropped = self._buffer.clear()
        self._epoch += 1
        self._wake()
        return dropped

    def played_samples(self, mark: Hashable) -> int:
        return self._buffer.played_samples(mark)

    def forget(self, mark: Hashable) -> None:
        self._buffer.forget(mark)

    def stop(self) -> None:
        super().stop()
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_change(self) -> None:
        if self.readyState != "live":
            raise MediaStreamError("outbound track stopped")
        await self._changed.wait()
