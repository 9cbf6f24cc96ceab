"""Streaming-ASR worker process: pocketsphinx decoders for many calls, driven over pipes.

Run as `python -m agent.engines.asr_worker PRELOAD [NICENESS [MOST]]` (see worker_setup.py):
PRELOAD idle decoders kept loaded, at most MOST decoders in all.
pocketsphinx holds the GIL while it decodes (~2 ms per 20 ms frame) and while it loads a
decoder (~0.25 s), so in the server's process it would stall every call's audio; here it
stalls nobody. agent/engines/pocketsphinx_asr.py starts a few of these and spreads the calls
over them.

Decoders belong to utterances, not calls: `start` takes an idle decoder (loading one if none
is idle) and `finish`/`cancel` gives it back, so a worker needs as many decoders (~95 MB each)
as its calls have people speaking at the same moment, not as many as it has calls. Past a
peak, idle decoders beyond PRELOAD are freed and the heap trimmed.

Protocol: frames of a 9-byte header — kind (1 byte), stream id (4 bytes, big-endian),
payload length (4 bytes, big-endian) — then the payload. Requests are served in order.
  stdin   S start an utterance        P audio: 16 kHz mono s16le PCM
          H ask for the hypothesis    F end the utterance and ask for its text
          C end the utterance, no answer wanted (also frees a stream's decoder)
  stdout  R ready (stream 0, once, after preloading)
          T the text asked for by H or F, UTF-8
          X the error that H or F (or an earlier S or P of that stream) met, UTF-8
          B progress (stream 0, payload: requests served so far, ASCII): at most every
            PROGRESS_EVERY_S while it serves requests, none while it waits for one
Only H and F are answered, exactly once each, in order, so the server matches answers to
questions by position; B is no answer. Under load the answers to H queue behind seconds of
audio, but B keeps coming as long as the worker gets through its input: the server tells a
worker that is behind (B, late answers) from one that is stuck (nothing at all).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import struct
import sys
import time
from collections.abc import Callable
from typing import Any, BinaryIO

from agent.engines.worker_setup import CAPTIONS, become_engine_worker

HEADER = struct.Struct(">BII")

START, PUSH, HYP, FINISH, CANCEL = (ord(c) for c in "SPHFC")
READY, TEXT, ERROR, PROGRESS = (ord(c) for c in "RTXB")

# Well under any sane hung_after_s (the pool's default is 10 s): a worker with CPU time at all
# says so several times within it. Costs a 9-byte write per PROGRESS_EVERY_S at most.
PROGRESS_EVERY_S = 0.25


# Cheaper search than pocketsphinx's defaults, as accurate here: every other frame's GMM
# scores (ds), 2 Gaussians per mixture (topn), at most 3,000 active HMMs per frame, and no
# second flat-lexicon pass at the end. Measured on six piper sentences: 45 instead of 99 ms of
# CPU per second of audio, WER 0.21 instead of 0.23.
DECODER_OPTIONS: dict[str, Any] = {"ds": 2, "topn": 2, "maxhmmpf": 3000, "fwdflat": False}


def load_decoder() -> Any:
    import pocketsphinx

    return pocketsphinx.Decoder(loglevel="FATAL", **DECODER_OPTIONS)


@functools.cache
def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None


def trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc keeps them otherwise); no-op elsewhere."""
    malloc_trim = _malloc_trim()
    if malloc_trim is not None:
        malloc_trim(0)


CAPTIONS_FULL = "no decoder free: every decoder of this worker is busy"


class Decoders:
    """Utterance → decoder, with an idle pool of at most `keep` decoders and at most `most`
    decoders in all: each holds ~90 MB, so past `most` people speaking at the same moment an
    utterance gets no decoder (its answers report CAPTIONS_FULL: no live captions for it;
    the accurate pass still hears it)."""

    def __init__(self, keep: int, most: int | None = None) -> None:
        self._keep = keep
        self._most = max(keep, 1) if most is None else max(most, keep, 1)
        self._idle = [load_decoder() for _ in range(keep)]
        self._busy: dict[int, Any] = {}
        self._errors: dict[int, str] = {}  # stream -> the error its next answer reports

    def start(self, stream: int) -> None:
        self.cancel(stream)
        if not self._idle and len(self._busy) >= self._most:
            self._errors[stream] = CAPTIONS_FULL
            return
        try:
            decoder = self._idle.pop() if self._idle else load_decoder()
            decoder.start_utt()
        except Exception as exc:  # reported with this stream's next answer
            self._errors[stream] = f"start: {exc}"
            return
        self._busy[stream] = decoder

    def push(self, stream: int, pcm: bytes) -> None:
        decoder = self._busy.get(stream)
        if decoder is None:
            return
        try:
            decoder.process_raw(pcm, False, False)
        except Exception as exc:
            self._errors[stream] = f"decode: {exc}"
            self._drop(stream)

    def hyp(self, stream: int) -> str:
        error = self._errors.get(stream)  # kept: the utterance's final must report it too
        if error is not None:
            raise RuntimeError(error)
        decoder = self._busy.get(stream)
        return _text(decoder) if decoder is not None else ""

    def finish(self, stream: int) -> str:
        self._raise_error(stream)
        decoder = self._busy.pop(stream, None)
        if decoder is None:
            return ""
        try:
            decoder.end_utt()
            text = _text(decoder)
        except Exception:
            del decoder
            trim_heap()
            raise
        if not self._keep_idle(decoder):
            del decoder  # the last reference: pocketsphinx frees its model copy
            trim_heap()
        return text

    def cancel(self, stream: int) -> None:
        self._errors.pop(stream, None)
        decoder = self._busy.pop(stream, None)
        if decoder is None:
            return
        try:
            decoder.end_utt()
        except Exception:
            del decoder
            trim_heap()
            return
        if not self._keep_idle(decoder):
            del decoder
            trim_heap()

    def _raise_error(self, stream: int) -> None:
        error = self._errors.pop(stream, None)
        if error is not None:
            raise RuntimeError(error)

    def _drop(self, stream: int) -> None:
        if self._busy.pop(stream, None) is not None:
            trim_heap()  # that was the last reference: the decoder is freed

    def _keep_idle(self, decoder: Any) -> bool:
        """Keep a decoder for the next utterance if fewer than `keep` are idle."""
        if len(self._idle) < self._keep:
            self._idle.append(decoder)
            return True
        return False


def _text(decoder: Any) -> str:
    hyp = decoder.hyp()
    return str(hyp.hypstr).strip() if hyp is not None and hyp.hypstr else ""


def _read_exactly(stream: BinaryIO, n: int) -> bytes | None:
    data = stream.read(n)
    return data if len(data) == n else None


def serve(
    decoders: Decoders,
    stdin: BinaryIO,
    stdout: BinaryIO,
    now: Callable[[], float] = time.monotonic,
) -> None:
    wrote_at, served, served_at_write = now(), 0, 0

    def answer(kind: int, stream: int, text: str) -> None:
        nonlocal wrote_at, served_at_write
        payload = text.encode()
        stdout.write(HEADER.pack(kind, stream, len(payload)) + payload)
        stdout.flush()
        wrote_at, served_at_write = now(), served

    while True:
        # Before (perhaps) blocking on the next read: any request served since the last write
        # is progress worth telling, if nothing was written for a while (an answer tells too).
        if served > served_at_write and now() - wrote_at >= PROGRESS_EVERY_S:
            answer(PROGRESS, 0, str(served))
        head = _read_exactly(stdin, HEADER.size)
        if head is None:
            return  # the server closed the pipe: exit
        kind, stream, size = HEADER.unpack(head)
        payload = _read_exactly(stdin, size) if size else b""
        if payload is None:
            return
        served += 1
        if kind == PUSH:
            decoders.push(stream, payload)
        elif kind == START:
            decoders.start(stream)
        elif kind == CANCEL:
            decoders.cancel(stream)
        elif kind in (HYP, FINISH):
            try:
                text = decoders.hyp(stream) if kind == HYP else decoders.finish(stream)
            except Exception as exc:
                answer(ERROR, stream, str(exc) or type(exc).__name__)
            else:
                answer(TEXT, stream, text)
        # Anything else is not a request of this protocol: ignored, it wants no answer.


def main() -> None:
    keep = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    become_engine_worker(int(sys.argv[2]) if len(sys.argv) > 2 else CAPTIONS)
    decoders = Decoders(keep, int(sys.argv[3]) if len(sys.argv) > 3 else None)
    stdout = sys.stdout.buffer
    stdout.write(HEADER.pack(READY, 0, 0))
    stdout.flush()
    serve(decoders, sys.stdin.buffer, stdout)


if __name__ == "__main__":
    main()
