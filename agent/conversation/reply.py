"""One reply as a task: its words (engine_faults.Answerer) → TTS → the outbound track.

A reply starts from a transcript hypothesis and plays only once turns.py commits it. Until
then it runs ahead: the LLM streams and the first unit is synthesized, its audio held back.
Each unit's audio is read from the TTS as fast as the engine makes it (`_read_ahead`) and
played at the track's pace (the sink's backpressure). A unit whose synthesis fails is tried
once more if the engine says that may help and none of it was played, else skipped.
`heard_text` is what the user actually heard, for the history after a barge-in.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncGenerator, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from agent.audio import OUT_RATE_HZ, Pcm16
from agent.clock import Clock
from agent.conversation.engine_faults import RETRIES, Answerer, Emit, Units, retry_allowed
from agent.conversation.history import Conversation
from agent.engines.interfaces import TTS, EngineError, Message
from agent.engines.priority import Priority, Urgency
from agent.metrics import TurnMetrics

log = logging.getLogger(__name__)


class AudioSink(Protocol):
    """What the reply needs from the outbound track.

    `enqueue` waits for room (backpressure); audio whose call was still waiting when `clear()`
    ran is dropped, so a barge-in can never be refilled by a reply that is being cancelled.
    """

    async def enqueue(self, pcm: Pcm16, mark: Hashable) -> None: ...

    async def wait_drained(self) -> None: ...

    def end_stream(self) -> None: ...

    def clear(self) -> int: ...

    def played_samples(self, mark: Hashable) -> int: ...

    def forget(self, mark: Hashable) -> None: ...


@dataclass(frozen=True)
class Stages:
    """What every reply of one call runs through, and where it reports."""

    answerer: Answerer
    tts: TTS
    sink: AudioSink
    conversation: Conversation
    clock: Clock
    emit: Emit


@dataclass
class Unit:
    """One spoken unit of a reply; `mark` = (reply id, index) tags its audio in the sink."""

    mark: tuple[int, int]
    text: str
    samples: int = 0
    complete: bool = False
    failed: bool = False
    filler: bool = False
    # Its class for the shared TTS pool (priority.py): later units read ahead until the
    # listener is about to need them.
    urgency: Urgency = field(default_factory=lambda: Urgency(Priority.READ_AHEAD))


class Reply:
    """One reply as a task: produces audio for `user_text`; plays only once committed."""

    _ids = itertools.count(1)

    def __init__(self, user_text: str, metrics: TurnMetrics, stages: Stages) -> None:
        self.id = next(self._ids)
        self.user_text = user_text
        self.metrics = metrics
        self.units: list[Unit] = []
        self.committed = asyncio.Event()
        self.stopped = False  # set at barge-in, before the task's cancellation lands
        self._s = stages
        self.task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
            self._run(), name=f"reply-{self.id}"
        )

    def commit(self) -> None:
        self.committed.set()
        if self.units:  # the first unit, synthesized speculatively, is now on the critical path
            self.units[0].urgency.raise_to(Priority.FIRST_AUDIO)

    def stop(self) -> None:
        """Stop queueing audio at once. Cancelling the task takes a loop iteration or two to
        reach the TTS loop, and in between it could refill the track that was just cleared."""
        self.stopped = True

    async def cancel(self) -> None:
        """Cancel the task and wait until its streams are closed; never swallows our own
        cancellation."""
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        except Exception:
            log.exception("reply %d failed while being cancelled", self.id)

    def heard_text(self) -> str:
        """The words the user actually heard (a partly played unit is cut proportionally)."""
        sink = self._s.sink
        heard: list[str] = []
        for unit in self.units:
            if unit.failed:
                continue  # never synthesized: nothing was heard, the reply went on
            played = sink.played_samples(unit.mark)
            if played <= 0:
                break
            if unit.filler:
                if unit.complete and played >= unit.samples:
                    continue  # heard, but not part of the answer
                break
            if unit.complete and played >= unit.samples:
                heard.append(unit.text)
                continue
            words = unit.text.split()
            fraction = played / unit.samples if unit.samples else 0.0
            n = int(len(words) * fraction)
            if n:
                heard.append(" ".join(words[:n]))
            break
        return " ".join(heard)

    def _messages(self) -> Sequence[Message]:
        return self._s.conversation.messages(self.user_text)

    async def _play(self, pcm: Pcm16, mark: Hashable) -> None:
        if not self.stopped:
            await self._s.sink.enqueue(pcm, mark)

    async def _run(self) -> None:
        s = self._s
        units: Units = asyncio.Queue(maxsize=4)
        async with asyncio.TaskGroup() as tg:
            answer = s.answerer.answer(self.id, self._messages, self.metrics, units, self.committed)
            tg.create_task(answer)
            tg.create_task(self._speak(units))
        await self.committed.wait()
        s.sink.end_stream()
        await s.sink.wait_drained()
        self.metrics.mark("end", s.clock.now())

    async def _speak(self, units: Units) -> None:
        """Units → TTS → outbound track; holds audio back until the reply is committed."""
        clock = self._s.clock
        index = 0
        while (say := await units.get()) is not None:
            if index > 0:
                # Speculation spends at most one unit of TTS before the endpoint decides.
                await self.committed.wait()
            text = say.text
            unit = Unit((self.id, index), text, filler=say.filler)
            if index == 0:  # what the caller waits for, or made in the pause
                first = Priority.FIRST_AUDIO if self.committed.is_set() else Priority.SPECULATIVE
                unit.urgency.priority = first
            self.units.append(unit)
            index += 1
            self.metrics.mark("tts_started", clock.now())
            for attempt in range(1 + RETRIES):
                try:
                    await self._play_unit(unit)
                    unit.complete = True
                    break
                except EngineError as exc:
                    if retry_allowed(exc, attempt) and unit.samples == 0:
                        log.info("TTS failed for unit %r, trying again: %s", text[:40], exc)
                        continue
                    log.warning("TTS failed for unit %r: %s", text[:40], exc)
                    self._s.emit(
                        {"type": "error", "engine": "tts", "message": "speech synthesis failed"}
                    )
                    unit.failed = True
                    break
        self.metrics.mark("tts_complete", clock.now())

    async def _play_unit(self, unit: Unit) -> None:
        """Speak one unit. Its audio is read from the TTS as fast as the engine makes it
        (`_read_ahead`) and played at the track's pace from here: a shared TTS worker is
        busy for the synthesis (~0.1-0.2 × real time), not for the whole playback, so other
        calls' replies do not queue behind this one being listened to."""
        clock = self._s.clock
        chunks: asyncio.Queue[Pcm16 | BaseException | None] = asyncio.Queue()  # one unit's audio
        reader = asyncio.get_running_loop().create_task(
            self._read_ahead(unit, chunks), name=f"tts-read-{self.id}"
        )
        try:
            pending: list[Pcm16] = []
            if unit.urgency.priority == Priority.READ_AHEAD:
                await self._raise_when_needed(unit, reader)
            while (pcm := await chunks.get()) is not None:
                if isinstance(pcm, BaseException):
                    raise pcm
                self.metrics.mark("tts_first_chunk", clock.now())
                if self.metrics.tts_first_class is None:
                    self.metrics.tts_first_class = unit.urgency.priority.label
                unit.samples += pcm.size
                if not self.committed.is_set():
                    pending.append(pcm)
                    continue
                for held in pending:
                    await self._play(held, unit.mark)
                pending.clear()
                await self._play(pcm, unit.mark)
            if pending:
                await self.committed.wait()
                for held in pending:
                    await self._play(held, unit.mark)
        finally:
            reader.cancel()  # abandoned (barge-in, a failure): the pool cancels the request
            await asyncio.gather(reader, return_exceptions=True)

    async def _raise_when_needed(self, unit: Unit, reader: asyncio.Task[None]) -> None:
        """A read-ahead becomes FIRST_AUDIO when the audio before it has (nearly) played out
        and it is still not synthesized: the listener would hear a gap."""
        s = self._s
        ahead_s = (
            sum(max(0, u.samples - s.sink.played_samples(u.mark)) for u in self.units) / OUT_RATE_HZ
        )
        with contextlib.suppress(TimeoutError):
            async with s.clock.timeout(max(0.0, ahead_s - 0.2)):
                await asyncio.shield(reader)
        unit.urgency.raise_to(Priority.FIRST_AUDIO)

    async def _read_ahead(
        self, unit: Unit, chunks: asyncio.Queue[Pcm16 | BaseException | None]
    ) -> None:
        """The whole synthesis of `unit` into `chunks` (unbounded: one sentence or so of
        audio), then None; an engine error goes into the queue instead, for the player to
        raise."""
        try:
            async with contextlib.aclosing(self._synthesize(unit)) as audio:
                async for pcm in audio:
                    chunks.put_nowait(pcm)
        except Exception as exc:
            chunks.put_nowait(exc)
        else:
            chunks.put_nowait(None)

    def _synthesize(self, unit: Unit) -> AsyncGenerator[Pcm16, None]:
        """The TTS request for one unit: everything the engine is told about it is here
        (`unit.mark[1]` is its place in the reply, `unit.filler` marks a filler)."""
        return self._s.tts.synthesize(unit.text, urgency=unit.urgency)
