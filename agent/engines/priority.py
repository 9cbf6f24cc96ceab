"""How urgent a piece of shared-engine work is: what a caller is waiting for.

Every shared engine pool (TTS, the accurate whisper pass, captions) serves the most urgent
class first, and a higher class never waits behind a lower one. The classes, most urgent
first:

- FIRST_AUDIO: the first audio of a reply that is committed (the caller hears silence until
  it arrives);
- TURN_FINAL: the accurate pass that holds a turn open (the reply cannot start before it);
- SPECULATIVE: work for a turn that may not happen: a pass or a synthesis started in the
  pause, cancelled the moment its turn moves on;
- READ_AHEAD: later sentences of a reply that is already playing (needed only when the
  sentence before them ends).

A request's class may be raised while it waits (a speculative reply committed at the end of
the turn becomes FIRST_AUDIO), so pools read `Urgency.priority` when they choose, not when
the request arrives.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Priority(IntEnum):
    """Lower value = more urgent (sorts first)."""

    FIRST_AUDIO = 0
    TURN_FINAL = 1
    SPECULATIVE = 2
    READ_AHEAD = 3

    @property
    def label(self) -> str:
        """Its name in metrics and logs (`first_audio`, …)."""
        return self.name.lower()


@dataclass
class Urgency:
    """A mutable class for one request: the owner may raise it while the request waits."""

    priority: Priority = Priority.FIRST_AUDIO

    def raise_to(self, priority: Priority) -> None:
        """Make the request at least as urgent as `priority` (never lowers it)."""
        self.priority = min(self.priority, priority)
