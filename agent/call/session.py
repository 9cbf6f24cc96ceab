"""One call: wires the stages together, top to bottom like the diagram in the README.

remote track → inbound (16 kHz mono frames) → listener (speech detector, endpointer, ASR)
    → turn events → TurnManager → LLM → chunker → TTS → OutboundAudioTrack
events → the `events` data channel

Everything the session does logs under its id (logctx.py), whoever runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Hashable
from typing import Any

from aiortc.mediastreams import MediaStreamTrack

from agent.call import logctx
from agent.call.config import AgentConfig
from agent.call.engines import Engines
from agent.call.events import EventChannel
from agent.call.greeting import MARK, play_greeting, speak
from agent.call.mute import Mute
from agent.call.stats import ServerStats
from agent.clock import Clock
from agent.conversation.endpointer import Endpointer
from agent.conversation.history import Conversation
from agent.conversation.listener import (
    Final,
    Listener,
    NoiseOnly,
    Partial,
    Paused,
    Resumed,
    SpeechStarted,
    TurnEvent,
)
from agent.conversation.speech_detector import SpeechDetector
from agent.conversation.turns import State, TurnManager
from agent.engines.interfaces import Role
from agent.media.inbound import LinkStats, inbound_frames
from agent.media.outbound import OutboundAudioTrack

log = logging.getLogger(__name__)


class Session:
    def __init__(
        self,
        session_id: str,
        config: AgentConfig,
        engines: Engines,
        clock: Clock,
        stats: ServerStats | None = None,
        conversation: Conversation | None = None,
    ) -> None:
        """`conversation`: the history of a resumed call (a new one when None)."""
        self.id = session_id
        self.config = config
        self.engines = engines
        self.clock = clock
        self.mute = Mute()
        self.events = EventChannel(session_id, on_mute=self.mute.set, now=clock.now)
        self.link: LinkStats | None = None
        self._stats = stats
        self.outbound = OutboundAudioTrack(
            clock, config.outbound_max_ahead_ms, on_mark_started=self._on_mark_started
        )
        if conversation is None:
            conversation = Conversation()
            if config.system_prompt:
                conversation.system_prompt = config.system_prompt
        # A resumed call goes on counting from the exchanges its history kept.
        self.earlier_turns = sum(1 for m in conversation.turns if m.role == Role.USER)
        self.turns = TurnManager(
            engines.llm,
            engines.tts,
            self.outbound,
            conversation,
            clock,
            self._emit,
            config.turns,
        )

    @property
    def turns_total(self) -> int:
        """Turns of the conversation: those kept from before a resume, and this call's."""
        return self.earlier_turns + self.turns.turns_completed

    def _on_mark_started(self, mark: Hashable, t: float) -> None:
        self.turns.on_mark_started(mark, t)

    def _emit(self, event: dict[str, Any]) -> None:
        if self._stats is not None:
            self._stats.record_event(event)
        self.events.emit(event)

    def _on_link(self, stats: LinkStats) -> None:
        self.link = stats
        report = stats.as_event()
        if self._stats is not None:
            self._stats.record_link_report(report)
        self.events.emit(report)

    async def say_goodbye(self, text: str) -> None:
        """At shutdown: say `text` unless a reply is playing (its `shutdown` event suffices)."""
        if self.turns.state == State.SPEAKING:
            return
        with logctx.bound(self.id):  # called from the server's shutdown, not the call
            await speak(text, self.outbound, self.engines.tts)
            self.outbound.end_stream()
            await self.outbound.wait_drained()
            self.outbound.forget(MARK)

    async def run(self, track: MediaStreamTrack) -> None:
        """Serve the call until the inbound track ends (or the task is cancelled)."""
        with logctx.bound(self.id):  # every task below copies it
            await self._run(track)

    async def _run(self, track: MediaStreamTrack) -> None:
        recognizer = self.engines.asr.create()
        # Open the recognizer while already draining the track: packets queued during a
        # model load would otherwise start the call with a deep jitter backlog.
        opening = asyncio.get_running_loop().create_task(recognizer.open())
        self.events.emit({"type": "hello", "session_id": self.id})
        self.events.emit({"type": "state", "state": str(self.turns.state)})
        # The chime (or greeting), then `ready`: the caller knows when to start talking.
        greeting = asyncio.get_running_loop().create_task(
            play_greeting(self.config.greeting, self.outbound, self.engines.tts, self.events.emit)
        )
        cfg = self.config
        listener = Listener(
            SpeechDetector(cfg.speech, cfg.endpointer.frame_ms, self.engines.silero),
            Endpointer(cfg.endpointer),
            recognizer,
            self.clock,
            cfg.listener,
            recognizer_ready=opening,
            transcriber=self.engines.transcriber,
            may_continue=self.turns.may_continue,
        )
        frames = self.mute.filter(
            inbound_frames(track, self.clock, cfg.jitter, on_stats=self._on_link)
        )
        try:
            async with contextlib.aclosing(listener.events(frames)) as events:
                async for event in events:
                    await self._dispatch(event)
        finally:
            opening.cancel()
            greeting.cancel()
            await asyncio.gather(opening, greeting, return_exceptions=True)
            await self.turns.aclose()
            await recognizer.aclose()
            self.outbound.stop()
            if self._stats is not None and self.link is not None:
                self._stats.record_link(self.link.as_event())
            self.events.flush_logs()
            log.info("session ended after %d turns", self.turns.turns_completed)

    async def _dispatch(self, event: TurnEvent) -> None:
        match event:
            case SpeechStarted(_, continues_turn):
                await self.turns.on_speech_start(continues_turn)
            case Partial(text):
                self.events.emit({"type": "partial", "text": text})
            case Paused(hypothesis, metrics):
                await self.turns.on_pause(hypothesis, metrics)
            case Resumed():
                await self.turns.on_resume()
            case NoiseOnly():
                await self.turns.on_noise()
            case Final(text, metrics):
                # What the user said stays out of INFO logs unless asked (--log-transcripts).
                level = logging.INFO if self.config.log_transcripts else logging.DEBUG
                log.log(level, "turn %d heard %r", metrics.turn, text)
                # An empty final tells the peer the turn was heard but not understood.
                self.events.emit({"type": "final", "text": text})
                await self.turns.on_final(text, metrics)
