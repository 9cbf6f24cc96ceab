"""HAProxy agent-check responder: one line per connection telling HAProxy this server's load.

HAProxy connects to `--agent-check-port` every few seconds and reads a line: `ready up 60%`
sets the server's weight to 60 % of its configured weight (new calls go mostly to the emptier
servers), `drain` stops new calls while the calls it has (and their resources) keep working.
A server answers `drain` when it is full; the weight follows the free share of its sessions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


def agent_reply(load: float) -> str:
    """The agent-check line for a load of 0.0 (idle) … 1.0 (full)."""
    if load >= 1.0:
        return "drain\n"
    # `ready` cancels an earlier `drain`; `up` alone would leave the server draining.
    return f"ready up {max(1, round(100 * (1.0 - load)))}%\n"


async def serve_agent_check(host: str, port: int, load: Callable[[], float]) -> asyncio.Server:
    """Start answering on (host, port); the caller owns the returned server (close it)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(agent_reply(load()).encode())
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, host, port)
    log.info("agent-check on %s:%d", host, port)
    return server
