"""`python -m bench.generation --quick` end to end: the shipped transformer-austen and
diffusion-mnist in process and behind a real service on loopback. Checks the structure of what
it writes, never its speed (this machine is shared)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.generation import main


def test_quick_run_writes_cache_and_service_tables(tmp_path: Path) -> None:
    assert main(["--quick", "--generator", "python", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "generation.json").read_text())
    assert doc["quick"] is True

    (cache,) = doc["cache"]
    assert cache["model"] == "transformer-austen" and cache["max_length"] == 128
    # 128 and 256 do not fit the graph's 128 positions: measured at 127 once, 256 said unmeasured
    assert [r["prefix"] for r in cache["rows"]] == [32, 127]
    assert cache["not_measured"] == [256]
    for row in cache["rows"]:
        assert row["cached_ms"] > 0 and row["recompute_ms"] > 0
        assert row["speedup"] == row["recompute_ms"] / row["cached_ms"]
    assert cache["flatness_span"] == [32, 127] and cache["flatness"] > 0

    rows = {(r["work"], r["concurrency"]): r for r in doc["service"]}
    assert set(rows) == {
        ("completions", 1),
        ("completions", 8),
        ("next-word", 1),
        ("next-word", 8),
        ("images-ddim10", 1),
        ("images-ddim10", 4),
    }
    for row in rows.values():
        assert row["requests"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
        assert row["served_per_s"] > 0 and row["inprocess_per_s"] > 0
        assert row["ratio"] == row["served_per_s"] / row["inprocess_per_s"]
    assert rows[("completions", 1)]["unit"] == "tokens"
    assert rows[("images-ddim10", 4)]["unit"] == "images"

    report = (tmp_path / "generation.md").read_text()
    assert "## Cached decoding vs recomputing the prefix" in report
    assert "| transformer-austen | 256 | n/a: the graph has 128 positions |" in report
    assert "| completions | 8 |" in report and "| images-ddim10 | 4 |" in report
