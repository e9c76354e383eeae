"""The soak script end to end for a few seconds on a tiny model: the report has every figure the
docs/observability.md quotes, and nothing failed. No speed is asserted: this machine is shared."""

from __future__ import annotations

from pathlib import Path

import orjson
from helpers.onnx_builders import write_classifier

from bench import soak


def test_soak_reports_every_figure(tmp_path: Path) -> None:
    write_classifier(tmp_path / "models", "linear-test")
    out = tmp_path / "soak.json"
    argv = ["--duration", "2", "--capacity-seconds", "1", "--after-seconds", "1"]
    argv += ["--model", "linear-test", "--batch", "4", "--connections", "16"]
    argv += ["--models-dir", str(tmp_path / "models"), "--out", str(out)]
    assert soak.main(argv) == 0  # 0: no request failed and every accepted answer was right
    report = orjson.loads(out.read_bytes())
    for phase in ("capacity", "overload", "after"):
        figures = report[phase]
        assert figures["failed"] == 0, figures["failure_reasons"]
        assert figures["accepted"] > 0
        assert figures["accepted"] + figures["shed"] == figures["requests"]
        assert figures["accepted_p99_ms"] >= figures["accepted_p50_ms"] > 0
    overload = report["overload"]
    assert overload["shed_queue_full"] + overload["shed_deadline"] == overload["shed"]
    assert report["overload"]["offered_rps"] > report["capacity"]["accepted_rps"]
    # a loaded machine may give the prober no probe inside a 2-second window: no count asserted
    assert report["health"]["errors"] == 0 and "p99_ms" in report["health"]
    assert report["rss"]["samples"] and "slope_mb_per_min" in report["rss"]
    assert report["server_exit_code"] == 0
