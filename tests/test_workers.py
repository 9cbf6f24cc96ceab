"""`ringback serve --workers 2`: calls spread over workers, resources (hang-up, resume) reach
their owner, a worker that dies is replaced and only its calls end. Real processes and callers."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.peer import Caller
from harness.server import Server, run_server
from signaling.__main__ import add_serve_args, server_config
from signaling.agent_check import agent_reply
from signaling.workers import owner_of, prefix

# Light engines: this is about processes and routing, not about hearing.
LIGHT = ("--workers", "2", "--tts", "espeak", "--tts-workers", "1", "--whisper-workers", "1")


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(tmp_path_factory.mktemp("workers"), *LIGHT) as s:
        yield s


async def get(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json() if resp.content_type == "application/json" else await resp.text()


def calls_by_worker(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "ringback_calls_total":
                out[s.labels["worker"]] = s.value
    return out


async def wait_for(predicate: Any, timeout_s: float, what: str) -> Any:
    async with asyncio.timeout(timeout_s):
        while True:
            value = await predicate()
            if value:
                return value
            await asyncio.sleep(0.25)


@pytest.mark.e2e
async def test_calls_spread_hang_up_reaches_owner_and_a_dead_worker_is_replaced(
    front: Server, speech: dict[str, Any], tmp_path: Path
) -> None:
    question = "What time is it?"
    a, b, c = Caller(front.url), Caller(front.url), Caller(front.url)
    a2 = Caller(front.url)
    try:
        async with aiohttp.ClientSession() as http:
            await a.connect()
            await b.connect()
            assert a.session_id and b.session_id
            # Least-loaded: the second call goes to the other worker.
            assert {owner_of(a.session_id), owner_of(b.session_id)} == {0, 1}
            listing = await get(http, front.url + "/sessions")
            where = {s["session_id"]: s["worker"] for s in listing["sessions"]}
            assert where == {a.session_id: owner_of(a.session_id),
                             b.session_id: owner_of(b.session_id)}  # fmt: skip
            # A call through a worker is a real conversation.
            result = await b.say(question, speech[question])
            assert result.reply and result.reply.startswith("It's"), result

            # Hang-up through the front reaches the owner.
            b_id = b.session_id
            await b.close()
            health = await wait_for(
                lambda: _health_if(http, front.url, lambda h: h["sessions"] == 1), 15, "hang-up"
            )
            per_worker = {w["index"]: w["sessions"] for w in health["workers"]}
            assert per_worker[owner_of(b_id)] == 0 and per_worker[owner_of(a.session_id)] == 1

            # Resuming a's session goes to its owner, not to the emptier worker.
            await a2.connect(resume=(a.session_id, a.session_secret))
            assert a2.session_id == a.session_id
            a.session_id = None  # its connection was replaced: closing `a` must not hang up
            listing = await get(http, front.url + "/sessions")
            assert [s["session_id"] for s in listing["sessions"]] == [a2.session_id]

            # A third call takes the now idle worker; metrics of both workers add up.
            await c.connect()
            assert c.session_id and owner_of(c.session_id) == owner_of(b_id)
            calls = calls_by_worker(await get(http, front.url + "/metrics"))
            assert sum(calls.values()) == 4 and set(calls) == {"0", "1"}  # a, b, a resumed, c

            # Kill a's worker: only a's call ends, the worker comes back, c goes on talking.
            assert owner_of(c.session_id) != owner_of(a2.session_id)
            victim = owner_of(a2.session_id)
            workers = {w["index"]: w for w in (await get(http, front.url + "/healthz"))["workers"]}
            os.kill(workers[victim]["pid"], signal.SIGKILL)
            health = await wait_for(
                lambda: _health_if(
                    http, front.url,
                    lambda h: h["workers"][victim]["restarts"] == 1
                    and h["workers"][victim]["ready"],
                ),
                120,
                "the worker to come back",
            )  # fmt: skip
            assert health["workers"][victim]["pid"] != workers[victim]["pid"]
            listing = await get(http, front.url + "/sessions")
            assert [s["session_id"] for s in listing["sessions"]] == [c.session_id]
            async with http.delete(
                f"{front.url}/session/{a2.session_id}",
                headers={"X-Session-Secret": a2.session_secret},
            ) as resp:
                assert resp.status == 404  # its worker is new: the call is gone
            result = await c.say(question, speech[question])
            assert result.reply and result.reply.startswith("It's"), result
    finally:
        for caller in (a, a2, b, c):
            await caller.close()
    assert front.proc.poll() is None  # the front process itself never went down


async def _health_if(http: aiohttp.ClientSession, url: str, ok: Any) -> Any:
    async with http.get(url + "/healthz") as resp:
        health = await resp.json()
    return health if resp.status == 200 and ok(health) else None


def test_session_ids_name_their_worker_after_the_servers_own_prefix() -> None:
    assert prefix(3) == "w3." and owner_of("w3.AbC-d_9") == 3
    assert prefix(1, "s2.") == "s2.w1." and owner_of("s2.w1.xyz", "s2.") == 1
    assert owner_of("s1.w1.xyz", "s2.") is None  # another server's session
    assert owner_of("AbC-d_9") is None and owner_of("wx.abc") is None


def test_agent_check_lines_follow_the_load() -> None:
    assert agent_reply(0.0) == "ready up 100%\n"
    assert agent_reply(0.25) == "ready up 75%\n"
    assert agent_reply(0.999) == "ready up 1%\n"  # never weight 0 while it has room
    assert agent_reply(1.0) == "drain\n"


def test_one_worker_per_four_cores_by_default_and_the_asr_processes_shared_out() -> None:
    parser = argparse.ArgumentParser()
    add_serve_args(parser)
    cores = len(os.sched_getaffinity(0))
    config = server_config(parser.parse_args([]))
    assert config.workers == max(1, cores // 4)
    # One captions process per 4 cores, shared out among the server processes.
    assert config.agent.asr_pool.processes == max(1, cores // (4 * config.workers))
    config = server_config(parser.parse_args(["--workers", "2"]))
    assert config.agent.asr_pool.processes == max(1, cores // 8)
    config = server_config(parser.parse_args(["--workers", "1"]))
    assert config.agent.asr_pool.processes == max(1, cores // 4)
    config = server_config(parser.parse_args(["--workers", "1", "--asr-workers", "3"]))
    assert config.agent.asr_pool.processes == 3


def asr_processes_under(pid: int) -> int:
    """pocketsphinx worker processes anywhere below `pid`."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = 0, list(children.get(pid, []))
    while todo:
        child = todo.pop()
        todo += children.get(child, [])
        try:
            found += b"agent.engines.asr_worker" in Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
    return found


def test_each_worker_runs_its_share_of_the_asr_processes(front: Server) -> None:
    cores = len(os.sched_getaffinity(0))
    assert asr_processes_under(front.proc.pid) == 2 * max(1, cores // 8)
