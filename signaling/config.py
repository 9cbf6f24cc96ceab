"""Server configuration: CLI flags and RINGBACK_* environment variables → one typed object."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.call.config import AgentConfig

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


@dataclass(frozen=True)
class IceServer:
    urls: str
    username: str | None = None
    credential: str | None = None


@dataclass(frozen=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8080
    max_sessions: int = 8
    max_call_s: float = 1800.0
    connect_timeout_s: float = 20.0  # answer sent → media flowing, else the session is dropped
    max_body_bytes: int = 64 * 1024
    retry_after_s: int = 5
    ice_servers: tuple[IceServer, ...] = ()
    ice_host_addresses: tuple[str, ...] = ()  # pin host candidates (e.g. 127.0.0.1)
    static_dir: Path = STATIC_DIR
    agent: AgentConfig = field(default_factory=AgentConfig)

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"invalid port {self.port}")
        if self.max_sessions < 1 or self.max_call_s <= 0 or self.max_body_bytes < 1024:
            raise ValueError("max_sessions >= 1, max_call_s > 0 and max_body_bytes >= 1024")
