"""A restaurant's phone line: checks free tables, books one after the caller confirms, and
hangs up when the caller is done.

    ringback serve --agent examples/restaurant.py --llm openai
        (RINGBACK_OPENAI_BASE_URL / _MODEL / _API_KEY point at any OpenAI-compatible server)

The page (or any caller) may send a context with the offer, e.g. {"name": "Ada"}: the
booking is made in that name unless the caller gives another.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Literal

from agent.api import Agent, CallControl, ToolError, tool

log = logging.getLogger("restaurant")

DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
TABLES_PER_SLOT = 3
bookings: list[dict[str, Any]] = []  # a real agent would use its own database


def _slot_taken(day: str, time: str) -> int:
    return sum(1 for b in bookings if b["day"] == day and b["time"] == time)


@tool
async def check_availability(day: str, time: str, people: int) -> str:
    """Whether a table is free. Call it before offering a booking.

    Args:
        day: the day of the week, e.g. "friday"
        time: 24-hour time, e.g. "19:30"
        people: how many guests
    """
    await asyncio.sleep(0.05)  # a database look-up
    day = day.lower()
    if day not in DAYS:
        raise ToolError(f"{day} is not a day of the week")
    if day == "monday":
        return "closed on mondays"
    if people > 8:
        return "tables seat at most 8: ask the caller to phone the manager"
    free = TABLES_PER_SLOT - _slot_taken(day, time)
    return f"{free} table(s) free on {day} at {time}" if free > 0 else "fully booked then"


@tool
async def book_table(
    day: str,
    time: str,
    people: int,
    context: dict[str, Any],
    name: str = "",
    seating: Literal["inside", "terrace"] = "inside",
) -> dict[str, Any]:
    """Book a table. Only call it after the caller has confirmed day, time and party size.

    Args:
        day: the day of the week
        time: 24-hour time
        people: how many guests
        name: the name for the booking (default: the caller's, if known)
        seating: inside or on the terrace
    """
    day = day.lower()
    if day not in DAYS or day == "monday":
        raise ToolError(f"cannot book on {day}")
    if _slot_taken(day, time) >= TABLES_PER_SLOT:
        raise ToolError("that time is fully booked")
    booking = {
        "reference": f"R{len(bookings) + 101}",
        "day": day,
        "time": time,
        "people": people,
        "name": name or context.get("name", "guest"),
        "seating": seating,
    }
    bookings.append(booking)
    log.info("booked %s", booking)
    return booking


def prompt(context: Mapping[str, Any]) -> str:
    who = f" The caller's name is {context['name']}." if context.get("name") else ""
    return (
        "You answer the phone for Chez Ringback, a small restaurant open Tuesday to Sunday, "
        "12:00 to 22:00. Speak in short, friendly sentences, no lists." + who + " To book: "
        "ask for the day, time and party size, check availability, repeat the details and ask "
        "the caller to confirm, and only then call book_table; give the booking reference. "
        "When the caller says goodbye, say a short farewell and call end_call."
    )


def on_call_start(call: CallControl) -> None:
    log.info("call %s started (context: %s)", call.session_id, dict(call.context))


def on_call_end(call: CallControl) -> None:
    log.info("call %s ended; %d booking(s) so far", call.session_id, len(bookings))


agent = Agent(
    prompt=prompt,
    tools=[check_availability, book_table],
    on_call_start=on_call_start,
    on_call_end=on_call_end,
)
