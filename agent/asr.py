"""ASR interface: one recognizer per call, one utterance at a time, partials while it runs.

    rec = engine.create()          # per session (loads models off the event loop)
    await rec.open()
    await rec.start()              # speech began
    await rec.push(pcm16)          # 16 kHz mono int16, any chunk size
    text = await rec.partial()     # best hypothesis so far (cheap, may change)
    text = await rec.finish()      # final transcript of the utterance
    await rec.aclose()

Engines know nothing of turns or aiortc. Recognizers are not shared between sessions.
"""

from __future__ import annotations

from typing import Protocol

from agent.audio import Pcm16


class AsrError(Exception):
    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


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
