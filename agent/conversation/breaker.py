"""A circuit breaker per engine, and the LLM chain (primary, then fallback) that uses them.

Policy, not an engine: it lives with the conversation that applies it (engine_faults.py)
and sees the LLMs only through agent.engines.interfaces. agent.call.engines builds the chain
one server shares.

closed: requests go through; `failures` consecutive failures open it.
open: requests are refused at once (no caller waits on an engine known to be down) until
    `reset_s` has passed, then it is half-open.
half-open: one trial request goes through; its success closes the breaker, its failure opens
    it again. A trial that ends neither way (the reply was cancelled) frees the slot.

Time comes from the injected clock; every state change is logged (WARNING when opening) and
counted, and `state` is readable for metrics.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from agent.clock import Clock, MonotonicClock
from agent.engines.interfaces import LLM, Message

log = logging.getLogger(__name__)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerConfig:
    failures: int = 3  # consecutive failures that open the breaker
    reset_s: float = 20.0  # open this long before a trial request

    def __post_init__(self) -> None:
        if self.failures < 1:
            raise ValueError("breaker failures must be >= 1")
        if self.reset_s <= 0:
            raise ValueError("breaker reset_s must be positive")


class CircuitBreaker:
    def __init__(self, name: str, config: BreakerConfig, clock: Clock | None = None) -> None:
        self.name = name
        self.config = config
        self._clock = clock or MonotonicClock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial = False  # a half-open trial request is in flight
        self.transitions: dict[str, int] = {str(s): 0 for s in BreakerState}
        """How often the breaker entered each state (for metrics)."""

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker whose reset time has passed reads half-open)."""
        if (
            self._state is BreakerState.OPEN
            and self._clock.now() - self._opened_at >= self.config.reset_s
        ):
            self._enter(BreakerState.HALF_OPEN)
        return self._state

    def allow(self) -> bool:
        """May a request go to the engine now? (In half-open, only one at a time.)"""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._trial:
            self._trial = True
            return True
        return False

    def record_success(self) -> None:
        self._trial = False
        self._failures = 0
        if self._state is not BreakerState.CLOSED:
            self._enter(BreakerState.CLOSED)

    def record_failure(self) -> None:
        self._trial = False
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or (
            self._state is BreakerState.CLOSED and self._failures >= self.config.failures
        ):
            self._opened_at = self._clock.now()
            self._enter(BreakerState.OPEN)

    def release(self) -> None:
        """A request allowed through ended without telling (cancelled)."""
        self._trial = False

    def _enter(self, state: BreakerState) -> None:
        self._state = state
        self.transitions[str(state)] += 1
        if state is BreakerState.OPEN:
            log.warning(
                "%s breaker open after %d failure(s): requests refused for %gs",
                self.name,
                self._failures,
                self.config.reset_s,
            )
        else:
            log.info("%s breaker %s", self.name, state)


@dataclass
class GuardedLlm:
    """One LLM engine and its breaker; `role` is "primary" or "fallback"."""

    llm: LLM
    breaker: CircuitBreaker
    role: str = "primary"


@dataclass
class LlmChain:
    """The LLMs a server tries in order (primary, then the fallback when given), each behind
    its own breaker, shared by every call. It is an LLM itself (the primary's stream), for
    code that does not care about fallbacks."""

    members: Sequence[GuardedLlm]
    name: str = field(init=False)

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("an LLM chain needs at least one LLM")
        self.name = "+".join(m.llm.name for m in self.members)

    @classmethod
    def of(
        cls,
        primary: LLM,
        fallback: LLM | None = None,
        config: BreakerConfig | None = None,
        clock: Clock | None = None,
    ) -> LlmChain:
        config = config or BreakerConfig()
        members = [GuardedLlm(primary, CircuitBreaker(f"LLM {primary.name}", config, clock))]
        if fallback is not None:
            breaker = CircuitBreaker(f"fallback LLM {fallback.name}", config, clock)
            members.append(GuardedLlm(fallback, breaker, "fallback"))
        return cls(members)

    @property
    def breakers(self) -> dict[str, CircuitBreaker]:
        """role → breaker (for metrics: `breaker.state`, `breaker.transitions`)."""
        return {m.role: m.breaker for m in self.members}

    def complete(self, messages: Sequence[Message]) -> AsyncGenerator[str, None]:
        return self.members[0].llm.complete(messages)

    async def aclose(self) -> None:
        for member in self.members:
            await member.llm.aclose()
