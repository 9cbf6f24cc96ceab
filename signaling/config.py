"""Server configuration: one typed object, built from the settings in signaling/settings.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.call.config import AgentConfig
from signaling.headroom import HeadroomConfig

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

# Concurrent calls one core sustains within the latency budget. It must come from
# bench/capacity.py (docs/measurements.md, "Capacity", 2026-12-07: on 2 vCPUs, 8 calls whose
# turns are spread out reach v2v p99 1.32 s and 10 reach 1.28 s, every turn answered; turns
# that end at the same instant are over the budget from 4 calls); the default max_sessions (8)
# is this times the 2 cores it was measured on. Measured headroom (signaling/headroom.py)
# refuses sooner when the machine has less to give.
CALLS_PER_CORE = 4


@dataclass(frozen=True)
class IceServer:
    urls: str
    username: str | None = None
    credential: str | None = None


@dataclass(frozen=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8080
    max_sessions: int = 8  # CALLS_PER_CORE × 2 cores, the machine it was measured on
    max_call_s: float = 1800.0
    connect_timeout_s: float = 10.0  # answer sent → connected, else the offer is dropped
    media_timeout_s: float = 6.0  # a connected call that receives no RTP this long is ended
    max_pending: int = 4  # offers answered but not yet connected (oldest evicted past it)
    max_pending_per_client: int = 2  # per client IP; more get 429 + Retry-After
    offers_per_minute: float = 60.0  # per client IP (sustained), with a burst of offer_burst
    offer_burst: int = 20
    trust_forwarded: bool = False  # client IP from X-Forwarded-For (behind a trusted proxy)
    auth_tokens: tuple[str, ...] = ()  # bearer tokens for /offer, /whip, /sessions, /metrics
    cors_origins: tuple[str, ...] = ()  # origins allowed to call the API from a browser
    resume_grace_s: float = 30.0  # a dropped call can be resumed this long
    shutdown_deadline_s: float = 8.0  # SIGTERM → process gone within this, exit status 0
    session_id_prefix: str = ""  # e.g. "w1-": routes session resources to their worker
    workers: int = 1  # > 1: worker processes behind one address (signaling/workers.py)
    agent_check_port: int = 0  # > 0: HAProxy agent-check (load) on this TCP port
    max_body_bytes: int = 64 * 1024
    retry_after_s: int = 5
    ice_servers: tuple[IceServer, ...] = ()
    ice_host_addresses: tuple[str, ...] = ()  # pin host candidates (e.g. 127.0.0.1)
    static_dir: Path = STATIC_DIR
    headroom: HeadroomConfig = field(default_factory=HeadroomConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"invalid port {self.port}")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        if self.max_sessions < 1 or self.max_call_s <= 0 or self.max_body_bytes < 1024:
            raise ValueError("max_sessions >= 1, max_call_s > 0 and max_body_bytes >= 1024")
        if self.connect_timeout_s <= 0 or self.media_timeout_s <= 0:
            raise ValueError("connect_timeout_s and media_timeout_s must be > 0")
        if self.max_pending < 1 or self.max_pending_per_client < 1:
            raise ValueError("max_pending and max_pending_per_client must be >= 1")
        if self.offers_per_minute <= 0 or self.offer_burst < 1:
            raise ValueError("offers_per_minute must be > 0 and offer_burst >= 1")
        if self.resume_grace_s < 0 or self.shutdown_deadline_s <= 0:
            raise ValueError("resume_grace_s >= 0 and shutdown_deadline_s > 0")
        if any(len(t) < 16 for t in self.auth_tokens):
            raise ValueError("auth tokens must be at least 16 characters")
