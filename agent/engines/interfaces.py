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
(barge-in closes it with `aclose()`).

TTS: `synthesize(text)` is an async iterator of PCM chunks at `sample_rate_hz`, the first as
soon as the engine has one.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from agent.audio import Pcm16
from agent.engines.priority import Urgency


class EngineError(Exception):
    """An engine failed. `retryable`: the same request may succeed if tried again (a worker
    was replaced, a connection dropped); the caller decides whether to (see turns.Reply)."""

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

    async def transcribe(self, pcm16: Pcm16) -> Transcription:
        """Cancellable: a pass cancelled before it runs costs nothing."""
        ...

    async def aclose(self) -> None: ...


# --- LLM ----------------------------------------------------------------------------------


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


@dataclass(frozen=True)
class Message:
    role: Role
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": str(self.role), "content": self.content}


class LLM(Protocol):
    name: str

    def complete(self, messages: Sequence[Message]) -> AsyncGenerator[str, None]: ...

    async def aclose(self) -> None: ...


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
