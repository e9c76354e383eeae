"""Each generator family trains for a few steps on scikit-learn's digits, exports ONNX verified
against torch into a temporary repository, and the service's sampler runs the result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from service.tasks.imagegen import generate, reconstruct
from training.generators.generator_commands import main
from training.generators.generator_eval import load_sessions
from training.onnx_export import ExportMismatch
from training.publish import Graph

pytestmark = pytest.mark.slow  # a few seconds each: one dynamo export per graph

TINY = [
    "--dataset",
    "digits",
    "--train-subset",
    "256",
    "--iterations",
    "3",
    "--batch-size",
    "16",
    "--eval-samples",
    "0",
]


def train(family: str, tmp: Path, *extra: str) -> Path:
    argv = [*TINY, "--models-dir", str(tmp / "models"), "--runs-dir", str(tmp / "runs"), *extra]
    assert main("train", family, argv) == 0
    version = tmp / "models" / f"{family}-digits" / "1"
    assert version.is_dir()
    return version


def check_version(version: Path) -> tuple[dict, dict]:
    config = json.loads((version.parent / "config.json").read_text())
    card = json.loads((version / "card.json").read_text())
    assert config["task"] == "image-generation"
    for graph in ["model.onnx", *config["graphs"].values()]:
        assert card["files"][graph]["bytes"] > 0
    for diff in card["export"]["max_abs_diff"].values():
        assert diff <= card["export"]["tolerance"]
    assert (version / "curves.png").is_file() and (version / "card.md").is_file()
    return config, card


@pytest.fixture(scope="module")
def vae_version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train("vae", tmp_path_factory.mktemp("vae"))


def test_vae_trains_exports_and_reconstructs(vae_version: Path) -> None:
    config, _ = check_version(vae_version)
    sessions = load_sessions(vae_version, config)
    images = generate(config, sessions, [0, 1, 2], seed=0)
    assert images.shape == (3, 28, 28) and images.dtype == np.uint8
    assert reconstruct(config, sessions, images[0], 0).shape == (28, 28)


def test_a_vae_with_a_kl_weight_below_one_ships_a_class_prior(tmp_path: Path) -> None:
    """Its latents are sampled from a Gaussian per class fitted to its encoder (prior.onnx,
    verified against torch like every graph), and the sampler goes through it."""
    version = train("vae", tmp_path, "--kl-weight", "0.5", "--blocks", "1")
    config, card = check_version(version)
    assert config["graphs"]["prior"] == "prior.onnx" and "prior" in config["generation"]
    assert "prior.onnx" in card["export"]["max_abs_diff"]
    sessions = load_sessions(version, config)
    labels = [0, 1, 2]
    noise = np.random.default_rng(0).standard_normal((3, 16), dtype=np.float32)
    (latents,) = sessions["prior"].run(None, {"noise": noise, "label": np.array(labels)})
    (decoded,) = sessions["decoder"].run(None, {"latent": latents, "label": np.array(labels)})
    expected = np.rint(np.clip(decoded[:, 0], 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(generate(config, sessions, labels, seed=0), expected)


def test_exporting_the_checkpoint_again_gives_the_same_graphs(
    vae_version: Path, tmp_path: Path
) -> None:
    """`python -m training export` re-ships the last checkpoint without training: the pipeline
    writes the same graphs, byte for byte, and the same config.json."""
    runs = vae_version.parents[2] / "runs"
    argv = [*TINY, "--models-dir", str(tmp_path), "--runs-dir", str(runs)]
    assert main("export", "vae", argv) == 0
    again = tmp_path / "vae-digits" / "1"
    for graph in ("model.onnx", "decoder.onnx", "encoder.onnx"):
        assert (again / graph).read_bytes() == (vae_version / graph).read_bytes(), graph
    config = (vae_version.parent / "config.json").read_text()
    assert (again.parent / "config.json").read_text() == config


def test_gan_trains_and_exports(tmp_path: Path) -> None:
    judge = Path(__file__).resolve().parents[2] / "models" / "cnn-mnist" / "1"  # digits: no cnn
    version = train(
        "gan", tmp_path, "--lr-decay", "true", "--monitor-every", "2", "--classifier", str(judge)
    )
    config, card = check_version(version)
    assert generate(config, load_sessions(version, config), 4, n=2, seed=0).shape == (2, 28, 28)
    monitor = card["training"]["monitor"]  # one reading, at iteration 2 of 3
    assert monitor["iterations"] == [2] and monitor["fcd_train"][0] > 0
    assert 0.0 <= monitor["class_consistency"][0] <= 1.0


@pytest.mark.parametrize(
    "extra",
    [("--prediction", "epsilon", "--attention-heads", "0"), ("--prediction", "v")],
    ids=["epsilon", "v"],
)
def test_diffusion_trains_and_exports(tmp_path: Path, extra: tuple[str, ...]) -> None:
    argv = ("--channels", "16,16,16", "--groups", "4", "--attention-heads", "2", *extra)
    version = train("diffusion", tmp_path, *argv)
    config, card = check_version(version)
    assert config["generation"]["prediction"] == "epsilon", "the graph outputs eps either way"
    assert card["training"]["config"]["prediction"] == extra[1]
    sessions = load_sessions(version, config)
    for sampler in ("ddim", "ddpm"):
        images = generate(config, sessions, [3, 4], seed=0, steps=3, sampler=sampler)
        assert images.shape == (2, 28, 28)


def test_latent_diffusion_trains_on_the_vae(tmp_path: Path, vae_version: Path) -> None:
    version = train(
        "latent-diffusion", tmp_path, "--vae", str(vae_version), "--width", "32", "--depth", "1"
    )
    config, _ = check_version(version)
    assert config["graphs"] == {"decoder": "decoder.onnx"}
    assert (version / "decoder.onnx").read_bytes() == (vae_version / "decoder.onnx").read_bytes()
    images = generate(
        config, load_sessions(version, config), [5, 6], seed=0, steps=4, sampler="ddim"
    )
    assert images.shape == (2, 28, 28)


def test_export_refuses_a_graph_that_disagrees_with_torch(tmp_path: Path) -> None:
    module = torch.nn.Linear(3, 2)
    check = {"x": torch.randn(5, 3)}
    with pytest.raises(ExportMismatch):  # no difference can be below a negative tolerance
        Graph("m.onnx", module, {"x": check["x"][:2]}, ["y"], check).export(tmp_path, 18, -1.0)
