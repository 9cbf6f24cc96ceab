"""Streaming Silero VAD (v6 ONNX, as shipped in faster_whisper/assets) for 16 kHz int16 audio.

The model scores 512-sample (32 ms) windows. Each call takes the window prefixed by the last
64 samples of the previous window ("context"), plus the LSTM state (h, c) returned by the
previous call:

    inputs : input [1, 576] float32 in [-1, 1], h [1, 1, 128], c [1, 1, 128]
    outputs: speech_probs [1], hn [1, 1, 128], cn [1, 1, 128]

(faster_whisper's own wrapper batches many windows in one call because this export runs
its LSTM across the batch axis; streaming just sends one window at a time.)

`SileroModel` holds the onnxruntime session. It keeps no per-stream state, and
`InferenceSession.run` may be called from several threads at once, so one model can serve
many `SileroVad` streams; each stream keeps its own context, state and sample buffer.
A `SileroVad` itself is not thread-safe: feed one stream from one thread.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime

WINDOW = 512  # samples per model call at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous window prepended to each call
STATE_SHAPE = (1, 1, 128)

F32 = npt.NDArray[np.float32]


def default_model_path() -> Path:
    """faster_whisper/assets/silero_vad_v6.onnx, located without importing faster_whisper."""
    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("faster_whisper is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "assets" / "silero_vad_v6.onnx"


class SileroModel:
    """One onnxruntime session (1 intra-op, 1 inter-op thread), shareable across streams."""

    def __init__(self, path: Path | None = None) -> None:
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.enable_cpu_mem_arena = False
        opts.log_severity_level = 3
        self._session: Any = onnxruntime.InferenceSession(
            str(path or default_model_path()),
            sess_options=opts,
            providers=["CPUExecutionProvider"],
        )

    def run(self, x: F32, h: F32, c: F32) -> tuple[float, F32, F32]:
        """Score one [1, 576] window; returns (speech probability, new h, new c)."""
        prob, hn, cn = self._session.run(None, {"input": x, "h": h, "c": c})
        return float(np.asarray(prob).reshape(-1)[0]), hn, cn

    def stream(self) -> SileroVad:
        """A new per-stream VAD over this model (agent.conversation.speech_detector.SpeechModel)."""
        return SileroVad(self)


class SileroVad:
    """Per-stream VAD state over a shared `SileroModel`.

    `push` accepts int16 frames of any length (the agent sends 20 ms = 320 samples), buffers
    them into 512-sample windows and scores every complete window. It returns the newest
    probability when at least one window completed during this call, else None (with
    320-sample frames, 5 of every 8 calls complete a window). `last_prob` keeps the newest
    value; `windows` counts scored windows since the last reset.
    """

    def __init__(self, model: SileroModel | None = None) -> None:
        self.model = model if model is not None else SileroModel()
        self._pending = np.zeros(0, np.float32)
        self._context = np.zeros(CONTEXT, np.float32)
        self._h = np.zeros(STATE_SHAPE, np.float32)
        self._c = np.zeros(STATE_SHAPE, np.float32)
        self._x = np.zeros((1, CONTEXT + WINDOW), np.float32)  # reused input buffer
        self.last_prob: float | None = None
        self.windows = 0

    def reset(self) -> None:
        """Forget buffered audio, context and LSTM state (call between calls/streams)."""
        self._pending = np.zeros(0, np.float32)
        self._context[:] = 0.0
        self._h[:] = 0.0
        self._c[:] = 0.0
        self.last_prob = None
        self.windows = 0

    def push(self, frame: npt.NDArray[np.int16]) -> float | None:
        samples = frame.reshape(-1).astype(np.float32) / 32768.0
        buf = np.concatenate([self._pending, samples]) if self._pending.size else samples
        n = buf.size // WINDOW
        newest: float | None = None
        for i in range(n):
            window = buf[i * WINDOW : (i + 1) * WINDOW]
            self._x[0, :CONTEXT] = self._context
            self._x[0, CONTEXT:] = window
            newest, self._h, self._c = self.model.run(self._x, self._h, self._c)
            self._context = window[-CONTEXT:].copy()
            self.windows += 1
        self._pending = buf[n * WINDOW :].copy()
        if newest is not None:
            self.last_prob = newest
        return newest
