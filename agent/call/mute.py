"""The caller's mute: while muted, inbound audio is replaced by silence.

The caller says so on the `events` channel. Silence (rather than dropping frames) keeps the
listener's clock running, so a turn that was open when the caller muted ends promptly on
its usual end-of-speech silence and nothing is waited for.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator

import numpy as np

from agent.media.inbound import InboundFrame


class Mute:
    def __init__(self) -> None:
        self.muted = False

    def set(self, muted: bool) -> None:
        self.muted = muted

    async def filter(
        self, frames: AsyncGenerator[InboundFrame, None]
    ) -> AsyncGenerator[InboundFrame, None]:
        """`frames` with every frame received while muted turned into silence (closes
        `frames` when closed itself)."""
        async with contextlib.aclosing(frames) as source:
            async for frame in source:
                if self.muted:
                    frame = InboundFrame(np.zeros_like(frame.pcm16), frame.t)
                yield frame
