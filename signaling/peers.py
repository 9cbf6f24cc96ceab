"""Call registry: admits offers, creates peer connections, and cleans up on every exit.

A call ends, and is cleaned up completely (session stopped, peer connection closed, slot
freed), on hang-up (DELETE or the peer closing), ICE/DTLS failure, no RTP for
`media_timeout_s` once connected (a vanished or silent peer), no connection within
`connect_timeout_s` of the answer, eviction of a pending offer, the maximum call duration,
or server shutdown.

Everything done for a call logs under its id (agent/call/logctx.py): `open` binds it before
the peer connection exists, so every task aiortc and the session start inherits it.

Every call has a public id (logs, the `hello` event) and a secret returned only to its
creator: acting on the call (hang-up, resume) needs the secret. A call that dropped (no
media, connection failed) is parked for `resume_grace_s`: an offer presenting its id and
secret continues the same conversation on a new peer connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaBlackhole
from aiortc.mediastreams import MediaStreamTrack

from agent.call import logctx
from agent.call.engines import Engines
from agent.call.events import CHANNEL_LABEL
from agent.call.logctx import escape
from agent.call.session import Session
from agent.call.stats import ServerStats
from agent.clock import Clock
from agent.conversation.history import Conversation
from agent.engines.interfaces import Role
from signaling.admission import Admission
from signaling.config import ServerConfig

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 1.0
# Ends that leave the conversation resumable: the network, not a person, ended the call.
RESUMABLE_ENDS = frozenset({"no media", "connection failed"})
GOODBYE = "The server is restarting. Goodbye!"


class CapacityError(Exception):
    pass


class ShuttingDown(Exception):
    pass


class OfferRejected(Exception):
    """aiortc could not apply the offer (an SDP it does not accept)."""


@dataclass(frozen=True)
class Resume:
    session_id: str
    secret: str


@dataclass(eq=False)
class Call:
    id: str
    secret: str
    client: str
    pc: RTCPeerConnection
    session: Session
    track: asyncio.Future[MediaStreamTrack]
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    blackhole: MediaBlackhole = field(default_factory=MediaBlackhole)
    task: asyncio.Task[None] | None = None
    closing: bool = False
    end_requested: bool = False  # end() cancelled the task: that cancellation is ours
    end_reason: str = "ended"
    resumed: bool = False
    taken_over: bool = False  # a resume moved its conversation to a new call: never park it

    def end(self, reason: str) -> None:
        """Ask the call to end (idempotent): the first reason given is the one logged."""
        if self.task is not None and not self.task.done() and not self.closing:
            self.end_reason = reason
            self.closing = True
            self.end_requested = True
            self.task.cancel()


@dataclass
class _Parked:
    secret: str
    conversation: Conversation
    expires_at: float
    turns: int = 0
    reason: str = ""


@dataclass(frozen=True)
class ParkedCall:
    """A dropped call that can still be resumed (what `/sessions` shows of it)."""

    id: str
    turns: int
    reason: str  # why it dropped ("no media", "connection failed", ...)
    resume_within_s: float


def _secret_matches(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.encode())


async def _close_pc(pc: RTCPeerConnection, call_id: str) -> None:
    with logctx.bound(call_id):  # also when the server, not the call, closes it
        try:
            await pc.close()
        except Exception as exc:  # aiortc can raise again on an offer it refused
            log.info("peer connection close failed: %s: %s", type(exc).__name__, escape(exc))


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
        self.draining = False
        self.admission = Admission(
            config.offers_per_minute,
            config.offer_burst,
            config.max_pending,
            config.max_pending_per_client,
        )
        self._parked: dict[str, _Parked] = {}
        self._opening = 0  # offers being answered right now: they hold a slot too

    @property
    def full(self) -> bool:
        return len(self.calls) + self._opening >= self.config.max_sessions

    def _rtc_configuration(self) -> RTCConfiguration:
        servers = [
            RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
            for s in self.config.ice_servers
        ]
        return RTCConfiguration(iceServers=servers)

    def admit(self, client: str) -> None:
        """Raise ShuttingDown, admission.Refused (429) or CapacityError (503) before any work."""
        if self.draining:
            raise ShuttingDown
        self.admission.check(client, self.clock.now())
        if self.full and self.admission.pending == 0:
            raise CapacityError

    def parked(self) -> list[ParkedCall]:
        """Dropped calls still resumable, oldest first."""
        self._purge_parked()
        now = self.clock.now()
        return [
            ParkedCall(call_id, p.turns, p.reason, round(p.expires_at - now, 1))
            for call_id, p in self._parked.items()
        ]

    def _purge_parked(self) -> None:
        now = self.clock.now()
        for call_id in [i for i, p in self._parked.items() if p.expires_at <= now]:
            del self._parked[call_id]

    def _resumable(self, resume: Resume | None) -> Conversation | None:
        """The conversation `resume` names if its secret matches, else None (nothing taken
        yet: see `_take_over`)."""
        if resume is None:
            return None
        self._purge_parked()
        parked = self._parked.get(resume.session_id)
        if parked is not None and _secret_matches(parked.secret, resume.secret):
            return parked.conversation
        live = self.calls.get(resume.session_id)
        if live is not None and not live.taken_over and _secret_matches(live.secret, resume.secret):
            return live.session.turns.conversation
        return None

    def _take_over(self, session_id: str) -> None:
        """The resumed call's answer is out: retire the parked or live call it continues."""
        self._parked.pop(session_id, None)
        live = self.calls.pop(session_id, None)
        if live is not None:
            live.taken_over = True
            live.end("resumed")  # the old connection is dead to its user: replace it
            self.admission.done_pending(live.id)

    async def open(
        self,
        offer: RTCSessionDescription,
        client: str,
        resume: Resume | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> tuple[RTCSessionDescription, Call]:
        """Answer an offer and start serving the call (call `admit` first).

        Raises CapacityError or OfferRejected. With `resume`, a parked or live call whose id
        and secret match is continued (`call.resumed`); otherwise a new call starts.
        """
        conversation = self._resumable(resume)
        resuming = conversation is not None and resume is not None
        replacing = resume is not None and resuming and resume.session_id in self.calls
        if self.full and not replacing and not self._evict_oldest_pending():
            raise CapacityError
        if resume is not None and resuming:
            # The same id and secret: a page whose attempt failed can simply try again.
            call_id, secret = resume.session_id, resume.secret
        else:
            call_id = self.config.session_id_prefix + secrets.token_urlsafe(9)
            secret = secrets.token_urlsafe(18)
        # Before the peer connection exists: the tasks, timers and socket readers aiortc and
        # aioice create for it (and the call's own task) copy this context.
        with logctx.bound(call_id):
            return await self._open(call_id, secret, offer, client, conversation, context)

    async def _open(
        self,
        call_id: str,
        secret: str,
        offer: RTCSessionDescription,
        client: str,
        conversation: Conversation | None,
        context: Mapping[str, Any] | None = None,
    ) -> tuple[RTCSessionDescription, Call]:
        """`open`, under the call's id: the peer connection, the answer, the call's task."""
        pc = RTCPeerConnection(self._rtc_configuration())
        session = Session(
            call_id, self.config.agent, self.engines, self.clock, self.stats, conversation, context
        )
        call = Call(
            call_id,
            secret,
            client,
            pc,
            session,
            asyncio.get_running_loop().create_future(),
            resumed=conversation is not None,
        )
        self._wire(call)
        self._opening += 1
        try:
            await pc.setRemoteDescription(offer)
            pc.addTrack(session.outbound)
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
            if self.draining:
                raise ShuttingDown
        except BaseException as exc:
            await _close_pc(pc, call_id)
            if isinstance(exc, Exception) and not isinstance(exc, ShuttingDown):
                # aiortc raises ValueError, AttributeError, ... for SDP it cannot use.
                raise OfferRejected(f"{type(exc).__name__}: {exc}") from exc
            raise
        finally:
            self._opening -= 1
        if call.resumed:
            self._take_over(call_id)
        self.calls[call_id] = call
        for evicted in self.admission.add_pending(call_id, client):
            self._end_pending(evicted)
        call.task = asyncio.get_running_loop().create_task(
            self._serve(call), name=f"call-{call_id}"
        )
        self.total_started += 1
        log.info(
            "call %s (%d active, %d connecting)",
            "resumed" if call.resumed else "answered",
            len(self.calls),
            self.admission.pending,
        )
        return pc.localDescription, call

    def _evict_oldest_pending(self) -> bool:
        for call in self.calls.values():
            if not call.connected.is_set() and call.task is not None:
                self._end_pending(call.id)
                self.calls.pop(call.id, None)
                return True
        return False

    def _end_pending(self, call_id: str) -> None:
        self.admission.done_pending(call_id)
        call = self.calls.get(call_id)
        if call is not None and not call.connected.is_set():
            with logctx.bound(call_id):  # possibly from another call's offer
                log.info("evicted: still connecting when the pending budget ran out")
            call.end("evicted")

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
            log.info("connection %s", pc.connectionState)
            if pc.connectionState == "connected":
                call.connected.set()
                self.admission.done_pending(call.id)
            elif pc.connectionState == "failed":
                call.end("connection failed")
            elif pc.connectionState == "closed":
                call.end("connection closed")

    async def _serve(self, call: Call) -> None:
        try:
            try:
                # aiortc announces the remote track while applying the offer, before ICE
                # even starts, so wait for the connection itself: an offer that never
                # connects must not hold a slot.
                async with asyncio.timeout(self.config.connect_timeout_s):
                    track = await call.track
                    await call.connected.wait()
            except TimeoutError:
                call.end_reason = "never connected"
                return
            self.admission.done_pending(call.id)
            await call.blackhole.start()
            if call.resumed:
                history = call.session.turns.conversation.turns
                exchanges = sum(1 for m in history if m.role == Role.USER)
                call.session.events.emit({"type": "resumed", "history_turns": exchanges})
            try:
                async with asyncio.timeout(self.config.max_call_s):
                    await self._run_watched(call, track)
            except TimeoutError:
                call.end_reason = "max duration"
        except asyncio.CancelledError:
            if not call.end_requested:  # cancelled from outside: not an end we asked for
                raise
        except Exception:
            call.end_reason = "error"
            log.exception("call failed")
        finally:
            call.closing = True
            self.admission.done_pending(call.id)
            if self.calls.get(call.id) is call:
                del self.calls[call.id]
            with contextlib.suppress(Exception):
                await call.blackhole.stop()
            await _close_pc(call.pc, call.id)
            self._purge_parked()
            dropped = call.end_reason in RESUMABLE_ENDS or (
                call.resumed and call.end_reason in ("never connected", "evicted")
            )
            if dropped and not call.taken_over and self.config.resume_grace_s > 0:
                self._parked[call.id] = _Parked(
                    call.secret,
                    call.session.turns.conversation,
                    self.clock.now() + self.config.resume_grace_s,
                    call.session.turns_total,
                    call.end_reason,
                )
            log.info("call ended: %s (%d active)", call.end_reason, len(self.calls))

    async def _run_watched(self, call: Call, track: MediaStreamTrack) -> None:
        """The session, ended when RTP stops arriving for media_timeout_s."""
        session = asyncio.get_running_loop().create_task(
            call.session.run(track), name=f"session-{call.id}"
        )
        try:
            last_packets, last_change = -1, self.clock.now()
            while not session.done():
                done, _ = await asyncio.wait({session}, timeout=WATCH_INTERVAL_S)
                if done:
                    break
                packets = await _packets_received(call.pc)
                now = self.clock.now()
                if packets != last_packets:
                    last_packets, last_change = packets, now
                elif now - last_change >= self.config.media_timeout_s:
                    log.info("no media for %.0f s: ending the call", now - last_change)
                    call.end_reason = "no media"
                    break
            if session.done():
                session.result()  # raises what the session raised
                # The inbound track ended, or the agent ended the call (end_call).
                call.end_reason = "agent hung up" if call.session.hung_up else "caller hung up"
        finally:
            call.closing = True  # from here on it is ending: later end() calls are no-ops
            session.cancel()
            await asyncio.wait({session})  # unlike gather, a cancel of ours won't reach it
            if not session.cancelled() and session.exception() is not None:
                log.debug("session ended with %r", session.exception())

    def authorized(self, call_id: str, secret: str) -> Call | None:
        call = self.calls.get(call_id)
        if call is None or not _secret_matches(call.secret, secret):
            return None
        return call

    async def hang_up(self, call_id: str, secret: str) -> bool:
        call = self.authorized(call_id, secret)
        if call is None or call.task is None:
            return False
        self._parked.pop(call_id, None)
        call.end("hung up")
        await asyncio.wait({call.task})  # a cancelled request must not cut the cleanup short
        return True

    async def announce_shutdown(self, within_s: float) -> None:
        """Tell every caller the server is going away: an event, then a short spoken goodbye
        (unless a reply is playing), for at most `within_s`. New offers get 503 from now on."""
        self.draining = True
        calls = [c for c in self.calls.values() if c.connected.is_set()]
        for call in calls:
            with logctx.bound(call.id):
                call.session.events.emit({"type": "shutdown", "message": GOODBYE})
        goodbyes = [c.session.say_goodbye(GOODBYE) for c in calls]
        try:
            async with asyncio.timeout(within_s):
                for outcome in await asyncio.gather(*goodbyes, return_exceptions=True):
                    if isinstance(outcome, Exception):
                        log.info("goodbye not said: %s", type(outcome).__name__)
        except TimeoutError:
            log.info("goodbyes cut short by the shutdown deadline")

    async def close_all(self) -> None:
        self.draining = True
        calls = list(self.calls.values())
        for call in calls:
            call.end("shutdown")
        await asyncio.gather(*(c.task for c in calls if c.task is not None), return_exceptions=True)
        for call in calls:
            if call.task is None:  # answered but never started serving
                await _close_pc(call.pc, call.id)
        self.calls.clear()
        self._parked.clear()


async def _packets_received(pc: RTCPeerConnection) -> int:
    total = 0
    for receiver in pc.getReceivers():
        if receiver.track is None or receiver.track.kind != "audio":
            continue
        report = await receiver.getStats()
        total += sum(
            int(getattr(s, "packetsReceived", 0))
            for s in report.values()
            if s.type == "inbound-rtp"
        )
    return total
