"""Is this 20 ms frame the user speaking? webrtcvad, then Silero VAD, then the talker's level.

webrtcvad alone calls steady background noise speech once it is louder than about −32 dBFS,
whatever the SNR (measured: pink or fan hum at −29 dBFS: 95-100 % of frames "speech"), so in
a noisy room the endpointer would wait for the noise to stop. Three stages, cheapest first:

1. webrtcvad (~3 µs): its "no" is final.
2. Silero VAD v6 (ONNX, ~57 µs per 32 ms window; the model ships in the faster-whisper
   wheel): speech probability >= `silero_threshold`. It rejects stationary noise (pink, hum,
   white: 0 % of frames at −26 dBFS) but, rightly, takes background talkers for speech.
3. The talker gate: once the user has been heard, a frame more than `talker_margin_db`
   below their voice's level (an envelope of their voiced frames: fast up, slow down) is
   someone or something else — background babble 20 dB down, for instance.

Silero keeps recurrent state, so it sees every frame; the model (one onnxruntime session) is
shared by all calls, the stream state is per call. The detector sees the model only as a
`SpeechModel` (agent.engines.silero_vad.SileroModel is one), which the call's wiring passes in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from agent.audio import Pcm16, dbfs
from agent.conversation.endpointer import VoiceDetector

DETECTORS = ("silero", "webrtcvad")
FIRST_FRAMES = 10
ATTACK, RELEASE, RECOVER = 0.2, 0.002, 0.0002  # per 20 ms frame, of the gap in dB


class SpeechStream(Protocol):
    """One call's speech probabilities: `push` every frame (it keeps recurrent state)."""

    @property
    def last_prob(self) -> float | None:
        """The newest probability (None before the first scored window)."""
        ...

    def push(self, frame: Pcm16) -> float | None: ...


class SpeechModel(Protocol):
    """A speech model shared by every call; each call opens its own stream."""

    def stream(self) -> SpeechStream: ...


@dataclass(frozen=True)
class SpeechDetectorConfig:
    kind: str = "silero"  # silero: all three stages | webrtcvad: stage 1 only
    vad_aggressiveness: int = 2
    silero_threshold: float = 0.5
    talker_margin_db: float = 12.0  # 0 disables the talker gate
    # Inbound audio that the agent's own recently sent voice explains is not the user
    # (agent/media/echo.py; the listener applies it, the call's wiring feeds it).
    echo_guard: bool = True

    def __post_init__(self) -> None:
        if self.kind not in DETECTORS:
            raise ValueError(f"speech detector must be one of {', '.join(DETECTORS)}")
        if self.vad_aggressiveness not in (0, 1, 2, 3):
            raise ValueError("VAD aggressiveness must be 0..3")
        if not 0 < self.silero_threshold < 1:
            raise ValueError("silero_threshold must be within (0, 1)")
        if self.talker_margin_db < 0:
            raise ValueError("talker_margin_db must be >= 0")


class SpeechDetector:
    def __init__(
        self, config: SpeechDetectorConfig, frame_ms: int, silero: SpeechModel | None
    ) -> None:
        if config.kind == "silero" and silero is None:
            raise ValueError("the silero speech detector needs the Silero model")
        self.config = config
        self._webrtc = VoiceDetector(config.vad_aggressiveness, frame_ms)
        self._silero = silero.stream() if config.kind == "silero" and silero else None
        self.talker_dbfs: float | None = None
        self._first: list[float] = []
        self.probability = 0.0  # Silero's latest

    def is_speech(self, frame: Pcm16) -> bool:
        voiced = self._webrtc.is_speech(frame)
        if self._silero is None:
            return voiced
        self._silero.push(frame)  # always: its recurrent state must see every frame
        self.probability = self._silero.last_prob or 0.0
        if not voiced or self.probability < self.config.silero_threshold:
            return False
        level = max(dbfs(frame), -120.0)
        talker = self.talker_dbfs
        if talker is None:
            # The first few voiced frames set the level together: one loud click must not.
            self._first.append(level)
            if len(self._first) == FIRST_FRAMES:
                self.talker_dbfs = sum(self._first) / FIRST_FRAMES
            return True
        margin = self.config.talker_margin_db
        if margin > 0 and level < talker - margin:
            # Someone or something quieter. Drift toward it only very slowly, so a user who
            # really got quieter (moved away from the microphone) is heard again.
            self.talker_dbfs = talker + RECOVER * (level - talker)
            return False
        # Fast up, slow down: the estimate follows the loud part of the user's voice and is
        # not pulled down by their quiet syllables (or by background voices let through).
        rate = ATTACK if level > talker else RELEASE
        self.talker_dbfs = talker + rate * (level - talker)
        return True
