"""The engine-fault policy: what the caller hears when an LLM is slow or fails.

`Answerer` (one per call) writes a reply's words as `Say` units for reply.py to speak. Every
LLM gets a short first-token timeout and a longer one between tokens (`LlmTimeouts`). If its
first token is slow, FILLER is said and the answer follows. A fast retryable error (not a
timeout) before any text is tried once more. If an LLM fails before any text, the next one of
the chain (the fallback, when configured) is asked, else FALLBACK_REPLY is said; if it fails
mid-reply, the complete sentences already received are kept and MID_REPLY_APOLOGY ends the
reply instead of a cut-off sentence. Every LLM sits behind a circuit breaker (breaker.py): an
open one is skipped without waiting, and its state changes reach the caller as `engine`
events. Error events say which engine failed and how, never an engine's own message.

A TTS failure is reply.py's to handle, under the same one-retry rule (`retry_allowed`).

Tools (tools.py): an LLM that can call them (`complete_with_tools`) is offered the call's
toolbox. When a response asks for tools, its text is spoken, the calls run (only once the
reply is committed: a speculative reply never acts), the assistant's calls and their results
are added to this reply's messages and the model is asked again, up to MAX_TOOL_ROUNDS
rounds. Tools still running after `filler_after_s` get FILLER said. A failed call's error goes
back to the model, which says what it wants about it; if no words come at all after a failure,
or the rounds run out, TOOL_FAILED is said. A round whose calls all end the turn (`end_call`)
asks nothing more (GOODBYE if nothing was said). Each call is a `tool` event; the tools' time
is marked in the turn metrics (`tool_started`, `tool_complete`, `tool_ms`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.clock import Clock
from agent.conversation.breaker import GuardedLlm, LlmChain
from agent.conversation.chunker import Chunker, ChunkerConfig
from agent.conversation.tools import CallControl, Toolbox, ToolOutcome, run_call
from agent.engines.interfaces import (
    LLM,
    EngineError,
    Message,
    Role,
    ToolCalls,
    supports_tools,
)
from agent.metrics import TurnMetrics

log = logging.getLogger(__name__)

FALLBACK_REPLY = "Sorry, I'm having trouble answering right now."
MID_REPLY_APOLOGY = "Sorry, I lost my train of thought."
FILLER = "One moment."
TOOL_FAILED = "Sorry, I couldn't check that."
GOODBYE = "Goodbye!"
FAULT_PHRASES = (FILLER, FALLBACK_REPLY, MID_REPLY_APOLOGY, TOOL_FAILED, GOODBYE)  # cached audio
MAX_TOOL_ROUNDS = 5  # model → tools → model ... per reply
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")
RETRIES = 1  # per engine request, when the engine marks its failure retryable

Emit = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Say:
    """One speakable unit of a reply, from the answerer to the TTS."""

    text: str
    filler: bool = False  # spoken while waiting; kept out of the history


Units = asyncio.Queue[Say | None]  # the answer's units in order, then None


@dataclass(frozen=True)
class LlmTimeouts:
    first_token_s: float = 1.5  # per LLM tried: then the fallback, or an apology
    between_tokens_s: float = 4.0  # once the reply flows
    filler_after_s: float = 0.5  # no first token by then: say FILLER (<= 0: never)

    def __post_init__(self) -> None:
        if self.first_token_s <= 0 or self.between_tokens_s <= 0:
            raise ValueError("LLM timeouts must be positive")


def retry_allowed(exc: BaseException, attempt: int) -> bool:
    """Try an engine request again once if the engine says that may help (and nothing of
    it has been used yet: the callers check that)."""
    return isinstance(exc, EngineError) and exc.retryable and attempt < RETRIES


class Answerer:
    """The LLM side of every reply of one call: the chain of LLMs behind their breakers
    (a plain LLM gets a breaker of its own), and who has heard of their state changes."""

    def __init__(
        self,
        llm: LLM,
        clock: Clock,
        emit: Emit,
        timeouts: LlmTimeouts,
        chunker: ChunkerConfig,
        tools: Toolbox | None = None,
        control: CallControl | None = None,
    ) -> None:
        self.llms = (llm if isinstance(llm, LlmChain) else LlmChain.of(llm, clock=clock)).members
        self.clock = clock
        self.emit = emit
        self.timeouts = timeouts
        self.chunker = chunker
        self.tools = tools or Toolbox()  # the session sets the agent's (after construction)
        self.control = control or CallControl()
        self._breakers_seen = {member.role: "closed" for member in self.llms}

    async def answer(
        self,
        reply_id: int,
        messages: Callable[[], Sequence[Message]],
        metrics: TurnMetrics,
        units: Units,
        committed: asyncio.Event | None = None,
    ) -> None:
        """Put the reply's units into `units`, then None. `messages` is read at each LLM
        request (a committed reply's user text may have changed since it started). Tools
        run only once `committed` is set (None: at once)."""
        await _Answer(self, reply_id, messages, metrics, units, committed).run()

    def report_breakers(self) -> None:
        """Tell the caller about LLM breakers whose state changed since it last heard."""
        for member in self.llms:
            state = str(member.breaker.state)
            if self._breakers_seen.get(member.role) != state:
                self._breakers_seen[member.role] = state
                self.emit({"type": "engine", "engine": "llm", "role": member.role, "state": state})


class _Answer:
    """One reply's words: the primary LLM, else the fallback, else an apology."""

    def __init__(
        self,
        answerer: Answerer,
        reply_id: int,
        messages: Callable[[], Sequence[Message]],
        metrics: TurnMetrics,
        units: Units,
        committed: asyncio.Event | None = None,
    ) -> None:
        self._a = answerer
        self.reply_id = reply_id
        self._messages = messages
        self.metrics = metrics
        self.units = units
        self.committed = committed
        self.chunker = Chunker(answerer.chunker)
        self.got_text = False  # an LLM has sent text for this reply
        self.filler_said = False
        # This reply's tool rounds so far (assistant calls, results): kept across a retry or
        # the fallback LLM, so no tool runs twice.
        self.tool_messages: list[Message] = []
        self.tool_rounds = 0
        self.tool_failed = False

    async def run(self) -> None:
        a, clock = self._a, self._a.clock
        self.metrics.mark("llm_started", clock.now())
        after = a.timeouts.filler_after_s
        filler_at = clock.now() + after if after > 0 else None
        failure: str | None = "is unavailable"  # what the caller is told if no LLM answers
        for member in a.llms:
            if not member.breaker.allow():
                log.info("%s LLM %s skipped: breaker open", member.role, member.llm.name)
                continue
            failure = await self._ask(member, filler_at)
            a.report_breakers()
            if failure is None or self.got_text:
                break  # answered; or failed mid-reply: what was said stands, no second voice
        if failure is not None:
            a.report_breakers()
            await self._apologize(failure)
        await self.units.put(None)

    async def _apologize(self, failure: str) -> None:
        self._a.emit({"type": "error", "engine": "llm", "message": f"the language model {failure}"})
        if not self.got_text:
            await self.units.put(Say(FALLBACK_REPLY))
            return
        for text in self.chunker.flush():
            if _SENTENCE_END.search(text.strip()):
                await self.units.put(Say(text))  # a whole sentence: say it; a fragment: drop it
        await self.units.put(Say(MID_REPLY_APOLOGY))

    async def _ask(self, member: GuardedLlm, filler_at: float | None) -> str | None:
        """Stream one LLM's reply; None when it succeeded, else what failed (for the caller).
        A fast retryable error (not a timeout) before any text is tried once more."""
        name = f"{member.role} LLM {member.llm.name}"
        for attempt in range(1 + RETRIES):
            try:
                await self._stream_llm(member.llm, filler_at)
            except asyncio.CancelledError:
                member.breaker.release()
                raise
            except TimeoutError:
                member.breaker.record_failure()
                stage = "continuing" if self.got_text else "before its first token"
                log.warning("%s timed out %s (reply %d)", name, stage, self.reply_id)
                return "stopped mid-reply" if self.got_text else "timed out"
            except EngineError as exc:
                member.breaker.record_failure()
                if self.got_text:
                    log.warning("%s failed mid-reply (reply %d): %s", name, self.reply_id, exc)
                    return "stopped mid-reply"
                if retry_allowed(exc, attempt) and member.breaker.allow():
                    log.info("%s failed (%s), trying again", name, exc)
                    continue
                log.warning("%s failed (reply %d): %s", name, self.reply_id, exc)
                return "failed"
            except Exception:  # an engine bug: still a failure the breaker must see
                member.breaker.record_failure()
                log.exception("%s crashed (reply %d)", name, self.reply_id)
                return "stopped mid-reply" if self.got_text else "failed"
            else:
                member.breaker.record_success()
                return None
        return "failed"

    async def _stream_llm(self, llm: LLM, filler_at: float | None) -> None:
        """The LLM's reply, with tool rounds until it answers in words (or the cap)."""
        while True:
            calls = await self._stream_round(llm, filler_at)
            if calls is None:
                break
            outcomes = await self._run_tools(calls)
            self.tool_rounds += 1
            after = self._a.timeouts.filler_after_s
            filler_at = self._a.clock.now() + after if after > 0 else None
            if all(o.ends_turn for o in outcomes):
                if not self.got_text:
                    await self.units.put(Say(GOODBYE))
                return
            if self.tool_rounds >= MAX_TOOL_ROUNDS:
                log.warning(
                    "reply %d: the model still wants tools after %d rounds: giving up",
                    self.reply_id,
                    self.tool_rounds,
                )
                self._a.emit({"type": "error", "engine": "llm", "message": "too many tool calls"})
                await self.units.put(Say(TOOL_FAILED))
                return
        if self.tool_failed and not self.got_text:
            await self.units.put(Say(TOOL_FAILED))

    def _request(self, llm: LLM) -> AsyncIterator[str | ToolCalls]:
        if supports_tools(llm) and self._a.tools:
            messages = [*self._messages(), *self.tool_messages]
            # The LLM protocol has no `complete_with_tools`; supports_tools checked it exists.
            complete = llm.complete_with_tools  # type: ignore[attr-defined]
            stream: AsyncIterator[str | ToolCalls] = complete(messages, self._a.tools.specs())
            return stream
        return llm.complete(self._messages())

    async def _stream_round(self, llm: LLM, filler_at: float | None) -> ToolCalls | None:
        """One LLM request: its words become units; the tool calls it asked for, if any."""
        clock, timeouts = self._a.clock, self._a.timeouts
        stream = self._request(llm)
        first_by = clock.now() + timeouts.first_token_s
        calls: ToolCalls | None = None
        async with contextlib.aclosing(stream):  # type: ignore[type-var]  # an async generator
            while True:
                if self.got_text or calls is not None:
                    async with clock.timeout(timeouts.between_tokens_s):
                        delta = await anext(stream, None)
                else:
                    delta = await self._first_delta(stream, first_by, filler_at)
                if delta is None:
                    break
                if isinstance(delta, ToolCalls):
                    calls = delta
                    continue
                if not delta:
                    continue
                if not self.got_text:
                    self.got_text = True
                    self.metrics.mark("llm_first_token", clock.now())
                for text in self.chunker.push(delta):
                    await self.units.put(Say(text))
        self.metrics.mark("llm_complete", clock.now(), overwrite=True)
        for text in self.chunker.flush():
            await self.units.put(Say(text))
        return calls if calls is not None and calls.calls else None

    async def _run_tools(self, calls: ToolCalls) -> list[ToolOutcome]:
        """Run one response's calls together (once the reply is committed); FILLER if they
        take longer than `filler_after_s` and nothing was said yet."""
        a, clock = self._a, self._a.clock
        if self.committed is not None:
            await self.committed.wait()
        started = clock.now()
        self.metrics.mark("tool_started", started)
        tasks = [
            asyncio.ensure_future(run_call(a.tools, call, a.control, clock)) for call in calls.calls
        ]
        try:
            after = a.timeouts.filler_after_s
            if after > 0 and not self.filler_said and not self.got_text:
                with contextlib.suppress(TimeoutError):
                    async with clock.timeout(after):
                        await asyncio.shield(asyncio.gather(*tasks))
                if not all(t.done() for t in tasks):
                    self.filler_said = True
                    await self.units.put(Say(FILLER, filler=True))
            outcomes = list(await asyncio.gather(*tasks))
        finally:
            for t in tasks:
                t.cancel()  # barge-in: a tool still running is no longer wanted
            await asyncio.gather(*tasks, return_exceptions=True)
        done = clock.now()
        self.metrics.mark("tool_complete", done, overwrite=True)
        self.metrics.tool_ms = round((self.metrics.tool_ms or 0.0) + (done - started) * 1000, 1)
        for outcome in outcomes:
            a.emit({**outcome.event(), "turn": self.metrics.turn})
            self.tool_failed = self.tool_failed or outcome.error is not None
        self.tool_messages.append(Message(Role.ASSISTANT, "", tool_calls=calls.calls))
        self.tool_messages += [
            Message(Role.TOOL, o.content, tool_call_id=o.call.id) for o in outcomes
        ]
        return outcomes

    async def _first_delta(
        self, stream: AsyncIterator[str | ToolCalls], first_by: float, filler_at: float | None
    ) -> str | ToolCalls | None:
        """The next delta before the first-token deadline (TimeoutError after it); says the
        filler at `filler_at` if the LLM is still silent then."""
        clock = self._a.clock
        if filler_at is None or self.filler_said:
            async with clock.timeout(max(0.0, first_by - clock.now())):
                return await anext(stream, None)
        pending: asyncio.Future[str | ToolCalls | None] = asyncio.ensure_future(anext(stream, None))
        try:
            with contextlib.suppress(TimeoutError):
                async with clock.timeout(max(0.0, min(filler_at, first_by) - clock.now())):
                    return await asyncio.shield(pending)
            if clock.now() < first_by:
                self.filler_said = True
                await self.units.put(Say(FILLER, filler=True))
            async with clock.timeout(max(0.0, first_by - clock.now())):
                return await asyncio.shield(pending)
        finally:
            if not pending.done():
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)
