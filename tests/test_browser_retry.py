"""Tier 4, issue 24: calling while the server is down is not a dead end.

The page is loaded, then the server stops; the person presses Call. The page says in words
that it cannot reach the server and when it tries again, can be cancelled (Hang up), and
connects by itself once a server is back on the same address.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness.server import Server, free_port, run_server
from tests.test_browser import browser, hang_up_and_check_freed, mic_file

pytestmark = pytest.mark.browser

STATUS_JS = "() => document.getElementById('status').textContent.trim()"


def test_calling_while_the_server_is_down_retries_and_connects_when_it_is_back(
    tmp_path: Path,
) -> None:
    port = free_port()
    wav = mic_file(tmp_path / "mic.wav", 1.0)  # silence: the talking is tested elsewhere
    servers: list[Server] = []

    def server_log() -> str:
        return "\n".join(s.log() for s in servers)

    with browser(tmp_path, wav, server_log) as b:
        with run_server(tmp_path, port=port) as first:
            servers.append(first)
            b.page.goto(first.url + "/?raw=1")
        # The server is gone (stopped by PID); the page stays loaded.

        # A call the person gives up on: Hang up stops the retries.
        b.page.click("#call")
        b.wait_for(
            "() => /Can't reach the server — trying again in \\d+ s/.test("
            "document.getElementById('status').textContent)",
            "the retry countdown",
            timeout_ms=10_000,
        )
        assert b.rb()["state"] == "connecting"
        assert b.page.is_visible("#hangup"), b.report("no way to cancel while retrying")
        b.page.click("#hangup")
        b.wait_state("ended", timeout_ms=5_000)
        time.sleep(3)
        assert b.rb()["state"] == "ended", b.report("a cancelled call went on retrying")

        # A call placed while the server is down, which then comes back.
        b.page.click("#call")
        seen: set[str] = set()
        deadline = time.monotonic() + 8  # several attempts fail first
        while time.monotonic() < deadline:
            seen.add(str(b.page.evaluate(STATUS_JS)))
            time.sleep(0.2)
        b.shot("retrying-server-down")
        countdowns = sorted(s for s in seen if s.startswith("Can't reach the server — trying"))
        assert len(countdowns) >= 2, b.report(f"no countdown in words: {seen}")
        assert b.rb()["state"] == "connecting" and not b.page.text_content("#error"), b.report(
            "the page gave up while the server was down"
        )
        with run_server(tmp_path, port=port) as second:
            servers.append(second)
            t_up = time.monotonic()
            b.wait_state("ready", "listening", timeout_ms=15_000)
            back_s = time.monotonic() - t_up
            print(f"connected {back_s:.2f} s after the server came back; saw {countdowns}")
            assert back_s <= 8.0, b.report(f"connected only {back_s:.2f} s after the server was up")
            assert b.rb()["connected"] and second.health()["sessions"] == 1
            # `ready` came from the agent over the call's data channel: a real call.
            assert any(e.get("type") == "ready" for e in b.rb()["events"]), b.report("no ready")
            hang_up_and_check_freed(b, second)
