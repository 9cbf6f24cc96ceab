"""Patch points into aiortc/aioice private symbols, checked at start-up.

aiortc is pinned (pyproject.toml); if an upgrade moves a symbol we rely on, `check()` fails
with a message naming it instead of the server misbehaving later.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

PINNED_AIORTC = "1.16.0"

# (module, attribute) pairs the project patches or relies on.
PATCH_POINTS: tuple[tuple[str, str], ...] = (("aioice.ice", "get_host_addresses"),)


class PatchError(RuntimeError):
    pass


def check() -> None:
    import aiortc

    if aiortc.__version__ != PINNED_AIORTC:
        raise PatchError(
            f"aiortc {aiortc.__version__} is installed but ringback is pinned to {PINNED_AIORTC}; "
            "its private symbols are patched, reinstall with `make clean run`"
        )
    for module_name, attr in PATCH_POINTS:
        module = importlib.import_module(module_name)
        if not callable(getattr(module, attr, None)):
            raise PatchError(f"{module_name}.{attr} is missing: the pinned aiortc/aioice changed")


def pin_host_addresses(addresses: Sequence[str]) -> None:
    """Make ICE gather host candidates only on these addresses (aioice never offers loopback)."""
    import aioice.ice

    fixed = list(addresses)

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in fixed if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = get_host_addresses
