"""The vision transformer and the graph network: export equivalence at shapes other than the
example's, the whole train -> export -> publish run on digits, and the config the service reads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from service.tasks.graphs import GraphSpec, batch_graphs, image_to_graph
from training.classifiers import train_classifier as classify
from training.classifiers.classifier_card import classifier_table
from training.classifiers.train_classifier import GraphWithProbabilities, WithProbabilities
from training.models.gnn import GNN, GNNConfig
from training.models.vit import ViT, ViTConfig
from training.onnx_export import export_onnx, max_abs_difference

QUALITY_DOC = "docs/models.md"  # where the shipped models' quality tables are


def random_pictures(count: int, seed: int) -> np.ndarray:
    """Blobs of light strokes on black, (count, 28, 28) in [0, 1]."""
    rng = np.random.default_rng(seed)
    pictures = np.zeros((count, 28, 28), np.float32)
    for picture in pictures:
        top, left = rng.integers(2, 14, size=2)
        picture[top : top + rng.integers(6, 14), left : left + rng.integers(3, 14)] = rng.random()
    return pictures


def test_vit_export_matches_torch_at_other_batch_sizes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = WithProbabilities(ViT(ViTConfig(patch=7, dim=16, layers=2, heads=2))).eval()
    path = export_onnx(
        model,
        (torch.randn(2, 1, 28, 28),),
        tmp_path / "vit.onnx",
        ["image"],
        ["logits", "probabilities"],
        ({0: "batch"},),
    )
    for batch in (1, 5, 33):
        diff = max_abs_difference(model, path, {"image": torch.randn(batch, 1, 28, 28)})
        assert diff < 1e-5, f"batch {batch}: {diff}"


def test_gnn_export_has_dynamic_nodes_edges_and_graphs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    gnn = GNN(GNNConfig(hidden=16, layers=2))
    gnn.train()
    spec = GraphSpec()
    graphs = [image_to_graph(p, spec) for p in random_pictures(40, seed=1)]
    with torch.no_grad():  # non-trivial batch-norm statistics
        gnn(*(torch.from_numpy(v) for v in batch_graphs(graphs).values()))
    model = GraphWithProbabilities(gnn).eval()
    example = {k: torch.from_numpy(v) for k, v in batch_graphs(graphs[:2]).items()}
    nodes, edges = torch.export.Dim("nodes"), torch.export.Dim("edges")
    path = export_onnx(
        model,
        tuple(example.values()),
        tmp_path / "gnn.onnx",
        list(example),
        ["logits", "probabilities"],
        ({0: nodes}, {1: edges}, {0: nodes}),
    )
    for count in (1, 3, 40):
        inputs = {k: torch.from_numpy(v) for k, v in batch_graphs(graphs[:count]).items()}
        assert max_abs_difference(model, path, inputs) < 1e-5
        logits = ort.InferenceSession(str(path)).run(["logits"], batch_graphs(graphs[:count]))[0]
        assert logits.shape == (count, 10)
    # a graph's answer does not depend on the graphs batched with it
    alone = ort.InferenceSession(str(path)).run(["logits"], batch_graphs(graphs[5:6]))[0]
    together = ort.InferenceSession(str(path)).run(["logits"], batch_graphs(graphs[3:8]))[0]
    np.testing.assert_allclose(alone[0], together[2], atol=1e-5)


@pytest.fixture(scope="module")
def gnn_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gnn-digits trained for two epochs through the command line, beside a tiny cnn-digits."""
    models = tmp_path_factory.mktemp("models")
    common = ["--dataset", "digits", "--epochs", "2", "--models-dir", str(models)]
    common += ["--verify-images", "200", "--lr", "5e-3"]
    assert classify.main("train", "cnn", [*common, "--widths", "4,8", "--hidden", "16"]) == 0
    argv = [*common, "--hidden", "24", "--layers", "2", "--k", "6", "--threshold", "0.25"]
    assert classify.main("train", "gnn", argv) == 0
    return models / "gnn-digits"


def test_gnn_config_describes_graph_inputs_and_the_conversion(gnn_digits: Path) -> None:
    config = json.loads((gnn_digits / "config.json").read_text())
    assert config["task"] == "classification" and config["max_batch_size"] == 0
    assert [(i["name"], i["datatype"], i["dims"]) for i in config["inputs"]] == [
        ("x", "FP32", [-1, 3]),
        ("edge_index", "INT64", [2, -1]),
        ("batch", "INT64", [-1]),
    ]
    assert [o["dims"] for o in config["outputs"]] == [[-1, 10], [-1, 10]]
    assert config["graph"]["k"] == 6 and config["graph"]["threshold"] == 0.25
    assert GraphSpec.from_config(config["graph"]) == GraphSpec(threshold=0.25, k=6)
    pre = config["preprocessing"]
    assert (pre["mean"], pre["std"]) == (0.0, 1.0), "graphs are built from [0, 1] intensities"
    assert config["onnxruntime"] == {"intra_op_threads": 1}  # ScatterND (add) races on more


def test_gnn_card_compares_with_the_cnn(gnn_digits: Path) -> None:
    card = json.loads((gnn_digits / "1" / "card.json").read_text())
    assert card["export"]["max_abs_diff"] <= 1e-4
    comparison = card["comparison"]
    assert comparison["cnn"]["name"] == "cnn-digits"
    for side in (comparison["this"], comparison["cnn"]):
        assert side["parameters"] > 0 and 0 <= side["test_accuracy"] <= 1
        assert set(side["latency_ms"]) == {"1", "64"} and all(
            v > 0 for v in side["latency_ms"].values()
        )
    assert comparison["this"]["test_accuracy"] == card["metrics"]["test_accuracy"]
    markdown = (gnn_digits / "1" / "card.md").read_text()
    assert "Compared with the CNN" in markdown and "cnn-digits" in markdown
    assert "`cell=2 threshold=0.25 k=6 max_nodes=96 image_size=28`" in markdown


def test_evaluate_re_measures_the_gnn_through_the_conversion(gnn_digits: Path) -> None:
    argv = ["--dataset", "digits", "--models-dir", str(gnn_digits.parent)]
    assert classify.main("evaluate", "gnn", argv) == 0
    card_path = gnn_digits / "1" / "card.json"
    before = json.loads(card_path.read_text())
    assert classify.main("evaluate", "gnn", [*argv, "--retime", "true"]) == 0
    after = json.loads(card_path.read_text())
    assert "in turns" in after["comparison"]["measured_with"]
    assert after["comparison"]["cnn"]["name"] == "cnn-digits"
    assert {k: v for k, v in after.items() if k != "comparison"} == {
        k: v for k, v in before.items() if k != "comparison"
    }, "only the comparison is rewritten"


def test_vit_trains_and_publishes(tmp_path: Path) -> None:
    argv = ["--dataset", "digits", "--epochs", "1", "--models-dir", str(tmp_path)]
    argv += ["--dim", "16", "--layers", "1", "--heads", "2", "--patch", "7"]
    argv += ["--verify-images", "100"]
    assert classify.main("train", "vit", argv) == 0
    card = json.loads((tmp_path / "vit-digits" / "1" / "card.json").read_text())
    assert card["family"] == "vit" and card["training"]["config"]["model"]["patch"] == 7
    assert card["comparison"]["cnn"] is None  # no cnn-digits in this repository
    config = json.loads((tmp_path / "vit-digits" / "config.json").read_text())
    assert config["inputs"] == [{"name": "image", "datatype": "FP32", "dims": [1, 28, 28]}]


def test_options_of_the_other_kind_are_rejected() -> None:
    assert classify.main("train", "cnn", ["--dataset", "digits", "--k", "3"]) == 2
    assert classify.main("train", "gnn", ["--dataset", "digits", "--shift", "1"]) == 2


def test_docs_classifier_tables_match_the_cards() -> None:
    root = Path(__file__).resolve().parents[2]
    text = (root / QUALITY_DOC).read_text()
    block = re.search(r"<!-- classifiers:start -->\n(.*?)\n<!-- classifiers:end -->", text, re.S)
    assert block, f"{QUALITY_DOC} lost its classifier-table markers"
    assert block.group(1).strip() == classifier_table(root / "models").strip(), (
        f"{QUALITY_DOC} classifier tables are stale: regenerate with python -m training.classifiers.classifier_card"
    )
