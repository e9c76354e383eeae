"""A model's config.json may pin its sessions' intra-op threads (`onnxruntime` section): the GNN
does, since onnxruntime's ScatterND (add) races over duplicate indices on several threads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.onnx_builders import write_classifier

from service.errors import ModelLoadError
from service.metrics import Metrics
from service.registry import Registry
from service.repository import Repository
from service.settings import Settings

MODELS = Path(__file__).resolve().parent.parent / "models"


def load(root: Path, section: object) -> Registry:
    model_dir = write_classifier(root, "pinned")
    write_classifier(root, "free")
    config = json.loads((model_dir / "config.json").read_text())
    config["onnxruntime"] = section
    (model_dir / "config.json").write_text(json.dumps(config))
    registry = Registry(Repository(root), Settings(models_dir=root, intra_op_threads=2), Metrics())
    registry.load("free")
    registry.load("pinned")
    return registry


def threads(registry: Registry, name: str) -> int:
    session = registry.get(name, None).primary.session
    return int(session.get_session_options().intra_op_num_threads)


def test_config_pins_intra_op_threads_for_that_model_only(tmp_path: Path) -> None:
    registry = load(tmp_path, {"intra_op_threads": 1})
    assert threads(registry, "pinned") == 1
    assert threads(registry, "free") == 2


@pytest.mark.parametrize("bad", [{"intra_op_threads": "one"}, {"intra_op_threads": -1},
                                 {"intra_op_threads": True}])  # fmt: skip
def test_a_bad_pin_is_a_load_error_naming_the_field(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ModelLoadError, match=r"onnxruntime\.intra_op_threads"):
        load(tmp_path, bad)


def test_the_shipped_gnn_is_pinned_to_one_thread() -> None:
    config = json.loads((MODELS / "gnn-mnist" / "config.json").read_text())
    assert config["onnxruntime"] == {"intra_op_threads": 1}
