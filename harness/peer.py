"""Caller: a real aiortc peer that speaks utterances to the agent and measures what it hears.

Voice-to-voice latency (docs/measurements.md, "Voice to voice, and the harness"): from the instant the last speech
sample of an utterance is handed to the sender, to the arrival of the first reply sample
louder than -40 dBFS. Both instants are read on this process's monotonic clock. A recording
with noise around the speech says where its speech ends (`say(..., speech_end_s=)`): its last
loud sample is the end of the noise, not of the words.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from agent.audio import OUT_FRAME_SAMPLES, OUT_RATE_HZ, Pcm16
from agent.clock import MonotonicClock
from agent.media import patches
from agent.media.inbound import LinkStats, playout_frames
from agent.media.opus import OpusSendConfig
from agent.media.outbound import OutboundAudioTrack
from harness.echo import EchoBuffer, EchoConfig, EchoPath
from harness.impair import ImpairedLink, Impairment, impair_sender

log = logging.getLogger(__name__)

LOUD = int(32768 * 10 ** (-40 / 20))  # -40 dBFS sample threshold
READY_TIMEOUT_S = 10.0  # the agent's greeting has a 10 s cap of its own


def first_speech_offset(pcm: Pcm16) -> int:
    """Sample index of the first sample louder than -40 dBFS (0 if none)."""
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > LOUD)
    return int(loud[0]) if loud.size else 0


def last_speech_offset(pcm: Pcm16) -> int:
    """Sample index just after the last 20 ms window that is louder than -40 dBFS."""
    n = pcm.size // OUT_FRAME_SAMPLES
    for i in range(n - 1, -1, -1):
        w = pcm[i * OUT_FRAME_SAMPLES : (i + 1) * OUT_FRAME_SAMPLES].astype(np.int32)
        if np.max(np.abs(w)) > LOUD:
            return (i + 1) * OUT_FRAME_SAMPLES
    return pcm.size


def caller_patches(
    receive_path: str = "ringback", host_addresses: Sequence[str] = ("127.0.0.1",)
) -> patches.Patches:
    """The aiortc patches a Caller runs with, shared by every Caller (and test peer) of the
    process that asks for the same: they are undone when the last handle is uninstalled."""
    return patches.install(receive_path, OpusSendConfig(), host_addresses, shared=True)


@dataclass
class Event:
    t: float
    data: dict[str, Any]


@dataclass
class TurnResult:
    label: str
    heard: str | None
    reply: str | None
    v2v_ms: float | None
    interrupted: bool = False
    server: dict[str, Any] = field(default_factory=dict)
    link: dict[str, Any] = field(default_factory=dict)  # the server's last `link` event
    t_speech_end: float = 0.0
    finals: list[str] = field(default_factory=list)  # non-empty finals heard (2+: a cut turn)
    talked_over: bool = False  # reply audio arrived before the end of the speech
    reply_pcm: Pcm16 = field(default_factory=lambda: np.zeros(0, np.int16))


class OfferRejected(RuntimeError):
    """The server answered the offer with an error (503 when it sheds load)."""

    def __init__(self, status: int, error: str, retry_after: str | None, took_ms: float) -> None:
        super().__init__(f"offer rejected: {status} {error}")
        self.status = status
        self.retry_after = retry_after
        self.took_ms = took_ms  # from sending the offer to the answer


class Caller:
    """A headless caller. `receive_path` is how it hears the agent: "ringback" (an adaptive
    jitter buffer with Opus PLC/FEC, like a browser's) or "aiortc" (aiortc's fixed buffer)."""

    def __init__(
        self,
        url: str,
        receive_path: str = "ringback",
        impairment: Impairment | None = None,
        echo: EchoConfig | None = None,
    ) -> None:
        """`echo`: a speakerphone without echo cancellation — what the caller hears leaks
        into what it sends, that much quieter and later (harness/echo.py)."""
        self.url = url.rstrip("/")
        self.impairment = impairment
        self.impaired: ImpairedLink | None = None
        self.clock = MonotonicClock()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.echo = EchoPath(echo) if echo is not None else None
        playout = EchoBuffer(self.echo, self.clock) if self.echo is not None else None
        self.mic = OutboundAudioTrack(
            self.clock, max_ahead_ms=200, on_mark_started=self._started, playout=playout
        )
        self.events: list[Event] = []
        self.session_id: str | None = None
        self.session_secret = ""  # acting on the call (hang-up, resume) needs it
        self._frames: list[tuple[float, Pcm16]] = []  # (arrival, 48 kHz mono)
        self._mark_start: dict[object, float] = {}
        self._event_signal = asyncio.Event()
        self._mark_signal = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._connected = asyncio.Event()
        host = urlsplit(self.url).hostname or ""
        loopback = ["127.0.0.1"] if host in ("127.0.0.1", "localhost") else []
        self.patches = caller_patches(receive_path, loopback)  # released by close()
        self.link: LinkStats | None = None

    def _started(self, mark: object, t: float) -> None:
        self._mark_start[mark] = t
        self._mark_signal.set()
        self._mark_signal = asyncio.Event()

    async def connect(
        self,
        timeout_s: float = 20.0,
        resume: tuple[str, str] | None = None,
        context: dict[str, Any] | None = None,
    ) -> None:
        """Place the call. `resume`: (session id, secret) of a dropped call to continue;
        `context`: the offer's JSON object for the agent (docs/agents.md)."""
        t_start = self.clock.now()
        self.pc.addTransceiver(self.mic, direction="sendrecv")
        channel = self.pc.createDataChannel("events")

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            try:
                data = json.loads(message)
            except ValueError:
                log.warning("bad event message %r", message)
                return
            self.events.append(Event(self.clock.now(), data))
            self._event_signal.set()
            self._event_signal = asyncio.Event()

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            task = asyncio.get_running_loop().create_task(self._record(track))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        @channel.on("open")
        def on_open() -> None:
            self._connected.set()

        await self.pc.setLocalDescription(await self.pc.createOffer())
        if self.impairment is not None and self.impairment.active:
            self.impaired = impair_sender(self.pc, self.impairment)
        offer: dict[str, object] = {
            "sdp": self.pc.localDescription.sdp,
            "type": self.pc.localDescription.type,
        }
        if resume is not None:
            offer["resume"] = {"session_id": resume[0], "session_secret": resume[1]}
        if context is not None:
            offer["context"] = context
        t_post = self.clock.now()
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                self.url + "/offer", json=offer, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as resp,
        ):
            body = await resp.json()
            if resp.status != 200:
                raise OfferRejected(
                    resp.status,
                    str(body.get("error")),
                    resp.headers.get("Retry-After"),
                    round((self.clock.now() - t_post) * 1000, 1),
                )
        self.session_id = body["session_id"]
        self.session_secret = body.get("session_secret", "")
        await self.pc.setRemoteDescription(RTCSessionDescription(body["sdp"], body["type"]))
        async with asyncio.timeout(timeout_s):
            await self._connected.wait()
        # The agent greets (a chime) and then says `ready`: speaking before that would talk
        # over the greeting and count it in the voice-to-voice time.
        ready = await self.wait_event(lambda d: d.get("type") == "ready", t_start, READY_TIMEOUT_S)
        if ready is None:
            log.warning("no `ready` event from the agent within %.0f s", READY_TIMEOUT_S)

    async def _record(self, track: MediaStreamTrack) -> None:
        def on_stats(stats: LinkStats) -> None:
            self.link = stats

        frames = playout_frames(track, self.clock, on_stats=on_stats)
        async with contextlib.aclosing(frames) as playout:
            async for frame in playout:
                if frame.rate_hz != OUT_RATE_HZ:
                    raise ValueError(f"caller expects 48 kHz audio, got {frame.rate_hz} Hz")
                self._frames.append((frame.t, frame.pcm))
                if self.echo is not None:
                    self.echo.heard(frame.t, frame.pcm)

    # --- speaking --------------------------------------------------------------------------

    async def play(self, pcm: Pcm16, mark: object, end_offset: int | None = None) -> float:
        """Send an utterance in real time; returns when its last speech sample (or the sample
        at `end_offset`, if given) was sent. The rest of `pcm` goes on playing."""
        await self.mic.enqueue(pcm, mark)
        self.mic.end_stream()  # the whole utterance is queued: silence after it is not a gap
        while mark not in self._mark_start:
            await self._mark_signal.wait()
        offset = last_speech_offset(pcm) if end_offset is None else end_offset
        t_end = self._mark_start[mark] + offset / OUT_RATE_HZ
        await self.clock.sleep(max(0.0, t_end - self.clock.now()))
        return t_end

    async def started(self, mark: object) -> float:
        """When the first sample queued with `mark` was sent (waits for it)."""
        while mark not in self._mark_start:
            await self._mark_signal.wait()
        return self._mark_start[mark]

    @property
    def received(self) -> list[tuple[float, Pcm16]]:
        """What the caller heard: (arrival, 20 ms of 48 kHz mono) in order."""
        return self._frames

    def speech_onset(self, mark: object, pcm: Pcm16) -> float:
        """When the first loud sample of an utterance played with `mark` was sent."""
        return self._mark_start[mark] + first_speech_offset(pcm) / OUT_RATE_HZ

    def first_loud_after(self, t: float) -> float | None:
        """Arrival time of the first reply sample louder than -40 dBFS after `t`."""
        for arrival, pcm in self._frames:
            if arrival < t:
                continue
            loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > LOUD)
            if loud.size:
                # The frame is heard from its arrival; its loud sample idx ms later.
                return arrival + float(loud[0]) / OUT_RATE_HZ
        return None

    def last_loud_before(self, t: float) -> float | None:
        last = None
        for arrival, pcm in self._frames:
            if arrival > t:
                break
            if np.max(np.abs(pcm.astype(np.int32))) > LOUD:
                last = arrival + pcm.size / OUT_RATE_HZ
        return last

    def audio_between(self, t0: float, t1: float) -> Pcm16:
        parts = [pcm for t, pcm in self._frames if t0 <= t <= t1]
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)

    async def wait_event(
        self, predicate: Callable[[dict[str, Any]], bool], after: float, timeout_s: float
    ) -> Event | None:
        deadline = self.clock.now() + timeout_s
        while True:
            for ev in self.events:
                if ev.t >= after and predicate(ev.data):
                    return ev
            remaining = deadline - self.clock.now()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._event_signal.wait()

    async def say(
        self,
        label: str,
        pcm: Pcm16,
        timeout_s: float = 30.0,
        speech_end_s: float | None = None,
    ) -> TurnResult:
        """Speak one utterance and wait until the agent's reply has finished playing.

        With `speech_end_s` (where the speech ends in `pcm`, for recordings with noise after
        the words), latency is measured from the instant that sample was sent, and the call
        waits until the agent has settled (see `_say_recording`)."""
        if speech_end_s is not None:
            return await self._say_recording(label, pcm, timeout_s, speech_end_s)
        t_start = self.clock.now()
        t_end = await self.play(pcm, ("utt", label, t_start))
        # Not a turn the caller cut off while still speaking (the agent answered "what is two
        # plus" and was interrupted by "three"): the answer is the turn after it.
        turn = await self.wait_event(
            lambda d: (
                (d.get("type") == "turn" and not d.get("interrupted"))
                or (d.get("type") == "final" and not d.get("text"))
            ),
            t_start,
            timeout_s,
        )
        if turn is not None and turn.data["type"] != "turn":
            turn = None  # nothing understood, so no reply is coming
        # The last reply frames are still in flight when the server reports the turn done.
        await asyncio.sleep(0.3)
        final = next(
            (
                e.data["text"]
                for e in reversed(self.events)
                if e.t >= t_start and e.data.get("type") == "final"
            ),
            None,
        )
        return self._result(label, turn, final, t_end, t_end, self._finals(t_start))

    async def _say_recording(
        self, label: str, pcm: Pcm16, timeout_s: float, speech_end_s: float
    ) -> TurnResult:
        """`say()` for a recording whose speech ends at `speech_end_s` and may be cut in two.

        Everything the agent does from the start of the utterance until it has settled counts:
        the whole recording has been sent, every non-empty final has its `turn` event, and the
        agent went back to `listening` after the speech ended. The turn reported is the one
        whose final came after the speech ended (the answer to the whole utterance); if the
        utterance was cut (2+ finals), its latency runs from the end of the speech to the first
        reply sound after that final, not to the end of a reply to the first half.
        """
        t_start = self.clock.now()
        mark = ("utt", label, t_start)
        t_end = await self.play(pcm, mark, round(speech_end_s * OUT_RATE_HZ))
        t_sent = self._mark_start[mark] + pcm.size / OUT_RATE_HZ
        deadline = t_sent + timeout_s
        while not (settled := self._settled(t_start, t_end)) or self.clock.now() < t_sent:
            remaining = deadline - self.clock.now()
            if remaining <= 0:
                break
            wait_s = min(remaining, t_sent - self.clock.now()) if settled else remaining
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait_s, 0.0)):
                    await self._event_signal.wait()
        # The last reply frames are still in flight when the server reports the turn done.
        await asyncio.sleep(0.3)
        window = [e for e in self.events if e.t >= t_start]
        finals = [e for e in window if e.data.get("type") == "final" and e.data.get("text")]
        turns = [e for e in window if e.data.get("type") == "turn"]
        late = [e for e in finals if e.t >= t_end]
        turn, heard_from = None, t_end
        if late:
            text = late[0].data["text"]
            turn = next(
                (e for e in turns if e.t >= late[0].t and e.data.get("heard") == text), None
            )
            if len(finals) > 1:
                heard_from = late[0].t
        if turn is None and turns:
            turn = turns[-1]
        final = finals[-1].data["text"] if finals else None
        # The agent answered part of the utterance out loud while the user was still on it.
        early = [e for e in finals if e.t < t_end]
        spoke = self.first_loud_after(early[0].t) if early else None
        result = self._result(
            label, turn, final, t_end, heard_from, [str(e.data["text"]) for e in finals]
        )
        result.talked_over = spoke is not None and spoke < t_end
        return result

    def _result(
        self,
        label: str,
        turn: Event | None,
        final: str | None,
        t_end: float,
        reply_after: float,
        finals: list[str],
    ) -> TurnResult:
        """What a turn came to: latency from `t_end` to the first reply sound after
        `reply_after`, and the agent's own account of the turn (if it reported one)."""
        onset = self.first_loud_after(reply_after)
        t_stop = self.clock.now()
        return TurnResult(
            label=label,
            heard=final if turn is None else turn.data.get("heard", final),
            reply=None if turn is None else turn.data.get("reply"),
            v2v_ms=None if onset is None or turn is None else round((onset - t_end) * 1000, 1),
            interrupted=bool(turn and turn.data.get("interrupted")),
            server={} if turn is None else dict(turn.data.get("metrics", {})),
            link=self.last_event("link"),
            t_speech_end=t_end,
            finals=finals,
            reply_pcm=self.audio_between(t_end, t_stop),
        )

    def _settled(self, t_start: float, t_end: float) -> bool:
        """The agent is listening again after `t_end`, with a turn for every final since
        `t_start` (a non-empty final always ends in a `turn` event: answered or interrupted)."""
        window = [e for e in self.events if e.t >= t_start]
        states = [e for e in window if e.data.get("type") == "state"]
        if not states or states[-1].data.get("state") != "listening" or states[-1].t < t_end:
            return False
        # A reply taken back (the user went on before hearing it) ends in `retracted`.
        ended = sum(1 for e in window if e.data.get("type") in ("turn", "retracted"))
        return ended >= len(self._finals(t_start))

    def _finals(self, t_start: float) -> list[str]:
        return [
            str(e.data["text"])
            for e in self.events
            if e.t >= t_start and e.data.get("type") == "final" and e.data.get("text")
        ]

    def last_event(self, kind: str) -> dict[str, Any]:
        return next((e.data for e in reversed(self.events) if e.data.get("type") == kind), {})

    async def rtc_stats(self) -> dict[str, Any]:
        """The caller's own view from aiortc getStats(): what the agent reported receiving
        (remote-inbound, from RTCP; jitter converted from RTP units to ms) and what we got."""
        report = await self.pc.getStats()
        out: dict[str, Any] = {}
        for stat in report.values():
            if stat.type == "remote-inbound-rtp":
                out["agent_reported_packets_lost"] = stat.packetsLost
                out["agent_reported_jitter_ms"] = round(stat.jitter / 48, 1)
                out["agent_reported_fraction_lost"] = stat.fractionLost
            elif stat.type == "inbound-rtp":
                out["caller_packets_received"] = stat.packetsReceived
                out["caller_packets_lost"] = stat.packetsLost
                out["caller_jitter_ms"] = round(stat.jitter / 48, 1)
            elif stat.type == "outbound-rtp":
                out["caller_packets_sent"] = stat.packetsSent
        if self.link is not None:
            out["caller_receive_path"] = self.link.as_event()
        return out

    async def close(self) -> None:
        try:
            if self.session_id is not None:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with (
                        aiohttp.ClientSession() as http,
                        http.delete(
                            f"{self.url}/session/{self.session_id}",
                            headers={"X-Session-Secret": self.session_secret},
                            timeout=aiohttp.ClientTimeout(total=5),
                        ),
                    ):
                        pass
            self.mic.stop()
            if self.impaired is not None:
                await self.impaired.aclose()
            await self.pc.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            self.patches.uninstall()
