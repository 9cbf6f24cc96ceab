"""Shared fixtures: a real `ringback serve` process on 127.0.0.1 and synthesized speech."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.server import ROOT, Server, free_port, run_server
from harness.speech import QUESTIONS, STORY_REQUEST

__all__ = ["ROOT", "Server", "free_port", "run_server"]


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(tmp_path_factory.mktemp("server")) as s:
        yield s


SENTENCES = [*QUESTIONS[:6], STORY_REQUEST]


@pytest.fixture(scope="session")
def speech() -> dict[str, object]:
    """Natural speech (piper) for each sentence, 48 kHz mono int16, synthesized once."""
    from harness.speech import synthesize, synthesizer

    async def make() -> dict[str, object]:
        async with synthesizer("piper") as pool:
            return {text: await synthesize(pool, text) for text in SENTENCES}

    return asyncio.run(make())


def run_quick_bench(module: str, tmp_path: Path, timeout_s: float = 120) -> tuple[Any, str]:
    """`python -m bench.<module> --quick` as a user runs it: (its JSON, its printed table)."""
    out = tmp_path / f"{module}.json"
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text()), proc.stdout
