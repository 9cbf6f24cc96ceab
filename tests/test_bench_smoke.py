"""The receive-path benchmark runs, and its headline holds: both paths measured in one run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_quick_bench

pytestmark = pytest.mark.e2e


def test_audio_path_quick(tmp_path: Path) -> None:
    data, table = run_quick_bench("audio_path", tmp_path)
    rows: dict[tuple[str, str], dict[str, Any]] = {(r["profile"], r["path"]): r for r in data}
    for profile in ("clean", "loss 5%"):
        for path in ("ringback", "aiortc"):
            r = rows.get((profile, path))
            assert r is not None, f"no {profile}/{path} row:\n{table}"
            assert 0 < r["frames_delivered_pct"] <= 100, table
            assert 0 < r["playout_delay_ms_p50"] <= r["playout_delay_ms_p99"] < 1000, table
            assert 0 <= r["concealed_pct"] <= 100 and 0 <= r["fec_recovered_pct"] <= 100, table
            assert r["pesq_wb"] is None or 1.0 <= r["pesq_wb"] <= 4.7, table
            assert r["stoi"] is None or 0.0 <= r["stoi"] <= 1.0, table
            assert 0.0 <= r["wer"] <= 2.0, table
        assert rows[(profile, "aiortc")]["concealed_pct"] == 0, table

    clean, lossy = rows[("clean", "ringback")], rows[("loss 5%", "ringback")]
    assert rows[("loss 5%", "aiortc")]["packets_dropped"] > 0, table
    assert lossy["packets_dropped"] > 0, table
    assert clean["frames_delivered_pct"] >= 99 and clean["pesq_wb"] is not None, table
    # The headline, ringback vs aiortc in the same run:
    assert lossy["frames_delivered_pct"] >= 99, table
    assert lossy["pesq_wb"] is not None, table
    assert lossy["pesq_wb"] > (rows[("loss 5%", "aiortc")]["pesq_wb"] or 0.0), table
    assert clean["playout_delay_ms_p50"] < rows[("clean", "aiortc")]["playout_delay_ms_p50"], table


def test_tool_overhead_quick(tmp_path: Path) -> None:
    """Both variants measured in one call; the tool turns really ran the 50 ms tool."""
    data, table = run_quick_bench("tool_overhead", tmp_path, timeout_s=300)
    tool, plain = data["variants"]["with_tool"], data["variants"]["without_tool"]
    assert not data["rejected"], table
    assert tool["summary"]["answered"] == plain["summary"]["answered"] == 3, table
    # Two requests per tool turn, one per plain turn (speculation may ask again, never less).
    assert data["model_requests"] >= 2 * 4 + 4, table
    assert 50 <= tool["server"]["tool_ms_p50"] < 1000, table
    assert plain["server"]["tool_ms_p50"] is None, table
    assert all(t["reply"] == data["answer"] for v in (tool, plain) for t in v["turns"]), table
    diff = data["difference"]
    assert diff["v2v_ms_p50"] is not None and diff["own_overhead_ms_p50"] is not None, table
    # Not the 150 ms target (a loaded CI machine, 3 turns): the tool turn still answers.
    assert -1000 < diff["v2v_ms_p50"] < 1500, table
