"""What an engine implements: speech recognition, LLM and TTS, and the one error they raise.

Engines know nothing of aiortc, turns or sessions; the caller owns timeouts, retries and
fallbacks. PCM is 16-bit signed mono (agent.audio.Pcm16) at the rate the engine declares.

Speech recognition (one recognizer per call, one utterance at a time):

    rec = engine.create()          # per session
    await rec.open()               # takes what it needs (decoders, models) off the event loop
    await rec.start()              # speech began
    await rec.push(pcm16)          # 16 kHz mono int16, any chunk size
    text = await rec.partial()     # best hypothesis so far (cheap, may change)
    text = await rec.finish()      # final transcript of the utterance
    await rec.aclose()

An accurate `Transcriber` (shared by all calls) may replace the streaming recognizer's final:
`await transcriber.transcribe(utterance_pcm16)`.

LLM: `complete(messages)` is an async iterator of text deltas, cancellable at any await
(barge-in closes it with `aclose()`). An LLM that can call tools also has
`complete_with_tools(messages, tools)`, whose stream may yield one `ToolCalls` item (the
model's requested calls, assembled) besides text deltas. LLMs without it are simply never
offered tools and keep working unchanged.

TTS: `synthesize(text)` is an async iterator of PCM chunks at `sample_rate_hz`, the first as
soon as the engine has one.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from agent.audio import Pcm16
from agent.engines.priority import Urgency


class EngineError(Exception):
    """An engine failed. `retryable`: the same request may succeed if tried again (a worker
    was replaced, a connection dropped); the caller decides whether to (see
    agent/conversation/engine_faults.py)."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


# --- speech recognition -------------------------------------------------------------------


class Recognizer(Protocol):
    async def open(self) -> None: ...

    async def start(self) -> None: ...

    async def push(self, pcm16: Pcm16) -> None: ...

    async def partial(self) -> str: ...

    async def finish(self) -> str: ...

    async def cancel(self) -> None: ...

    async def aclose(self) -> None: ...


class AsrEngine(Protocol):
    name: str
    sample_rate_hz: int

    async def start(self) -> None:
        """Load what calls will need (models), off the event loop."""
        ...

    def create(self) -> Recognizer: ...


@dataclass(frozen=True)
class Transcription:
    text: str
    queue_wait_s: float = 0.0  # waiting for a shared engine (other calls' passes)
    compute_s: float = 0.0


class Transcriber(Protocol):
    """An accurate pass over a whole utterance (not streaming), shared by every call."""

    name: str
    sample_rate_hz: int

    async def start(self) -> None:
        """Load and warm the model, off the event loop."""
        ...

    async def transcribe(self, pcm16: Pcm16, urgency: Urgency | None = None) -> Transcription:
        """Cancellable: a pass cancelled before it runs costs nothing. `urgency` (default:
        TURN_FINAL) orders it against other calls' passes; the caller may raise it while the
        pass waits."""
        ...

    async def aclose(self) -> None: ...


# --- LLM ----------------------------------------------------------------------------------


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


@dataclass(frozen=True)
class ToolCall:
    """One call the model asked for; `arguments` is the JSON text exactly as it sent it."""

    id: str
    name: str
    arguments: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True)
class ToolCalls:
    """What a tool-capable LLM's stream yields when the model asks for tools (all of one
    response's calls, assembled)."""

    calls: tuple[ToolCall, ...]


@dataclass(frozen=True)
class ToolSpec:
    """A tool as the model is told about it: `parameters` is a JSON schema object."""

    name: str
    description: str
    parameters: Mapping[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": dict(self.parameters),
            },
        }


@dataclass(frozen=True)
class Message:
    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant message asking for tools
    tool_call_id: str | None = None  # a tool message: the call it answers

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": str(self.role), "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [c.as_dict() for c in self.tool_calls]
            if not self.content:
                out["content"] = None  # what the API expects of a tool-calls-only message
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class LLM(Protocol):
    name: str

    def complete(self, messages: Sequence[Message]) -> AsyncGenerator[str, None]: ...

    async def aclose(self) -> None: ...


class ToolLLM(Protocol):
    """An LLM that can call tools: with `tools` offered, its stream yields text deltas and,
    when the model asks for tools, one `ToolCalls` item (after any text of that response)."""

    name: str

    def complete(self, messages: Sequence[Message]) -> AsyncGenerator[str, None]: ...

    def complete_with_tools(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec]
    ) -> AsyncGenerator[str | ToolCalls, None]: ...

    async def aclose(self) -> None: ...


def supports_tools(llm: object) -> bool:
    """Whether `llm` can be offered tools (has `complete_with_tools`, see ToolLLM)."""
    return callable(getattr(llm, "complete_with_tools", None))


# --- TTS ----------------------------------------------------------------------------------


class TTS(Protocol):
    name: str
    sample_rate_hz: int

    def synthesize(
        self, text: str, *, urgency: Urgency | None = None
    ) -> AsyncGenerator[Pcm16, None]:
        """`urgency`: how soon it is needed (priority.py); an engine without a shared queue
        may ignore it."""
        ...
