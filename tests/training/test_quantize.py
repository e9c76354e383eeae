"""`python -m training quantize` on a small real classifier over the real MNIST test split: the
int8 file is written only when the measured accuracy drop is under the limit, the card records
the measurements either way, and the service serves the int8 file when asked to."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.onnx_builders import write_classifier

from service.runtime import Graph
from service.settings import Settings
from training.classifiers.quantize import INT8_FILE, main
from training.data.images import DATA_DIR, KNOWN_DATASETS

pytestmark = pytest.mark.skipif(
    not (DATA_DIR / KNOWN_DATASETS["mnist"].folder).is_dir(), reason="needs `make data`"
)


def _mnist_classifier(root: Path) -> Path:
    model_dir = write_classifier(root, "linear-mnist")
    config = json.loads((model_dir / "config.json").read_text())
    config["dataset"] = "mnist"
    (model_dir / "config.json").write_text(json.dumps(config))
    (model_dir / "1" / "card.md").write_text("# linear-mnist\n")
    return model_dir / "1"


def test_kept_when_the_drop_is_small(tmp_path: Path) -> None:
    version = _mnist_classifier(tmp_path / "models")
    # a random linear model scores ~10% either way: the drop is far below 50 points; it is too
    # small to be faster in int8, so the speed condition is off
    argv = ["linear-mnist", "--models-dir", str(tmp_path / "models"), "--max-drop", "50"]
    assert main([*argv, "--min-speedup", "0"]) == 0
    card = json.loads((version / "card.json").read_text())
    entry = card["int8"]
    assert entry["kept"] is True
    assert 0 <= entry["test_accuracy"] <= 1 and 0 <= entry["fp32_test_accuracy"] <= 1
    drop = 100 * (entry["fp32_test_accuracy"] - entry["test_accuracy"])
    assert entry["accuracy_drop_points"] == pytest.approx(drop, abs=1e-3)
    assert entry["latency_ms_batch64"]["int8"] > 0 and entry["bytes"]["int8"] > 0
    assert card["files"][INT8_FILE]["bytes"] == (version / INT8_FILE).stat().st_size
    assert "## int8 quantisation" in (version / "card.md").read_text()
    graph = Graph(version / "model.onnx", Settings(int8=True))
    assert graph.path.name == INT8_FILE
    x = np.zeros((2, 1, 28, 28), np.float32)
    assert graph.run({"image": x})[1].sum(axis=1) == pytest.approx([1.0, 1.0], abs=1e-4)


def test_refused_when_any_drop_is_too_much(tmp_path: Path) -> None:
    version = _mnist_classifier(tmp_path / "models")
    (version / INT8_FILE).write_bytes(b"stale")
    main(["linear-mnist", "--models-dir", str(tmp_path / "models"), "--max-drop", "-100"])
    card = json.loads((version / "card.json").read_text())
    assert card["int8"]["kept"] is False
    assert not (version / INT8_FILE).exists() and INT8_FILE not in card.get("files", {})
    assert "not shipped" in (version / "card.md").read_text().lower()
