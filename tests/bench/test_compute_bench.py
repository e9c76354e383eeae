"""`python -m bench.compute --quick` end to end: the shipped diffusion-mnist and transformer-austen
in process and behind a real service on loopback, batching on, auto and off. Checks the structure of
what it writes, never its speed (this machine is shared)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.compute import main


def test_quick_run_writes_both_works_in_both_modes(tmp_path: Path) -> None:
    assert main(["--quick", "--generator", "python", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "compute.json").read_text())
    assert doc["quick"] is True

    rows = {(r["work"], r["batching"], r["concurrency"]): r for r in doc["service"]}
    assert set(rows) == {
        (work, mode, c)
        for work in ("diffusion", "transformer")
        for mode in ("on", "auto", "off")
        for c in (1, 4)
    }
    for row in rows.values():
        assert row["requests"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
        assert row["per_s"] > 0 and row["ceiling_per_s"] > 0 and row["two_threads_per_s"] > 0
        assert row["ratio"] == row["per_s"] / row["ceiling_per_s"]
        assert row["server_cores"] > 0
    # batching on: the service's own metrics saw its calls; off: no step batching at all
    assert rows[("diffusion", "on", 4)]["mean_batch"] >= 1
    assert rows[("diffusion", "off", 4)]["mean_batch"] is None
    assert rows[("transformer", "off", 4)]["mean_batch"] == 1

    sweep = doc["transformer_inprocess"]["sweep"]
    assert set(sweep) == {"1", "2", "4", "8", "16", "32", "64"}
    best = doc["transformer_inprocess"]["best_batch"]
    assert doc["transformer_inprocess"]["one_thread"] == max(sweep.values()) == sweep[str(best)]
    assert set(doc["diffusion_inprocess"]) == {"1", "4"}
    assert doc["target"]["concurrency"] == 4
    assert set(doc["target"]["ratios"]) == {"diffusion", "transformer"}

    report = (tmp_path / "compute.md").read_text()
    assert "| diffusion | on | 4 |" in report and "| transformer | off | 1 |" in report
    assert "Target (issue #5)" in report
