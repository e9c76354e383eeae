"""The committed generators, run exactly as the service runs them, still do what their cards say."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import Settings
from service.tasks.imagegen import generate
from training.evaluate_generation import (
    SAMPLE_SEED,
    ClassifierProbe,
    balanced_labels,
    class_consistency,
    latest_version,
    load_sessions,
    readme_quality_table,
)

MODELS = Path(__file__).resolve().parents[2] / "models"
GENERATORS = sorted(
    path.parent.name
    for path in MODELS.glob("*/config.json")
    if json.loads(path.read_text()).get("task") == "image-generation"
)
CHECK_SAMPLES = 200  # per model: a few seconds even for the U-Net at 10 steps
FAST_SETTING: dict[str, Any] = {
    "sampler": "ddim",
    "steps": 10,
}  # diffusion kinds; decoders have no options


def load(name: str) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    version = latest_version(MODELS, name)
    config = json.loads((version.parent / "config.json").read_text())
    card = json.loads((version / "card.json").read_text())
    return version, config, card


def card_row(config: dict[str, Any], card: dict[str, Any], setting: dict[str, Any]) -> dict:
    """The card's measurement of `setting` at the model's default guidance."""
    generation = config["generation"]
    wanted = {**setting}
    if "defaults" in generation:
        wanted["guidance"] = generation["defaults"]["guidance"]
    for row in card["metrics"]["settings"]:
        if all(row.get(key) == value for key, value in wanted.items()):
            return dict(row)
    raise AssertionError(f"the card of {card['name']} has no row for {wanted}")


@pytest.fixture(scope="module")
def probe() -> ClassifierProbe:
    return ClassifierProbe(latest_version(MODELS, "cnn-mnist"))


@pytest.mark.parametrize("name", GENERATORS)
def test_version_is_complete_and_checksummed(name: str) -> None:
    version, config, card = load(name)
    assert config["task"] == "image-generation" and config["generation"]["kind"]
    for file in ["model.onnx", *config["graphs"].values()]:
        digest = hashlib.sha256((version / file).read_bytes()).hexdigest()
        assert card["files"][file]["sha256"] == digest, f"{file} differs from its card"
        assert (version / file).stat().st_size < 8 * 2**20, f"{file} is larger than a few MB"
    assert (version / "samples.png").is_file() and (version / "card.md").is_file()
    metrics = card["metrics"]
    assert metrics["settings"] and metrics["fcd_floor_test_halves"] > 0
    assert all(row["samples"] >= 1000 for row in metrics["settings"][:1]), "headline row too small"


@pytest.mark.parametrize("name", GENERATORS)
def test_class_consistency_matches_the_card(name: str, probe: ClassifierProbe) -> None:
    version, config, card = load(name)
    setting = FAST_SETTING if "defaults" in config["generation"] else {}
    expected = float(card_row(config, card, setting)["class_consistency"])
    labels = balanced_labels(CHECK_SAMPLES, int(config["generation"]["num_classes"]))
    images = generate(
        config, load_sessions(version, config), labels.tolist(), seed=SAMPLE_SEED, **setting
    )
    measured = class_consistency(probe(images)[1], labels)
    # three binomial standard deviations at this sample count, plus a little for the card's own
    tolerance = 3 * math.sqrt(expected * (1 - expected) / CHECK_SAMPLES) + 0.01
    assert abs(measured - expected) <= tolerance, f"{name}: {measured:.3f} vs card {expected:.3f}"


def test_mnist_diffusion_meets_the_issue_bar() -> None:
    if "diffusion-mnist" not in GENERATORS:
        pytest.skip("diffusion-mnist is not shipped")
    _, config, card = load("diffusion-mnist")
    defaults = config["generation"]["defaults"]
    row = card_row(config, card, {"sampler": defaults["sampler"], "steps": defaults["steps"]})
    assert row["samples"] >= 2000 and row["class_consistency"] >= 0.9


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The real app over copies of the shipped generators (the repository refuses symlinks that
    lead outside it, and the other shipped models would only slow the start)."""
    root = tmp_path_factory.mktemp("shipped")
    for name in GENERATORS:
        shutil.copytree(MODELS / name, root / name)
    settings = Settings(models_dir=root, access_log=False)
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.mark.parametrize("name", GENERATORS)
def test_service_is_deterministic_by_seed(name: str, service: TestClient) -> None:
    body = {"model": name, "n": 2, "label": 7, "seed": 3, "response_format": "b64_json"}
    if "defaults" in load(name)[1]["generation"]:
        body["steps"] = 5  # keeps the diffusion models quick; decoders refuse steps
    first, again, other = (
        service.post("/v1/images/generations", json=request)
        for request in (body, body, {**body, "seed": 4})
    )
    assert first.status_code == 200, first.text

    def images(response: Any) -> list[bytes]:
        return [base64.b64decode(item["b64_json"]) for item in response.json()["data"]]

    assert images(first) == images(again)
    assert images(first) != images(other)
    picture = Image.open(io.BytesIO(images(first)[0]))
    assert picture.format == "PNG" and picture.size == (28, 28)


def test_readme_quality_table_is_the_cards() -> None:
    readme = (MODELS.parent / "README.md").read_text()
    block = re.search(r"<!-- generators:start -->\n(.*?)\n<!-- generators:end -->", readme, re.S)
    assert block, "README lost its generators markers"
    assert block.group(1).strip() == readme_quality_table(MODELS).strip(), (
        "README quality table is stale: regenerate it with python -c 'from pathlib import Path; "
        "from training.evaluate_generation import readme_quality_table; "
        'print(readme_quality_table(Path("models")))\''
    )
