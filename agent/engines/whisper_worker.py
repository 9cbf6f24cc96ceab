"""The process side of the whisper pool (agent/engines/whisper_pool.py).

    python -m agent.engines.whisper_worker PARENT_PID CPU_THREADS WINDOW_S NO_SPEECH_THRESHOLD

Loads whisper tiny.en once at start (warmed), says ready, then transcribes one batch of
utterances per request until its stdin closes. A fresh interpreter that imports only the
model's code: a multiprocessing "spawn" child imports the server's whole main module first
(aiohttp, aiortc, ...), which costs memory in every worker.

Frames both ways: a 5-byte header (kind: 1 byte, payload size: u32 big-endian) + payload.

  stdin   B  a batch: u32 count, count × u32 sample counts, then the 16 kHz mono s16le
             samples of each utterance one after the other
  stdout  R  ready (once, after loading): JSON {"pid": ...}
          T  the batch's transcripts, in order: JSON list of whisper_final.Transcript fields
          E  the batch failed in the model: JSON {"error": ...} (the worker goes on)

CTranslate2 holds the GIL for part of every pass: measured here, a pass took 52 ms alone and
121 ms beside a busy Python thread, which got only ~45 % of its time; in the server's process
that thread is the event loop carrying every call's audio. Hence a process, not a thread.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from agent.engines.worker_setup import CRITICAL_PATH, become_engine_worker

if TYPE_CHECKING:  # the server imports this module for the protocol, not the model
    from agent.engines.whisper_final import WhisperFinal

HEADER = struct.Struct(">cI")
COUNT = struct.Struct(">I")
BATCH, READY, RESULTS, ERROR = b"B", b"R", b"T", b"E"


def pack_batch(batch: Sequence[np.ndarray]) -> bytes:
    """The payload of a B frame (used by the pool)."""
    parts = [COUNT.pack(len(batch))]
    parts += [COUNT.pack(pcm.size) for pcm in batch]
    parts += [np.ascontiguousarray(pcm, dtype="<i2").tobytes() for pcm in batch]
    return b"".join(parts)


def unpack_batch(payload: bytes) -> list[np.ndarray]:
    (count,) = COUNT.unpack_from(payload, 0)
    sizes = [COUNT.unpack_from(payload, 4 + 4 * i)[0] for i in range(count)]
    offset = 4 + 4 * count
    out = []
    for size in sizes:
        out.append(np.frombuffer(payload, dtype="<i2", count=size, offset=offset).astype(np.int16))
        offset += 2 * size
    return out


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _write(stdout: BinaryIO, kind: bytes, payload: bytes) -> None:
    stdout.write(HEADER.pack(kind, len(payload)) + payload)
    stdout.flush()


def serve(model: WhisperFinal, stdin: BinaryIO, stdout: BinaryIO) -> None:
    """Answer batches until stdin closes (the pool closed it, or the server is gone)."""
    while True:
        head = _read_exactly(stdin, HEADER.size)
        if head is None:
            return
        kind, size = HEADER.unpack(head)
        payload = _read_exactly(stdin, size) if size else b""
        if payload is None:
            return
        if kind != BATCH:
            raise SystemExit(f"whisper worker: unexpected frame {kind!r}")
        try:
            results = model.transcribe_batch(unpack_batch(payload))
        except Exception as exc:  # a model failure fails this batch, not the worker
            _write(stdout, ERROR, json.dumps({"error": repr(exc)}).encode())
            continue
        body = json.dumps([dataclasses.asdict(r) for r in results]).encode()
        _write(stdout, RESULTS, body)


def main() -> None:
    parent_pid, cpu_threads = int(sys.argv[1]), int(sys.argv[2])
    window_s, threshold = float(sys.argv[3]), float(sys.argv[4])
    become_engine_worker(CRITICAL_PATH, parent_pid)
    from agent.engines.whisper_final import WhisperFinal, model_dir

    model = WhisperFinal(model_dir(), cpu_threads, window_s=window_s, no_speech_threshold=threshold)
    model.warm()  # loaded and warmed now, not at the first pass
    stdout = sys.stdout.buffer
    _write(stdout, READY, json.dumps({"pid": os.getpid()}).encode())
    serve(model, sys.stdin.buffer, stdout)


if __name__ == "__main__":
    main()
