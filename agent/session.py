"""One call: wires the stages together, top to bottom like the diagram in the README.

remote track → inbound (16 kHz mono frames) → VAD → endpointer
    → ASR (partials, final) → TurnManager → LLM → chunker → TTS → OutboundAudioTrack
events → the `events` data channel
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Hashable
from typing import Any

from aiortc.mediastreams import MediaStreamTrack

from agent.asr import Recognizer
from agent.audio import Pcm16
from agent.clock import Clock
from agent.config import AgentConfig
from agent.engines.registry import Engines
from agent.events import EventChannel
from agent.inbound import LinkStats, inbound_frames
from agent.llm import Conversation
from agent.metrics import ServerStats, TurnMetrics
from agent.outbound import OutboundAudioTrack
from agent.turns import TurnManager
from agent.vad import Endpointer, EndpointKind, VoiceDetector

log = logging.getLogger(__name__)


class Session:
    def __init__(
        self,
        session_id: str,
        config: AgentConfig,
        engines: Engines,
        clock: Clock,
        stats: ServerStats | None = None,
    ) -> None:
        self.id = session_id
        self.config = config
        self.engines = engines
        self.clock = clock
        self.events = EventChannel(session_id)
        self.link: LinkStats | None = None
        self._stats = stats
        self.outbound = OutboundAudioTrack(
            clock, config.outbound_max_ahead_ms, on_mark_started=self._on_mark_started
        )
        conversation = Conversation()
        if config.system_prompt:
            conversation.system_prompt = config.system_prompt
        self.turns = TurnManager(
            engines.llm,
            engines.tts,
            self.outbound,
            conversation,
            clock,
            self._emit,
            config.turns,
        )

    def _on_mark_started(self, mark: Hashable, t: float) -> None:
        self.turns.on_mark_started(mark, t)

    def _emit(self, event: dict[str, Any]) -> None:
        if event["type"] == "turn" and self._stats is not None:
            self._stats.record_turn(
                event["metrics"], event["interrupted"], len(event["over_budget"])
            )
        self.events.emit(event)

    def _on_link(self, stats: LinkStats) -> None:
        self.link = stats
        self.events.emit(stats.as_event())

    async def run(self, track: MediaStreamTrack) -> None:
        """Serve the call until the inbound track ends (or the task is cancelled)."""
        recognizer = self.engines.asr.create()
        # Load the recognizer while already draining the track: packets queued during a
        # 0.3 s model load would otherwise start the call with a deep jitter backlog.
        opening = asyncio.get_running_loop().create_task(recognizer.open())
        self.events.emit({"type": "hello", "session_id": self.id})
        self.events.emit({"type": "state", "state": str(self.turns.state)})
        try:
            await self._listen(track, recognizer, opening)
        finally:
            opening.cancel()
            await asyncio.gather(opening, return_exceptions=True)
            await self.turns.aclose()
            await recognizer.aclose()
            self.outbound.stop()
            if self._stats is not None and self.link is not None:
                self._stats.record_link(self.link.as_event())
            log.info("[%s] session ended after %d turns", self.id, self.turns.turns_completed)

    async def _listen(
        self, track: MediaStreamTrack, rec: Recognizer, opening: asyncio.Task[None]
    ) -> None:
        cfg = self.config
        vad = VoiceDetector(cfg.vad_aggressiveness, cfg.endpointer.frame_ms)
        endpointer = Endpointer(cfg.endpointer)
        preroll: collections.deque[Pcm16] = collections.deque(
            maxlen=max(1, cfg.preroll_ms // cfg.endpointer.frame_ms)
        )
        turn = 0
        metrics = TurnMetrics(turn=0)
        last_partial_t = 0.0
        last_partial = ""
        stream = inbound_frames(track, self.clock, cfg.jitter, on_stats=self._on_link)
        async with contextlib.aclosing(stream) as frames:
            async for frame in frames:
                event = endpointer.feed(vad.is_speech(frame.pcm16), frame.t)
                if event is None:
                    if endpointer.in_speech:
                        await rec.push(frame.pcm16)
                        if frame.t - last_partial_t >= cfg.partial_interval_ms / 1000:
                            last_partial_t = frame.t
                            text = await rec.partial()
                            if text and text != last_partial:
                                last_partial = text
                                metrics.mark("asr_partial", self.clock.now())
                                self.events.emit({"type": "partial", "text": text})
                    else:
                        preroll.append(frame.pcm16)
                    continue

                if event.kind == EndpointKind.SPEECH_START:
                    turn += 1
                    metrics = TurnMetrics(turn=turn)
                    metrics.mark("audio_chunk_received", frame.t)
                    metrics.mark("speech_start", event.speech_start)
                    metrics.mark("asr_started", self.clock.now())
                    last_partial, last_partial_t = "", frame.t
                    await opening  # normally long done; raises if the model failed to load
                    await rec.start()
                    for pcm in preroll:
                        await rec.push(pcm)
                    preroll.clear()
                    await rec.push(frame.pcm16)
                    await self.turns.on_speech_start()
                elif event.kind == EndpointKind.PAUSE:
                    await rec.push(frame.pcm16)
                    await self.turns.on_pause(await rec.partial(), metrics)
                elif event.kind == EndpointKind.RESUME:
                    await rec.push(frame.pcm16)
                    await self.turns.on_resume()
                elif event.kind == EndpointKind.NOISE:
                    await rec.cancel()
                    await self.turns.on_noise()
                elif event.kind == EndpointKind.END_OF_TURN:
                    assert event.speech_end is not None
                    metrics.mark("speech_end", event.speech_end)
                    metrics.mark("endpoint", frame.t)
                    final = await rec.finish()
                    metrics.mark("asr_complete", self.clock.now())
                    log.info("[%s] turn %d heard %r", self.id, turn, final)
                    # An empty final tells the peer the turn was heard but not understood.
                    self.events.emit({"type": "final", "text": final})
                    await self.turns.on_final(final, metrics)
