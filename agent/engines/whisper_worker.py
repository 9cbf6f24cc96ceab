"""The process side of the whisper pool (agent/engines/whisper_pool.py).

Each worker process of the pool loads whisper tiny.en once (`load`, its initializer) and then
runs passes (`transcribe`). CTranslate2 holds the GIL for part of every pass: measured here,
a pass took 52 ms alone and 121 ms beside a busy Python thread, which got only ~45 % of its
time; in the server's process that thread is the event loop carrying every call's audio.
"""

from __future__ import annotations

import os

from agent.audio import Pcm16
from agent.engines.whisper_final import Transcript, WhisperFinal, model_dir
from agent.engines.worker_setup import CRITICAL_PATH, become_engine_worker

_model: WhisperFinal | None = None


def load(parent_pid: int, cpu_threads: int, window_s: float, no_speech_threshold: float) -> None:
    global _model
    become_engine_worker(CRITICAL_PATH, parent_pid)
    _model = WhisperFinal(
        model_dir(), cpu_threads, window_s=window_s, no_speech_threshold=no_speech_threshold
    )
    _model.warm()


def ready() -> int:
    """This worker's pid, once its model is loaded (the initializer ran first)."""
    return os.getpid()


def transcribe(pcm16: Pcm16) -> Transcript:
    if _model is None:
        raise RuntimeError("the whisper worker has no model")
    return _model.transcribe_detailed(pcm16)
