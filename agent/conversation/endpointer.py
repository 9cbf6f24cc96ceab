"""Voice activity: webrtcvad per 20 ms frame, and the endpointer state machine (pure).

The endpointer turns a stream of voiced/unvoiced decisions into turn events:

    SPEECH_START  enough voiced frames in a short window (min_speech_ms): the user started talking
    PAUSE         the user has been silent for speculate_ms: a good moment to start a reply early
    RESUME        speech came back after a PAUSE, before the turn ended: drop that early reply
    END_OF_TURN   silent for eou_silence_ms (or what `set_eou_silence_ms` chose for this
                  utterance, e.g. from how complete its words sound): the user finished
    NOISE         the "speech" ended but was shorter than min_utterance_ms: not a turn

Every event carries the time of the frame that caused it and, for PAUSE/END_OF_TURN, the end
of the last voiced frame (`speech_end`), from which end-of-turn delay is measured.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from enum import StrEnum

import webrtcvad

from agent.audio import ASR_RATE_HZ, Pcm16


class EndpointKind(StrEnum):
    SPEECH_START = "speech_start"
    PAUSE = "pause"
    RESUME = "resume"
    END_OF_TURN = "end_of_turn"
    NOISE = "noise"


@dataclass(frozen=True)
class EndpointEvent:
    kind: EndpointKind
    t: float
    speech_start: float
    speech_end: float | None = None


@dataclass(frozen=True)
class EndpointerConfig:
    frame_ms: int = 20
    min_speech_ms: int = 120
    onset_window_ms: int = 200
    speculate_ms: int = 160
    eou_silence_ms: int = 400
    min_utterance_ms: int = 200

    def __post_init__(self) -> None:
        if self.frame_ms not in (10, 20, 30):
            raise ValueError("frame_ms must be 10, 20 or 30 (webrtcvad)")
        if self.onset_window_ms < self.frame_ms:
            raise ValueError("onset_window_ms must hold at least one frame")
        if not 0 < self.min_speech_ms <= self.onset_window_ms:
            raise ValueError("need 0 < min_speech_ms <= onset_window_ms")
        if not 0 < self.speculate_ms <= self.eou_silence_ms:
            raise ValueError("need 0 < speculate_ms <= eou_silence_ms")


class Endpointer:
    """Pure state machine: feed one VAD decision per frame, get turn events back."""

    def __init__(self, config: EndpointerConfig) -> None:
        self.config = config
        self._frame_s = config.frame_ms / 1000
        self._window: collections.deque[tuple[float, bool]] = collections.deque(
            maxlen=config.onset_window_ms // config.frame_ms
        )
        self._min_voiced = max(1, config.min_speech_ms // config.frame_ms)
        self._in_speech = False
        self._paused = False
        self._speech_start = 0.0
        self._last_voiced_end = 0.0
        self._eou_s = config.eou_silence_ms / 1000

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    def set_eou_silence_ms(self, ms: int) -> None:
        """The silence that ends this utterance (e.g. shorter once its words sound complete).
        Back to the configured `eou_silence_ms` when speech starts or resumes."""
        self._eou_s = ms / 1000

    def reset(self) -> None:
        self._window.clear()
        self._in_speech = False
        self._paused = False

    def feed(self, voiced: bool, t: float) -> EndpointEvent | None:
        """`t` is the capture time of the frame's start."""
        cfg = self.config
        if not self._in_speech:
            self._window.append((t, voiced))
            voiced_times = [ft for ft, v in self._window if v]
            if len(voiced_times) >= self._min_voiced:
                self._in_speech = True
                self._paused = False
                self._speech_start = voiced_times[0]
                self._last_voiced_end = t + self._frame_s
                self._window.clear()
                self._eou_s = cfg.eou_silence_ms / 1000
                return EndpointEvent(EndpointKind.SPEECH_START, t, self._speech_start)
            return None

        if voiced:
            self._last_voiced_end = t + self._frame_s
            if self._paused:
                self._paused = False
                self._eou_s = cfg.eou_silence_ms / 1000
                return EndpointEvent(EndpointKind.RESUME, t, self._speech_start)
            return None

        silence_s = t + self._frame_s - self._last_voiced_end
        if silence_s + 1e-9 >= self._eou_s:
            self._in_speech = False
            self._paused = False
            duration_s = self._last_voiced_end - self._speech_start
            if duration_s + 1e-9 < cfg.min_utterance_ms / 1000:
                # Too short to be a turn (a cough, a click): forget it.
                return EndpointEvent(
                    EndpointKind.NOISE, t, self._speech_start, self._last_voiced_end
                )
            return EndpointEvent(
                EndpointKind.END_OF_TURN, t, self._speech_start, self._last_voiced_end
            )
        if not self._paused and silence_s + 1e-9 >= cfg.speculate_ms / 1000:
            self._paused = True
            return EndpointEvent(EndpointKind.PAUSE, t, self._speech_start, self._last_voiced_end)
        return None


class VoiceDetector:
    """webrtcvad on 16 kHz mono int16 frames of 10/20/30 ms."""

    def __init__(self, aggressiveness: int = 2, frame_ms: int = 20) -> None:
        if aggressiveness not in (0, 1, 2, 3):
            raise ValueError("VAD aggressiveness must be 0..3")
        self._vad = webrtcvad.Vad(aggressiveness)
        self.frame_samples = ASR_RATE_HZ * frame_ms // 1000

    def is_speech(self, frame: Pcm16) -> bool:
        if frame.size != self.frame_samples:
            raise ValueError(f"VAD frame must be {self.frame_samples} samples, got {frame.size}")
        return bool(self._vad.is_speech(frame.tobytes(), ASR_RATE_HZ))
