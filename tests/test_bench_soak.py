"""`python -m bench.soak --quick` runs as a user runs it and finds no leak."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_quick_bench

pytestmark = pytest.mark.e2e


def test_quick_soak_leaks_nothing(tmp_path: Path) -> None:
    result, printed = run_quick_bench("soak", tmp_path, timeout_s=300)
    assert "wave 2/2" in printed
    assert result["calls_answered"] == result["calls_placed"] == 4, result
    assert result["sessions_left"] == 0, result
    assert 0 < result["vanished_freed_s_max"] <= 10, result
    assert result["after"]["tasks"] == result["baseline"]["tasks"], result
    assert result["fds_leaked"] <= 2, result
    # asyncio's default executor starts its threads lazily and keeps them: a few may appear.
    assert result["threads_leaked"] <= 4, result
    assert result["rss_drift_mb"] < 30, result
