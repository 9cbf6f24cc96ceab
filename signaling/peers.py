"""Call registry: creates peer connections, enforces limits, and cleans up on every exit.

A call ends, and is cleaned up completely (session stopped, peer connection closed, slot
freed), on hang-up (DELETE or the peer closing), ICE/DTLS failure, the peer vanishing (ICE
consent expires → connection "failed"), no media within connect_timeout_s, the maximum call
duration, or server shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass, field

from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaBlackhole
from aiortc.mediastreams import MediaStreamTrack

from agent.call.engines import Engines
from agent.call.events import CHANNEL_LABEL
from agent.call.session import Session
from agent.call.stats import ServerStats
from agent.clock import Clock
from signaling.config import ServerConfig

log = logging.getLogger(__name__)


class CapacityError(Exception):
    pass


class OfferRejected(Exception):
    """aiortc could not apply the offer (an SDP it does not accept)."""


@dataclass(eq=False)
class Call:
    id: str
    pc: RTCPeerConnection
    session: Session
    track: asyncio.Future[MediaStreamTrack]
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    blackhole: MediaBlackhole = field(default_factory=MediaBlackhole)
    task: asyncio.Task[None] | None = None
    closing: bool = False


class CallRegistry:
    def __init__(
        self, config: ServerConfig, engines: Engines, clock: Clock, stats: ServerStats
    ) -> None:
        self.config = config
        self.stats = stats
        self.engines = engines
        self.clock = clock
        self.calls: dict[str, Call] = {}
        self.total_started = 0

    @property
    def full(self) -> bool:
        return len(self.calls) >= self.config.max_sessions

    def _rtc_configuration(self) -> RTCConfiguration:
        servers = [
            RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
            for s in self.config.ice_servers
        ]
        return RTCConfiguration(iceServers=servers)

    async def open(self, offer: RTCSessionDescription) -> tuple[RTCSessionDescription, Call]:
        """Answer an offer and start serving the call. Raises CapacityError or ValueError."""
        if self.full:
            raise CapacityError
        call_id = secrets.token_urlsafe(9)
        pc = RTCPeerConnection(self._rtc_configuration())
        session = Session(call_id, self.config.agent, self.engines, self.clock, self.stats)
        call = Call(call_id, pc, session, asyncio.get_running_loop().create_future())
        self.calls[call_id] = call
        self._wire(call)
        try:
            await pc.setRemoteDescription(offer)
            pc.addTrack(session.outbound)
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        except BaseException as exc:
            self.calls.pop(call_id, None)
            await pc.close()
            if isinstance(exc, Exception):
                # aiortc raises ValueError, AttributeError, ... for SDP it cannot use.
                raise OfferRejected(f"{type(exc).__name__}: {exc}") from exc
            raise
        call.task = asyncio.get_running_loop().create_task(
            self._serve(call), name=f"call-{call_id}"
        )
        self.total_started += 1
        log.info("[%s] call answered (%d active)", call_id, len(self.calls))
        return pc.localDescription, call

    def _wire(self, call: Call) -> None:
        pc = call.pc

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio" and not call.track.done():
                call.track.set_result(track)
            else:
                call.blackhole.addTrack(track)  # drained: aiortc's track queues are unbounded

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if channel.label == CHANNEL_LABEL:
                call.session.events.attach(channel)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            log.info("[%s] connection %s", call.id, pc.connectionState)
            if pc.connectionState == "connected":
                call.connected.set()
            if pc.connectionState in ("failed", "closed") and call.task and not call.closing:
                call.task.cancel()

    async def _serve(self, call: Call) -> None:
        try:
            # aiortc announces the remote track while applying the offer, before ICE even
            # starts, so wait for the connection itself: an offer that never connects must
            # not hold a slot.
            async with asyncio.timeout(self.config.connect_timeout_s):
                track = await call.track
                await call.connected.wait()
            await call.blackhole.start()
            async with asyncio.timeout(self.config.max_call_s):
                await call.session.run(track)
        except TimeoutError:
            log.warning("[%s] call timed out (no media or max duration)", call.id)
        except Exception:
            log.exception("[%s] call failed", call.id)
        finally:
            call.closing = True
            self.calls.pop(call.id, None)
            with contextlib.suppress(Exception):
                await call.blackhole.stop()
            await call.pc.close()
            log.info("[%s] call cleaned up (%d active)", call.id, len(self.calls))

    async def hang_up(self, call_id: str) -> bool:
        call = self.calls.get(call_id)
        if call is None or call.task is None:
            return False
        call.task.cancel()
        await asyncio.gather(call.task, return_exceptions=True)
        return True

    async def close_all(self) -> None:
        tasks = [c.task for c in self.calls.values() if c.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for call in list(self.calls.values()):  # answered but never started serving
            await call.pc.close()
        self.calls.clear()
