"""Link profiles: the named ones in `profiles.toml` and inline `key=value` specs.

A profile is a one-way impairment applied to each direction of the lab's link. Parsing is
strict: unknown keys and out-of-range values are errors, so a typo never runs as "clean".
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

PROFILES_FILE = Path(__file__).with_name("profiles.toml")


@dataclass(frozen=True)
class GeModel:
    """Gilbert-Elliott loss, all in percent (as `tc netem loss gemodel p r 1-h 1-k`)."""

    p: float  # good -> bad, per packet
    r: float  # bad -> good, per packet
    loss_bad: float = 100.0  # 1-h
    loss_good: float = 0.0  # 1-k

    def mean_loss_pct(self) -> float:
        if self.p + self.r == 0:
            return self.loss_good
        bad = self.p / (self.p + self.r)
        return bad * self.loss_bad + (1 - bad) * self.loss_good


@dataclass(frozen=True)
class Profile:
    name: str
    description: str = ""
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    gemodel: GeModel | None = None
    reorder_pct: float = 0.0
    rate_kbit: float = 0.0  # 0: unlimited

    @property
    def mean_loss_pct(self) -> float:
        return self.gemodel.mean_loss_pct() if self.gemodel else self.loss_pct

    @property
    def needs_queue(self) -> bool:
        """Delay, jitter, reordering or bursty loss: the fallback needs the NFQUEUE handler."""
        return bool(self.delay_ms or self.jitter_ms or self.reorder_pct or self.gemodel)

    @property
    def is_clean(self) -> bool:
        return not (self.needs_queue or self.loss_pct or self.rate_kbit)


_NUMERIC = {"delay_ms", "jitter_ms", "loss_pct", "reorder_pct", "rate_kbit"}
_PCT = {"loss_pct", "reorder_pct"}
# Short names accepted in inline specs ("delay=50,jitter=20,loss=5").
_ALIASES = {"delay": "delay_ms", "jitter": "jitter_ms", "loss": "loss_pct",
            "reorder": "reorder_pct", "rate": "rate_kbit"}  # fmt: skip


def _pct(key: str, value: Any) -> float:
    v = _num(key, value)
    if v > 100:
        raise ValueError(f"{key} is a percentage, got {v}")
    return v


def _num(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number, got {value!r}")
    if value < 0:
        raise ValueError(f"{key} must be >= 0, got {value}")
    return float(value)


def _gemodel(value: Any) -> GeModel:
    if not isinstance(value, dict):
        raise ValueError(f"gemodel must be a table {{p, r, loss_bad, loss_good}}, got {value!r}")
    unknown = set(value) - {"p", "r", "loss_bad", "loss_good"}
    if unknown or not {"p", "r"} <= set(value):
        raise ValueError(f"gemodel needs p and r (and optional loss_bad, loss_good): {value!r}")
    return GeModel(**{k: _pct(f"gemodel.{k}", v) for k, v in value.items()})


def from_table(name: str, table: dict[str, Any]) -> Profile:
    """A profile from its TOML table (see profiles.toml for the keys)."""
    fields: dict[str, Any] = {}
    for key, value in table.items():
        if key == "description":
            fields[key] = str(value)
        elif key == "gemodel":
            fields[key] = _gemodel(value)
        elif key in _PCT:
            fields[key] = _pct(key, value)
        elif key in _NUMERIC:
            fields[key] = _num(key, value)
        else:
            raise ValueError(f"profile {name!r}: unknown key {key!r}")
    profile = Profile(name, **fields)
    if profile.loss_pct and profile.gemodel:
        raise ValueError(f"profile {name!r}: give loss_pct or gemodel, not both")
    if profile.reorder_pct and not profile.delay_ms:
        raise ValueError(f"profile {name!r}: reorder_pct needs delay_ms (as tc netem)")
    return profile


def load(path: Path = PROFILES_FILE) -> dict[str, Profile]:
    with path.open("rb") as f:
        data = tomllib.load(f)
    return {name: from_table(name, table) for name, table in data.items()}


def parse_inline(name: str, spec: str) -> Profile:
    """`delay=50,jitter=20,loss=5,rate=1000` or `gemodel=p:r[:loss_bad[:loss_good]]`."""
    table: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"bad profile item {item!r} (want key=value)")
        key = _ALIASES.get(key.strip(), key.strip())
        if key == "gemodel":
            parts = [float(x) for x in raw.split(":")]
            if not 2 <= len(parts) <= 4:
                raise ValueError(f"gemodel wants p:r[:loss_bad[:loss_good]], got {raw!r}")
            table[key] = dict(zip(("p", "r", "loss_bad", "loss_good"), parts, strict=False))
        else:
            try:
                table[key] = float(raw)
            except ValueError:
                raise ValueError(f"{key}: not a number: {raw!r}") from None
    return from_table(name, table)


def resolve(text: str, known: dict[str, Profile] | None = None) -> Profile:
    """A profile by name (`4g`), an inline spec (`delay=50,loss=5`), or both named
    (`mylink:delay=50,loss=5`)."""
    known = load() if known is None else known
    if text in known:
        return known[text]
    name, colon, spec = text.partition(":")
    if colon and "=" not in name:
        return replace(parse_inline(name, spec), description=spec)
    if "=" in text:
        return replace(parse_inline(text, text), description=text)
    raise ValueError(f"unknown profile {text!r}; known: {', '.join(known)}")


def resolve_list(text: str, known: dict[str, Profile] | None = None) -> list[Profile]:
    """Comma-separated names; inline specs go one per `--profiles` use with `name:spec`
    and `;` between items of a list (`clean;slow:delay=200,loss=1`)."""
    sep = ";" if ";" in text or "=" in text else ","
    return [resolve(t.strip(), known) for t in text.split(sep) if t.strip()]
