"""Tier 4: a real headless Chromium places real calls, speaking from a fake microphone file.

Each test drives the page as a user would (#call, #hangup, #mute, #mic) and reads the page's
automation contract, `window.ringback`. Screenshots of every state the page shows are saved
under out/browser/ (look at them: they are the page's visual review).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.audio import OUT_RATE_HZ
from harness.server import ROOT, Server, free_port, run_server
from harness.speech import write_wav
from harness.wer import wer

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "out" / "browser"
WAIT_MS = 30_000  # 2 slow cores, engines warming up, other tests possibly running alongside
LEAD_S = 4.0  # silence before the first words: connect, chime and `ready` come first
QUESTION = "What time is it?"


def mic_file(path: Path, *parts: np.ndarray | float) -> Path:
    """A fake microphone: floats are seconds of silence, arrays 48 kHz speech. Chromium loops
    the file, so it ends with 40 s of silence (longer than any test)."""
    pieces = [
        np.zeros(int(p * OUT_RATE_HZ), np.int16) if isinstance(p, float) else p.astype(np.int16)
        for p in parts
    ]
    write_wav(path, np.concatenate([*pieces, np.zeros(40 * OUT_RATE_HZ, np.int16)]))
    return path


def chromium_args(wav: Path | None, fake_ui: bool = True) -> list[str]:
    """Flags that make a loopback call work headless (PLATFORM.md). `wav` None: no fake
    microphone at all; `fake_ui` False: permission prompts are not auto-accepted."""
    args = [
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
        "--autoplay-policy=no-user-gesture-required",
    ]
    if fake_ui:
        args.append("--use-fake-ui-for-media-stream")
    if wav is not None:
        args += ["--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}"]
    return args


# Everything the page knows, for assertion messages.
SNAPSHOT_JS = """() => ({
  state: window.ringback.state, connected: window.ringback.connected,
  status: document.getElementById('status').textContent.trim(),
  error: document.getElementById('error').textContent,
  captions: window.ringback.captions, turns: window.ringback.turns, stats: window.ringback.stats,
  history: window.ringback.history.map(h => h.state),
  log: document.getElementById('log').textContent.split('\\n').slice(-60),
})"""

# The agent's voice as the browser received and decoded it.
INBOUND_AUDIO_JS = """async () => {
  const pc = window.ringback.pc;
  if (!pc) return null;
  for (const r of (await pc.getStats()).values()) {
    if (r.type === 'inbound-rtp' && (r.kind === 'audio' || r.mediaType === 'audio')) {
      return {packetsReceived: r.packetsReceived, totalAudioEnergy: r.totalAudioEnergy};
    }
  }
  return null;
}"""


class Browser:
    """One Chromium profile with one page, and the helpers every test uses."""

    def __init__(self, page: Any, server_log: Callable[[], str]) -> None:
        self.page = page
        self.server_log = server_log
        self.console: list[str] = []
        page.on("console", lambda m: self.console.append(f"[{m.type}] {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"[pageerror] {e}"))

    def report(self, what: str) -> str:
        from playwright.sync_api import Error as PlaywrightError

        try:
            snap = json.dumps(self.page.evaluate(SNAPSHOT_JS), indent=1)
        except PlaywrightError as e:
            snap = f"(page unavailable: {e})"
        log = "\n".join(self.server_log().splitlines()[-40:])
        console = "\n".join(self.console)
        return f"{what}\n--- page ---\n{snap}\n--- console ---\n{console}\n--- server ---\n{log}"

    def wait_for(self, js: str, what: str, timeout_ms: int = WAIT_MS, polling: int = 50) -> Any:
        from playwright.sync_api import Error as PlaywrightError

        try:
            handle = self.page.wait_for_function(js, timeout=timeout_ms, polling=polling)
            return handle.json_value()
        except PlaywrightError as e:
            pytest.fail(self.report(f"timed out waiting for {what}: {e}"), pytrace=False)

    def wait_state(self, *states: str, timeout_ms: int = WAIT_MS) -> str:
        wanted = json.dumps(list(states))
        return str(
            self.wait_for(
                f"() => {wanted}.includes(window.ringback.state) && window.ringback.state",
                f"state {' or '.join(states)}",
                timeout_ms,
            )
        )

    def rb(self) -> dict[str, Any]:
        return dict(
            self.page.evaluate(
                "() => window.ringback && JSON.parse(JSON.stringify({"
                "state: ringback.state, connected: ringback.connected,"
                "captions: ringback.captions, turns: ringback.turns,"
                "stats: ringback.stats, events: ringback.events,"
                "history: ringback.history}))"
            )
        )

    def segments(self, side: str) -> list[list[float]]:
        return list(self.page.evaluate(f"() => window.ringback.audio.{side}.segments"))

    def shot(self, name: str, **emulate: Any) -> None:
        """Saves out/browser/<name>.png (with emulate: media/viewport changed for the shot)."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        if "color_scheme" in emulate:
            self.page.emulate_media(color_scheme=emulate["color_scheme"])
        if "viewport" in emulate:
            self.page.set_viewport_size(emulate["viewport"])
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        if emulate:
            self.page.emulate_media(color_scheme="light")
            self.page.set_viewport_size({"width": 1024, "height": 900})


@contextmanager
def browser(
    tmp_path: Path,
    wav: Path | None,
    server_log: Callable[[], str],
    fake_ui: bool = True,
    grant_mic: bool = False,
) -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            user_data_dir=tmp_path / f"profile-{time.monotonic_ns()}",
            executable_path=CHROMIUM,
            headless=True,
            args=chromium_args(wav, fake_ui),
            viewport={"width": 1024, "height": 900},
            color_scheme="light",
        )
        try:
            if grant_mic:
                context.grant_permissions(["microphone"])
            page = context.pages[0] if context.pages else context.new_page()
            yield Browser(page, server_log)
        finally:
            context.close()


def hang_up_and_check_freed(b: Browser, server: Server) -> None:
    b.page.click("#hangup")
    b.wait_state("ended")
    assert b.page.is_visible("#call") and not b.page.is_visible("#hangup")
    rb = b.rb()
    assert rb["stats"] == {} and not rb["connected"], b.report("numbers kept after hang-up")
    assert b.page.text_content("#quality") == "", b.report("connection numbers kept after hang-up")
    health: dict[str, object] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        health = server.health()
        if health["sessions"] == 0:
            break
        time.sleep(0.2)
    assert health.get("sessions") == 0, b.report(f"the session outlived the hang-up: {health}")


def test_call_question_answered_and_timed(
    server: Server, speech: dict[str, Any], tmp_path: Path
) -> None:
    """A full call: ready moment, live captions, the reply heard, mouth-to-ear measured."""
    wav = mic_file(tmp_path / "mic.wav", LEAD_S, speech[QUESTION])
    with browser(tmp_path, wav, server.log) as b:
        b.page.goto(server.url + "/?raw=1")
        b.shot("idle")
        b.page.click("#call")
        b.wait_state("ready")
        b.shot("ready")
        options = b.page.eval_on_selector_all("#mic option", "os => os.map(o => o.textContent)")
        assert any("fake" in o.lower() for o in options), b.report(f"mic picker: {options}")
        b.wait_state("hearing")
        b.shot("hearing")
        b.wait_state("speaking")
        b.shot("speaking")
        turn = b.wait_for(
            "() => { const t = window.ringback.turns[0];"
            " return t && t.mouth_to_ear_ms != null ? t : null; }",
            "a turn with mouth_to_ear_ms",
        )
        b.wait_state("listening")
        rb = b.rb()
        users = [c for c in rb["captions"] if c["who"] == "user"]
        agents = [c for c in rb["captions"] if c["who"] == "agent"]
        assert users and users[-1]["final"], b.report("no final user caption")
        assert wer(QUESTION, users[-1]["text"]) <= 0.25, b.report(f"heard {users[-1]['text']!r}")
        assert agents and agents[-1]["final"] and agents[-1]["text"].startswith("It's"), b.report(
            "no final agent caption"
        )
        assert not turn["interrupted"] and turn["reply"].startswith("It's")
        partials = [e for e in rb["events"] if e.get("type") == "partial"]
        assert partials, b.report("no live caption while speaking")
        history = rb["history"]
        assert [h["state"] for h in history][:3] == ["connecting", "ready", "hearing"], history

        # Audible: the browser decoded the agent's voice and its analyser heard it.
        inbound = b.wait_for(
            f"async () => {{ const s = await ({INBOUND_AUDIO_JS})();"
            " return s && s.totalAudioEnergy > 0 ? s : null; }",
            "inbound audio with energy",
        )
        assert inbound["packetsReceived"] > 50
        assert b.segments("remote"), b.report("the agent's voice never rose above -40 dBFS")

        # Mouth-to-ear: the server's own time plus the trip both ways (and its VAD's view of
        # the end of speech); loopback, so the trip is tens of ms, but the CPU is shared.
        m2e = turn["mouth_to_ear_ms"]
        server_ms = turn["server"]["time_to_first_audio_ms"]
        print(f"mouth-to-ear {m2e:.0f} ms, server first audio {server_ms:.0f} ms")
        assert 100 < m2e < 5000, b.report(f"implausible mouth-to-ear {m2e}")
        assert server_ms - 100 <= m2e <= server_ms + 1000, b.report(
            f"mouth-to-ear {m2e:.0f} ms vs server {server_ms:.0f} ms"
        )
        assert "ms from the end of your words" in (b.page.text_content("#latency") or "")
        assert "first sound sent" in (b.page.text_content("#server-breakdown") or "")

        # Connection quality both ways, and the agent's report in words.
        b.wait_for(
            "() => window.ringback.stats.send && window.ringback.stats.receive"
            " && window.ringback.stats.agent",
            "connection stats",
        )
        stats = b.rb()["stats"]
        for direction in ("send", "receive"):
            for key, value in stats[direction].items():
                assert value is None or value >= 0, b.report(f"{direction}.{key} = {value}")
            loss = stats[direction]["loss_pct"]
            assert loss is None or loss <= 100
        assert stats["agent"]["words"].startswith("the agent hears you"), stats
        assert (stats["agent"].get("buffer_ms") or 0) >= 0
        b.page.click(".devices summary")
        b.shot("answered")
        b.shot("answered-phone-dark", color_scheme="dark", viewport={"width": 390, "height": 844})
        hang_up_and_check_freed(b, server)
        # The transcript stays after the call.
        assert "It's" in (b.page.text_content("#transcript") or "")
        b.shot("ended")
    assert not [c for c in b.console if c.startswith(("[error]", "[pageerror]"))], b.console


def test_barge_in_shows_interrupted_and_cuts_the_reply(
    server: Server, speech: dict[str, Any], tmp_path: Path
) -> None:
    story = speech["Tell me a story."]
    # The story starts ~0.5 s after the request; the user cuts in 3 s into it.
    wav = mic_file(tmp_path / "mic.wav", LEAD_S, story, 3.5, speech[QUESTION])
    with browser(tmp_path, wav, server.log) as b:
        b.page.goto(server.url + "/?raw=1")
        b.page.click("#call")
        b.wait_state("speaking")
        b.wait_state("interrupted")
        b.shot("interrupted")
        turn = b.wait_for(
            "() => window.ringback.turns.find(t => t.interrupted) ?? null", "an interrupted turn"
        )
        b.wait_for(
            '() => window.ringback.turns.some(t => !t.interrupted && t.reply.startsWith("It\'s"))',
            "the answer to the interruption",
        )
        rb = b.rb()
        # The label stayed up long enough to read.
        history = rb["history"]
        i = next(i for i, h in enumerate(history) if h["state"] == "interrupted")
        shown_ms = history[i + 1]["t"] - history[i]["t"]
        assert shown_ms >= 1000, b.report(f"'Interrupted' shown for {shown_ms:.0f} ms")
        # Cut back to what was heard, and marked on the reply itself.
        said = " ".join(
            e["text"]
            for e in rb["events"]
            if e.get("type") == "reply" and e["turn"] == turn["turn"]
        )
        assert turn["reply"] and len(turn["reply"]) <= len(said), (turn, said)
        marked = b.page.eval_on_selector_all(
            "#transcript .agent.interrupted", "ns => ns.map(n => n.textContent)"
        )
        assert marked and "interrupted" in marked[0], b.report(
            f"no mark on the cut reply: {marked}"
        )
        assert marked[0].startswith(turn["reply"][:20])
        # The agent's voice stopped soon after the user started talking over it.
        local = b.segments("local")
        remote = b.segments("remote")
        barge_onset = local[1][0]
        # Agent audio that started before the user's second utterance (and a little after,
        # for the 20 ms windows) is the story; the answer starts a second or more later.
        story = [seg for seg in remote if seg[0] < barge_onset + 0.5]
        assert story and story[-1][1] > barge_onset - 2.0, b.report(
            f"the story was not playing when the user cut in: {local} {remote}"
        )
        stop_s = max(0.0, story[-1][1] - barge_onset)
        print(f"barge-in: agent inaudible in the page {stop_s * 1000:.0f} ms after speech onset")
        assert stop_s < 1.0, b.report(f"agent audio went on {stop_s:.2f} s into the barge-in")


def test_mute_the_agent_hears_nothing(
    server: Server, speech: dict[str, Any], tmp_path: Path
) -> None:
    wav = mic_file(tmp_path / "mic.wav", 5.0, speech[QUESTION])
    with browser(tmp_path, wav, server.log) as b:
        b.page.goto(server.url + "/?raw=1")
        b.page.click("#call")
        b.wait_for("() => window.ringback.connected", "connected")
        b.page.click("#mute")
        assert b.page.get_attribute("#mute", "aria-pressed") == "true"
        assert b.page.is_visible("#muted-badge")
        b.shot("muted")
        # The question plays at ~5 s; give it time to reach the agent and be (not) heard.
        b.page.wait_for_timeout(9_000)
        rb = b.rb()
        heard = [e for e in rb["events"] if e.get("type") in ("partial", "final", "turn")]
        states = {e.get("state") for e in rb["events"] if e.get("type") == "state"}
        assert not heard and "processing_speech" not in states, b.report(f"muted, yet: {heard}")
        assert "caller muted" in server.log()
        b.page.click("#mute")
        assert b.page.get_attribute("#mute", "aria-pressed") == "false"
        deadline = time.monotonic() + 5
        while "caller unmuted" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "caller unmuted" in server.log(), b.report("the agent was not told of the unmute")
        # The microphone picker lists Chromium's fake devices; a choice is used and remembered.
        options = b.page.eval_on_selector_all(
            "#mic option", "os => os.map(o => ({value: o.value, label: o.textContent}))"
        )
        fakes = [o for o in options if o["value"] and "fake" in o["label"].lower()]
        assert fakes, b.report(f"mic picker: {options}")
        b.page.click(".devices summary")
        b.page.select_option("#mic", fakes[-1]["value"])
        b.wait_for(
            "() => document.getElementById('log').textContent.includes('microphone switched')",
            "the switched microphone",
        )
        assert b.page.evaluate("() => localStorage.getItem('ringback.mic')") == fakes[-1]["value"]
        assert b.page.evaluate("() => window.ringback.connected")
        hang_up_and_check_freed(b, server)


def test_server_killed_page_reconnects_and_keeps_transcript(
    speech: dict[str, Any], tmp_path: Path
) -> None:
    port = free_port()
    wav = mic_file(tmp_path / "mic.wav", LEAD_S, speech[QUESTION])
    logs: list[Server] = []

    def server_log() -> str:
        return "\n".join(s.log() for s in logs)

    with browser(tmp_path, wav, server_log) as b:
        with run_server(tmp_path, port=port) as first:
            logs.append(first)
            b.page.goto(first.url + "/?raw=1")
            b.page.click("#call")
            b.wait_for("() => window.ringback.turns.length > 0", "the first turn")
            b.wait_state("listening")
            first_session = b.rb()["turns"][0]["session_id"]
            first.proc.kill()
            t_kill = time.monotonic()
            b.wait_state("reconnecting", timeout_ms=5_000)
            noticed_s = time.monotonic() - t_kill
            b.shot("reconnecting")
            print(f"dead agent noticed after {noticed_s:.2f} s")
            assert noticed_s <= 2.0, b.report(f"'reconnecting' only after {noticed_s:.2f} s")
        with run_server(tmp_path, port=port) as second:
            logs.append(second)
            t_up = time.monotonic()
            b.wait_state("ready", "listening", timeout_ms=15_000)
            back_s = time.monotonic() - t_up
            print(f"in a call again {back_s:.2f} s after the restart")
            assert back_s <= 10.0, b.report(f"back in a call {back_s:.2f} s after the restart")
            rb = b.rb()
            assert rb["connected"]
            assert any(c["who"] == "user" and "time" in c["text"].lower() for c in rb["captions"])
            assert len(rb["turns"]) == 1, b.report("the transcript was not kept")
            session = b.page.evaluate("() => window.ringback.sessionId")
            assert session and session != first_session
            b.shot("reconnected")
            b.page.click("#hangup")
            b.wait_state("ended")


# The agent's UDP port of the call's selected ICE candidate pair.
AGENT_PORT_JS = """async () => {
  const stats = await window.ringback.pc.getStats();
  for (const r of stats.values()) {
    if (r.type === 'candidate-pair' && r.nominated && r.state === 'succeeded') {
      return stats.get(r.remoteCandidateId).port;
    }
  }
  return null;
}"""


@contextmanager
def udp_blackhole(port: int) -> Iterator[None]:
    """Drops loopback UDP to and from one port (the call's media path), nothing else."""
    rules = [
        ["INPUT", "-i", "lo", "-p", "udp", "--dport", str(port), "-j", "DROP"],
        ["INPUT", "-i", "lo", "-p", "udp", "--sport", str(port), "-j", "DROP"],
    ]
    for rule in rules:
        subprocess.run(["iptables", "-I", *rule], check=True)
    try:
        yield
    finally:
        for rule in rules:
            subprocess.run(["iptables", "-D", *rule], check=False)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("iptables") is None, reason="needs root and iptables"
)
def test_network_drop_resumes_the_same_session(
    server: Server, speech: dict[str, Any], tmp_path: Path
) -> None:
    """The media path dies while the server lives: the page resumes the same session (its
    conversation goes on) instead of starting over."""
    wav = mic_file(
        tmp_path / "mic.wav", LEAD_S, speech[QUESTION], 11.0, speech["What is your name?"]
    )
    with browser(tmp_path, wav, server.log) as b:
        b.page.goto(server.url + "/?raw=1")
        b.page.click("#call")
        b.wait_for("() => window.ringback.turns.length > 0", "the first turn")
        b.wait_state("listening")
        session = b.page.evaluate("() => window.ringback.sessionId")
        port = b.page.evaluate(AGENT_PORT_JS)
        assert port, b.report("no selected candidate pair")
        with udp_blackhole(int(port)):
            t_drop = time.monotonic()
            b.wait_state("reconnecting", timeout_ms=5_000)
            noticed_s = time.monotonic() - t_drop
            b.wait_state("ready", "listening", timeout_ms=10_000)
            back_s = time.monotonic() - t_drop
        print(f"network drop: noticed after {noticed_s:.2f} s, resumed after {back_s:.2f} s")
        assert noticed_s <= 2.0, b.report(f"'reconnecting' only after {noticed_s:.2f} s")
        assert b.page.evaluate("() => window.ringback.sessionId") == session
        assert "(resumed)" in (b.page.text_content("#log") or "")
        # The resumed call works: the next question is heard and answered in the same session.
        turn = b.wait_for(
            "() => window.ringback.turns.find(t => t.heard.toLowerCase().includes('name')) ?? null",
            "a turn after the resume",
        )
        assert turn["session_id"] == session and turn["reply"], turn
        assert len(b.rb()["turns"]) == 2
        hang_up_and_check_freed(b, server)


@pytest.mark.parametrize(
    ("case", "fake_ui", "has_mic", "message"),
    [
        ("denied", False, True, "denied"),
        ("no-mic", True, False, "No microphone was found"),
    ],
)
def test_microphone_problems_are_explained(
    server: Server, tmp_path: Path, case: str, fake_ui: bool, has_mic: bool, message: str
) -> None:
    wav = mic_file(tmp_path / "mic.wav", 1.0) if has_mic else None
    with browser(tmp_path, wav, server.log, fake_ui=fake_ui, grant_mic=not has_mic) as b:
        b.page.goto(server.url + "/")
        b.page.click("#call")
        b.wait_state("failed", timeout_ms=10_000)
        error = b.page.text_content("#error") or ""
        assert message in error, b.report(f"unclear message: {error!r}")
        assert b.page.is_visible("#call") and not b.page.is_visible("#hangup")
        b.shot(f"mic-{case}")
        errors = [c for c in b.console if c.startswith(("[error]", "[pageerror]"))]
        assert not errors, errors
    assert server.health()["sessions"] == 0
