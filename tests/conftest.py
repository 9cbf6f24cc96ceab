"""Shared fixtures: a real `ringback serve` process on 127.0.0.1 and synthesized speech."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

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
