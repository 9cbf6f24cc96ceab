"""Built-in tools every agent gets (unless it opts out): end the call, the time in a city, a
timer that speaks when it fires. They need nothing online: time zones come from the system's
zoneinfo database.
"""

from __future__ import annotations

import datetime
import re
import zoneinfo
from collections.abc import Callable

from agent.conversation.tools import END_CALL, CallControl, Tool, ToolError

# Cities people ask about whose zone is not named after them.
_ALIASES = {
    "san francisco": "America/Los_Angeles",
    "seattle": "America/Los_Angeles",
    "washington": "America/New_York",
    "boston": "America/New_York",
    "miami": "America/New_York",
    "beijing": "Asia/Shanghai",
    "delhi": "Asia/Kolkata",
    "new delhi": "Asia/Kolkata",
    "mumbai": "Asia/Kolkata",
    "bangalore": "Asia/Kolkata",
    "rio": "America/Sao_Paulo",
    "rio de janeiro": "America/Sao_Paulo",
    "munich": "Europe/Berlin",
    "barcelona": "Europe/Madrid",
    "milan": "Europe/Rome",
    "osaka": "Asia/Tokyo",
    "kyoto": "Asia/Tokyo",
    "montreal": "America/Toronto",
    "hanoi": "Asia/Bangkok",
    "london": "Europe/London",
}
MAX_TIMER_S = 3600


def _zone_index() -> dict[str, str]:
    index: dict[str, str] = {}
    for key in zoneinfo.available_timezones():
        if key.count("/") < 1 or key.startswith(("Etc/", "SystemV/", "posix/", "right/")):
            continue
        city = key.rsplit("/", 1)[1].replace("_", " ").lower()
        index.setdefault(city, key)
    index.update(_ALIASES)
    return index


def zone_of(city: str) -> str | None:
    """The IANA zone of a city name ("Tokyo" → "Asia/Tokyo"), None if unknown."""
    name = " ".join(re.sub(r"[^a-z ]", " ", city.lower()).split())
    return _zone_index().get(name)


def spoken_clock(t: datetime.datetime) -> str:
    hour = t.hour % 12 or 12
    part = (
        "in the morning" if t.hour < 12 else "in the afternoon" if t.hour < 18 else "in the evening"
    )
    return f"{hour} o'clock {part}" if t.minute == 0 else f"{hour}:{t.minute:02d} {part}"


def make_time_in(
    now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
) -> Tool:
    """The `time_in(city)` tool; `now` (aware, any zone) is injectable for tests."""

    async def time_in(city: str) -> str:
        """The current local time in a city anywhere in the world.

        Args:
            city: the city's name, e.g. "Tokyo"
        """
        zone = zone_of(city)
        if zone is None:
            raise ToolError(f"I don't know the time zone of {city}")
        local = now().astimezone(zoneinfo.ZoneInfo(zone))
        return f"It's {spoken_clock(local)} in {city.strip().title()}."

    return Tool(time_in)


async def set_timer(seconds: int, call: CallControl, label: str = "") -> str:
    """Set a timer: the agent tells the caller when it is done.

    Args:
        seconds: how long, in seconds (1 to 3600)
        label: what the timer is for, e.g. "pasta"
    """
    if not 1 <= seconds <= MAX_TIMER_S:
        raise ToolError(f"a timer must be between 1 and {MAX_TIMER_S} seconds")
    what = label.strip() or _duration(seconds, adjective=True)
    what += " timer"
    call.announce_after(seconds, f"Your {what} is done.")
    return f"Timer set for {_duration(seconds)}."


def _duration(seconds: int, adjective: bool = False) -> str:
    """ "2 minutes", or as an adjective "2 minute" (a 2 minute timer)."""
    n, unit = (seconds // 60, "minute") if seconds % 60 == 0 else (seconds, "second")
    return f"{n} {unit}" + ("s" if n != 1 and not adjective else "")


SET_TIMER = Tool(set_timer)


def builtin_tools(now: Callable[[], datetime.datetime] | None = None) -> list[Tool]:
    """end_call, time_in, set_timer."""
    return [END_CALL, make_time_in(now) if now is not None else make_time_in(), SET_TIMER]
