"""Who may open a call now: per-client offer rate and the budget of calls still connecting.

Pure bookkeeping (no I/O), timed by the caller's clock. An offer whose ICE never completes
holds server state until the connect timeout; without these limits a few plain POSTs every
few seconds would keep every call slot taken (slot squatting).

- **Rate**: each client IP has a token bucket (`offers_per_minute`, burst `offer_burst`).
- **Pending per client**: at most `max_pending_per_client` unconnected offers per IP.
- **Pending overall**: at most `max_pending`; past it the *oldest* pending offer is evicted
  rather than the new one refused, so a flood from many addresses cannot lock out a caller
  whose ICE completes in the usual tens of milliseconds.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass


class Refused(Exception):
    """An offer refused for this client; `retry_after_s` goes into the 429's Retry-After."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, math.ceil(retry_after_s))


@dataclass
class _Bucket:
    tokens: float
    t: float


class Admission:
    def __init__(
        self,
        offers_per_minute: float,
        offer_burst: int,
        max_pending: int,
        max_pending_per_client: int,
        max_clients_tracked: int = 10_000,
    ) -> None:
        self.rate_per_s = offers_per_minute / 60.0
        self.burst = offer_burst
        self.max_pending = max_pending
        self.max_pending_per_client = max_pending_per_client
        self._max_clients = max_clients_tracked
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._pending: OrderedDict[str, str] = OrderedDict()  # call id -> client, oldest first

    def check(self, client: str, now: float) -> None:
        """Take one offer token for `client` or raise Refused. Does not reserve a slot."""
        bucket = self._buckets.pop(client, None)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now)
        else:
            elapsed = max(0.0, now - bucket.t)
            bucket = _Bucket(min(float(self.burst), bucket.tokens + elapsed * self.rate_per_s), now)
        self._buckets[client] = bucket  # most recently seen last
        while len(self._buckets) > self._max_clients:
            self._buckets.popitem(last=False)
        if self.pending_of(client) >= self.max_pending_per_client:
            raise Refused(
                f"too many calls still connecting from your address "
                f"(at most {self.max_pending_per_client})",
                retry_after_s=5,
            )
        if bucket.tokens < 1.0:
            raise Refused(
                "too many offers from your address: slow down",
                retry_after_s=(1.0 - bucket.tokens) / self.rate_per_s,
            )
        bucket.tokens -= 1.0

    def pending_of(self, client: str) -> int:
        return sum(1 for c in self._pending.values() if c == client)

    def add_pending(self, call_id: str, client: str) -> list[str]:
        """Record an answered offer; returns the ids of pending offers to evict (oldest)."""
        self._pending[call_id] = client
        evict: list[str] = []
        while len(self._pending) > self.max_pending:
            oldest, _ = self._pending.popitem(last=False)
            evict.append(oldest)
        return evict

    def done_pending(self, call_id: str) -> None:
        """The offer connected, failed or was evicted."""
        self._pending.pop(call_id, None)

    @property
    def pending(self) -> int:
        return len(self._pending)
