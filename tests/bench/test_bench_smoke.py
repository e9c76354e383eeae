"""`python -m bench` end to end, tiny: real servers (ours and the naive handler) on loopback, the
Python load generator, a fraction of a second per point. Checks the structure of what it writes;
never its speed (this machine is shared)."""

from __future__ import annotations

import json
from pathlib import Path

from helpers.onnx_builders import write_classifier

from bench.__main__ import main


def test_smoke_run_writes_results_report_and_plot(tmp_path: Path) -> None:
    write_classifier(tmp_path / "models", "linear-test")
    out = tmp_path / "out"
    argv = ["--smoke", "--generator", "python", "--duration", "0.3", "--inprocess", "0.3"]
    argv += ["--concurrency", "2", "--model", "linear-test"]
    argv += ["--models-dir", str(tmp_path / "models"), "--out", str(out)]
    assert main(argv) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["skipped"] == {}, doc["skipped"]  # both servers started and answered correctly
    rows = {(r["system"], r["workload"]): r for r in doc["http"]}
    assert set(rows) == {
        ("seedserve", "v2-json"),
        ("seedserve", "v2-binary"),
        ("seedserve", "classify-png"),
        ("seedserve", "v2-json-b16"),
        ("seedserve", "v2-binary-b16"),
        ("seedserve", "grpc"),  # h2load (make example-deps) sends raw-tensor ModelInfer calls
        ("seedserve", "grpc-b16"),
        ("naive-fastapi", "v2-json"),
    }
    for (_, workload), row in rows.items():
        generator = "h2load" if workload.startswith("grpc") else "python"
        assert row["concurrency"] == 2 and row["generator"] == generator
        assert row["requests"] > 0 and row["errors"] == 0
        assert row["rps"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
        assert row["server_cpu_s"] >= 0 and row["rss_mb"] > 10
    inprocess = doc["inprocess"]
    assert inprocess["ort_batch1"]["calls"] > 0
    assert inprocess["ort_best"]["items_per_s"] >= inprocess["ort_batch1"]["items_per_s"]
    assert inprocess["ort_json_batch1"]["calls"] > 0
    assert inprocess["torch_note"]  # this test model has no torch rebuild: said, not hidden
    report = (out / "report.md").read_text()
    for heading in ("## In process (the ceiling)", "## At concurrency 2", "## Targets (issue #5)"):
        assert heading in report
    assert "| seedserve | v2-binary |" in report and "| seedserve | grpc |" in report
    assert "| seedserve | v2-binary |" in report and "| naive-fastapi | v2-json |" in report
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"
