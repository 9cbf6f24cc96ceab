"""Tier 4: a real headless Chromium places a real call, speaking from a fake microphone file."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.audio import OUT_RATE_HZ
from harness.speech import write_wav
from tests.conftest import Server

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
WAIT_MS = 30_000  # 2 slow cores, engines warming up, other tests possibly running alongside


def mic_file(path: Path, pcm: np.ndarray) -> Path:
    """Chromium loops the fake capture file: 1 s silence, the question, then ~20 s of silence."""
    silence = np.zeros(OUT_RATE_HZ, np.int16)
    write_wav(path, np.concatenate([silence, pcm.astype(np.int16), np.tile(silence, 20)]))
    return path


def chromium_args(wav: Path) -> list[str]:
    return [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
        # Without this Chromium gathers no loopback candidates and ICE never completes.
        "--allow-loopback-in-peer-connection",
        # No --disable-features=WebRtcHideLocalIpsWithMdns: Chromium keeps only the last
        # --disable-features, so it would silently drop Playwright's own list; and it is not
        # needed, since a page granted the microphone gets plain-IP host candidates, not mDNS.
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
    ]


# Everything the page knows, for assertion messages.
SNAPSHOT_JS = """() => ({
  connection: document.body.dataset.connection ?? null,
  agentState: document.body.dataset.agentState ?? null,
  status: document.getElementById('status').textContent,
  error: document.getElementById('error').textContent,
  button: document.getElementById('call').textContent,
  transcript: [...document.querySelectorAll('#transcript p')].map(p => `${p.className}: ${p.textContent}`),
  sessionId: window.ringback.sessionId,
  candidates: (window.ringback.pc?.localDescription?.sdp ?? '').split('\\r\\n')
    .filter(l => l.startsWith('a=candidate')),
  log: document.getElementById('log').textContent.split('\\n').slice(-80),
})"""

# The inbound audio RTP stream of the call (what the browser received from the agent).
INBOUND_AUDIO_JS = """async () => {
  const pc = window.ringback.pc;
  if (!pc) return null;
  const stats = await pc.getStats();
  for (const r of stats.values()) {
    if (r.type === 'inbound-rtp' && (r.kind === 'audio' || r.mediaType === 'audio')) {
      return {packetsReceived: r.packetsReceived, bytesReceived: r.bytesReceived,
              totalAudioEnergy: r.totalAudioEnergy, audioLevel: r.audioLevel,
              totalSamplesReceived: r.totalSamplesReceived, concealedSamples: r.concealedSamples};
    }
  }
  return null;
}"""


def test_browser_call(server: Server, speech: dict[str, Any], tmp_path: Path) -> None:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    wav = mic_file(tmp_path / "mic.wav", speech["What time is it?"])
    console: list[str] = []

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            user_data_dir=tmp_path / "profile",
            executable_path=CHROMIUM,
            headless=True,
            args=chromium_args(wav),
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.on("console", lambda m: console.append(f"[{m.type}] {m.text}"))
            page.on("pageerror", lambda e: console.append(f"[pageerror] {e}"))

            def report(what: str) -> str:
                try:
                    snap = json.dumps(page.evaluate(SNAPSHOT_JS), indent=1)
                except PlaywrightError as e:
                    snap = f"(page unavailable: {e})"
                log = "\n".join(server.log().splitlines()[-40:])
                return (
                    f"{what}\n--- page ---\n{snap}\n--- console ---\n"
                    + "\n".join(console)
                    + f"\n--- server log (tail) ---\n{log}"
                )

            def wait_for(js: str, what: str, timeout_ms: int = WAIT_MS) -> Any:
                try:
                    return page.wait_for_function(js, timeout=timeout_ms, polling=100).json_value()
                except PlaywrightError as e:
                    pytest.fail(report(f"timed out waiting for {what}: {e}"), pytrace=False)

            page.goto(server.url + "/?raw=1")
            page.click("#call")

            wait_for("() => document.body.dataset.connection === 'connected'", "connected")
            wait_for(
                "() => window.ringback.events.some(e => e.type === 'final'"
                " && String(e.text).toLowerCase().includes('time'))",
                "a final transcript containing 'time'",
            )
            turn = wait_for(
                "() => window.ringback.events.find(e => e.type === 'turn'"
                " && String(e.reply ?? '').startsWith(\"It's\"))",
                'a turn whose reply starts with "It\'s"',
            )
            assert not turn.get("interrupted"), report(f"the reply was interrupted: {turn}")
            wait_for(
                "() => [...document.querySelectorAll('#transcript .user')]"
                ".some(p => p.textContent.toLowerCase().includes('time'))",
                "a .user transcript line containing 'time'",
            )
            wait_for(
                "() => [...document.querySelectorAll('#transcript .agent')]"
                '.some(p => p.textContent.trim().startsWith("It\'s"))',
                'an .agent transcript line starting with "It\'s"',
            )
            events = page.evaluate("() => window.ringback.events")
            states = [e.get("state") for e in events if e.get("type") == "state"]
            assert "speaking" in states, report(f"the agent never went 'speaking': {states}")
            assert any(e.get("type") == "hello" for e in events), report("no hello event")

            # The browser really received (and decoded) the agent's voice.
            inbound = wait_for(
                f"async () => {{ const s = await ({INBOUND_AUDIO_JS})();"
                " return s && s.totalAudioEnergy > 0 ? s : null; }",
                "inbound audio with totalAudioEnergy > 0",
                timeout_ms=10_000,
            )
            assert inbound["packetsReceived"] > 50, report(f"too few audio packets: {inbound}")

            # The agent reports how it receives the browser (its own jitter buffer + Opus).
            link = wait_for(
                "() => { const t = document.getElementById('link').textContent;"
                " return t.startsWith('agent receives:') ? t : null; }",
                "a link readout from the agent's `link` events",
                timeout_ms=10_000,
            )
            assert "lost" in link and "buffer" in link, report(f"link readout: {link}")

            session_id = page.evaluate("() => window.ringback.sessionId")
            assert session_id, report("no session id")
            assert page.text_content("#call") == "Hang up"
            page.click("#call")
            wait_for("() => document.body.dataset.connection === 'closed'", "connection closed")
            assert page.text_content("#call") == "Call"

            health: dict[str, object] = {}
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                health = server.health()
                if health["sessions"] == 0:
                    break
                time.sleep(0.2)
            assert health.get("sessions") == 0, report(
                f"the session outlived the hang-up: {health}"
            )
        finally:
            context.close()
