"""One call: wires the stages together, top to bottom like docs/architecture.md's data flow.

remote track → inbound (16 kHz mono frames) → listener (speech detector, endpointer, ASR)
    → turn events → TurnManager → LLM → chunker → TTS → OutboundAudioTrack
events → the `events` data channel

The agent (engines.agent, agent/api.py) gives the call its prompt and tools; a tool acts on
the call through its CallControl: `end_call` hangs up once the farewell has played, a timer
speaks when the agent is not. Everything the session does logs under its id (logctx.py),
whoever runs it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Hashable, Mapping
from typing import Any

from aiortc.mediastreams import MediaStreamTrack

from agent.audio import Pcm16
from agent.call import logctx
from agent.call.config import AgentConfig
from agent.call.engines import Engines
from agent.call.events import EventChannel
from agent.call.greeting import MARK, play_greeting, speak
from agent.call.mute import Mute
from agent.call.stats import ServerStats
from agent.clock import Clock
from agent.conversation.endpointer import Endpointer
from agent.conversation.history import DEFAULT_SYSTEM_PROMPT, Conversation
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
from agent.conversation.tools import CallControl
from agent.conversation.turns import State, TurnManager
from agent.engines.interfaces import Message, Role
from agent.media.echo import EchoGuard
from agent.media.inbound import LinkStats, inbound_frames
from agent.media.outbound import OutboundAudioTrack

log = logging.getLogger(__name__)

HANGUP_WAIT_S = 20.0  # the longest a farewell may take to play before the agent hangs up
HANGUP_GRACE_S = 0.3  # the farewell's last frames are still on their way to the caller
HOOK_TIMEOUT_S = 5.0  # an agent's on_call_start / on_call_end


class Session:
    def __init__(
        self,
        session_id: str,
        config: AgentConfig,
        engines: Engines,
        clock: Clock,
        stats: ServerStats | None = None,
        conversation: Conversation | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        """`conversation`: the history of a resumed call (a new one when None). `context`:
        the JSON object the offer carried, for the agent's prompt and tools."""
        self.id = session_id
        self.config = config
        self.engines = engines
        self.clock = clock
        self.mute = Mute()
        self.events = EventChannel(session_id, on_mute=self.mute.set, now=clock.now)
        self.link: LinkStats | None = None
        self._stats = stats
        # What the agent sends is the reference its echo check looks for in what it hears.
        self.echo_guard = EchoGuard() if config.speech.echo_guard else None
        self.outbound = OutboundAudioTrack(
            clock,
            config.outbound_max_ahead_ms,
            on_mark_started=self._on_mark_started,
            on_sent=self._on_sent,
        )
        self.agent = engines.agent
        self.control = CallControl(session_id, context, announcer=self._announce_later)
        self.hung_up = False  # the agent ended the call (end_call)
        self.tool_events: collections.deque[dict[str, Any]] = collections.deque(maxlen=20)
        self._announcements: set[asyncio.Task[None]] = set()
        if conversation is None:
            conversation = Conversation()
            default = config.system_prompt or DEFAULT_SYSTEM_PROMPT
            conversation.system_prompt = self.agent.system_prompt(self.control.context, default)
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
        self.turns.answerer.tools = self.agent.toolbox
        self.turns.answerer.control = self.control

    @property
    def turns_total(self) -> int:
        """Turns of the conversation: those kept from before a resume, and this call's."""
        return self.earlier_turns + self.turns.turns_completed

    def _on_sent(self, pcm: Pcm16, t: float) -> None:
        if self.echo_guard is not None:
            self.echo_guard.sent(t, pcm)

    def _on_mark_started(self, mark: Hashable, t: float) -> None:
        self.turns.on_mark_started(mark, t)

    def _emit(self, event: dict[str, Any]) -> None:
        if event.get("type") == "tool":
            self.tool_events.append(event)  # the latest, for /sessions/{id}
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
        """Serve the call until the inbound track ends, the agent hangs up (`hung_up`), or
        the task is cancelled."""
        with logctx.bound(self.id):  # every task below copies it
            await self._hook("on_call_start")
            try:
                await self._run_until_hangup(track)
            finally:
                for task in self._announcements:
                    task.cancel()
                await asyncio.gather(*self._announcements, return_exceptions=True)
                await self._hook("on_call_end")

    async def _hook(self, which: str) -> None:
        try:
            async with asyncio.timeout(HOOK_TIMEOUT_S):
                await self.agent.run_hook(which, self.control)
        except TimeoutError:
            log.warning("agent hook %s took over %.0f s", which, HOOK_TIMEOUT_S)

    async def _run_until_hangup(self, track: MediaStreamTrack) -> None:
        loop = asyncio.get_running_loop()
        serving = loop.create_task(self._run(track), name=f"serve-{self.id}")
        hangup = loop.create_task(self._hang_up_when_asked(), name=f"hangup-{self.id}")
        try:
            await asyncio.wait({serving, hangup}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hangup.cancel()
            serving.cancel()
            await asyncio.wait({serving, hangup})
        if not serving.cancelled() and serving.exception() is not None:
            raise serving.exception()  # type: ignore[misc]  # checked just above

    async def _hang_up_when_asked(self) -> None:
        """Once a tool called end_call: let the farewell play, then end the call."""
        await self.control.hangup.wait()
        deadline = self.clock.now() + HANGUP_WAIT_S
        while self.turns.state in (State.THINKING, State.SPEAKING):
            if self.clock.now() >= deadline:
                log.warning("the farewell did not finish within %.0f s", HANGUP_WAIT_S)
                break
            await self.clock.sleep(0.05)
        await self.clock.sleep(HANGUP_GRACE_S)
        self.hung_up = True
        self.events.emit({"type": "hangup", "by": "agent"})
        log.info("the agent hung up")

    def _announce_later(self, delay_s: float, text: str) -> None:
        task = asyncio.get_running_loop().create_task(self._announce(delay_s, text))
        self._announcements.add(task)
        task.add_done_callback(self._announcements.discard)

    async def _announce(self, delay_s: float, text: str) -> None:
        """Say `text` after `delay_s`, once the agent is neither thinking nor speaking."""
        await self.clock.sleep(delay_s)
        while self.turns.state != State.LISTENING:
            await self.clock.sleep(0.1)
        log.info("announcing after %.0f s", delay_s)
        self.events.emit({"type": "reply", "turn": None, "text": text, "announcement": True})
        self.turns.conversation.turns.append(Message(Role.ASSISTANT, text))
        try:
            await speak(text, self.outbound, self.engines.tts)
            self.outbound.end_stream()
            await self.outbound.wait_drained()
        except Exception as exc:
            log.warning("announcement not said: %r", exc)
        finally:
            self.outbound.forget(MARK)

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
            echo_guard=self.echo_guard,
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
            guard = self.echo_guard
            if guard is not None and guard.checked_frames:
                log.info(
                    "echo guard: %d of %d voiced frames compared were the agent's own voice"
                    " (lag %s ms)",
                    guard.echo_frames,
                    guard.checked_frames,
                    None if guard.locked_lag is None else round(guard.locked_lag / 16),
                )

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
