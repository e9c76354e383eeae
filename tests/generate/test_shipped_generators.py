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
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.repository import GENERATOR_SECTIONS
from service.settings import Settings
from service.tasks.imagegen import generate
from training.data.images import DatasetMissing, load_image_data
from training.generators.generation_config import (
    decoder_generation,
    latent_diffusion_generation,
    pixel_diffusion_generation,
)
from training.generators.generator_eval import (
    SAMPLE_SEED,
    ClassifierProbe,
    balanced_labels,
    class_consistency,
    frechet_distance,
    generator_table,
    latest_version,
    load_sessions,
)

MODELS = Path(__file__).resolve().parents[2] / "models"
QUALITY_DOC = MODELS.parent / "docs" / "models.md"  # holds the generators tables
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
    version = latest_version(MODELS / name)
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


@cache
def judge(dataset: str) -> ClassifierProbe:
    """The classifier that scores a dataset's generators, as in their cards: cnn-<dataset>."""
    return ClassifierProbe(latest_version(MODELS / f"cnn-{dataset}"))


@cache
def reference_features(dataset: str) -> np.ndarray:
    """The judge's features of the test set: the reference of every FCD."""
    try:
        images = load_image_data(dataset).test_images
    except DatasetMissing:
        pytest.skip(f"{dataset} is not in data/ (make data)")
    return judge(dataset)(images)[0]


@pytest.mark.parametrize("name", GENERATORS)
def test_every_version_keeps_its_own_generation_section(name: str) -> None:
    """config.json's section is the latest version's; each version folder keeps the one it was
    published with (an older version served beside the latest samples as it was trained to)."""
    latest, config, _ = load(name)
    for version in sorted(p for p in latest.parent.iterdir() if p.is_dir()):
        section = json.loads((version / "generation.json").read_text())
        assert section["kind"] == config["generation"]["kind"], version
        for name in GENERATOR_SECTIONS:
            own = json.loads((version / f"{name}.json").read_text())
            if version == latest:
                assert own == config.get(name, {}), (version, name)


def test_older_versions_sample_with_their_own_section(tmp_path: Path) -> None:
    """diffusion-mnist version 1 was published with guidance 3, version 2 with 1.25: served
    together, each generates with its own default; without its generation.json, version 1
    would take config.json's (version 2's)."""
    root = tmp_path / "models"
    shutil.copytree(MODELS / "diffusion-mnist", root / "diffusion-mnist")
    settings = Settings(models_dir=root, load_versions=2, access_log=False)
    query = "label=3&seed=5&steps=4"

    def served() -> tuple[dict[int, float], bytes]:
        with TestClient(create_app(settings)) as client:
            registry = client.app.state.registry
            guidance = {
                v: registry.get("diffusion-mnist", str(v)).generation["defaults"]["guidance"]
                for v in (1, 2)
            }
            url = f"/v1/models/diffusion-mnist/generate-image?{query}&version=1"
            response = client.get(url)
            assert response.status_code == 200, response.text
            return guidance, response.content

    guidance, own = served()
    assert guidance == {1: 3.0, 2: 1.25}
    (root / "diffusion-mnist" / "1" / "generation.json").unlink()
    guidance, borrowed = served()
    assert guidance == {1: 1.25, 2: 1.25}
    assert own != borrowed  # the default guidance changes the picture


def test_versions_with_other_latents_and_graphs_serve_together(tmp_path: Path) -> None:
    """vae-fashion-mnist version 3 has a 32-wide latent and a prior graph, versions 1 and 2 a
    16-wide latent and none: each loads with its own inputs, graphs and generation section."""
    root = tmp_path / "models"
    shutil.copytree(MODELS / "vae-fashion-mnist", root / "vae-fashion-mnist")
    settings = Settings(models_dir=root, load_versions=3, access_log=False)
    with TestClient(create_app(settings)) as client:
        registry = client.app.state.registry
        for version, width, graphs in ((1, 16, set()), (2, 16, set()), (3, 32, {"prior"})):
            model = registry.get("vae-fashion-mnist", str(version))
            assert tuple(model.config.inputs[0].dims) == (width,)
            assert set(model.graphs) - {"model", "decoder", "encoder"} == graphs
            url = f"/v1/models/vae-fashion-mnist/generate-image?label=4&seed=1&version={version}"
            assert client.get(url).status_code == 200


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
def test_class_consistency_matches_the_card(name: str) -> None:
    version, config, card = load(name)
    probe = judge(config["dataset"])
    assert card["metrics"]["classifier"]["name"] == probe.name, "the card's judge is cnn-<dataset>"
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
    assert row["samples"] >= 2000 and row["class_consistency"] >= 0.99


DIFFUSION_FCD_SAMPLES = 500  # ~20 s for the U-Net at 10 steps with guidance (two rows per image)
# the spread of FCD over draws of 500 real training images was 1.3 (8 draws); a sample of the
# generator's own spreads alike, and a stale card or a broken sampler moves it far more
DIFFUSION_FCD_MARGIN = 3.0


def test_mnist_diffusion_fcd_holds_on_fewer_samples() -> None:
    """The card's DDIM 10-step row (default guidance, 2,000 samples) re-measured on 500 samples
    drawn the card's way. FCD grows as samples shrink, so the allowance is what it grows by for
    real training images scored alike at the same two counts, plus DIFFUSION_FCD_MARGIN."""
    if "diffusion-mnist" not in GENERATORS:
        pytest.skip("diffusion-mnist is not shipped")
    version, config, card = load("diffusion-mnist")
    row = card_row(config, card, FAST_SETTING)
    reference, probe = reference_features("mnist"), judge("mnist")
    labels = balanced_labels(DIFFUSION_FCD_SAMPLES, int(config["generation"]["num_classes"]))
    images = generate(
        config, load_sessions(version, config), labels.tolist(), seed=SAMPLE_SEED, **FAST_SETTING
    )
    fcd = frechet_distance(probe(images)[0], reference)
    train = load_image_data("mnist").train_images
    order = np.random.default_rng(SAMPLE_SEED).permutation(len(train))  # the cards' real rows
    real_few, real_card = (
        frechet_distance(probe(train[order[:count]])[0], reference)
        for count in (DIFFUSION_FCD_SAMPLES, int(row["samples"]))
    )
    allowance = real_few - real_card + DIFFUSION_FCD_MARGIN
    assert fcd <= row["fcd"] + allowance, (
        f"FCD {fcd:.2f} on {DIFFUSION_FCD_SAMPLES} samples; the card's {row['fcd']:.2f} on "
        f"{row['samples']} allows up to {row['fcd'] + allowance:.2f}"
    )


# issue #15: (least class consistency, largest FCD or None) of the headline (first) setting
FLOORS: dict[str, tuple[float, float | None]] = {
    **{name: (0.85, None) for name in GENERATORS if name.endswith("-fashion-mnist")},
    "gan-mnist": (0.97, 10.0),
    # the card's row; test_mnist_diffusion_fcd_holds_on_fewer_samples re-measures its FCD
    "diffusion-mnist": (0.99, 6.0),
}
REMEASURED_KINDS = {"decoder", "latent-diffusion"}  # a headline row in about a second
# shipped below their floor (the measured shortfall): strict, so a version that meets its floor
# fails here until its entry goes
BELOW_FLOOR: dict[str, str] = {}


def floor_case(name: str) -> Any:
    if name in BELOW_FLOOR:
        return pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=BELOW_FLOOR[name]))
    return name


@cache
def headline(name: str) -> tuple[dict[str, Any], dict[str, float] | None]:
    """The card's headline (first) row, and the same setting re-measured the card's way (same
    seed, same sample count) where that takes a second or two; None for the pixel U-Net, whose
    2,000 samples take minutes (test_class_consistency_matches_the_card re-measures it on fewer)."""
    version, config, card = load(name)
    row = dict(card["metrics"]["settings"][0])
    if config["generation"]["kind"] not in REMEASURED_KINDS:
        return row, None
    setting = {k: row[k] for k in ("sampler", "steps", "guidance") if k in row}
    labels = balanced_labels(int(row["samples"]), int(config["generation"]["num_classes"]))
    images = generate(
        config, load_sessions(version, config), labels.tolist(), seed=SAMPLE_SEED, **setting
    )
    features, logits = judge(config["dataset"])(images)
    return row, {
        "class_consistency": class_consistency(logits, labels),
        "fcd": frechet_distance(features, reference_features(config["dataset"])),
    }


@pytest.mark.parametrize("name", sorted(FLOORS.keys() & set(GENERATORS)))
def test_headline_row_is_remeasured(name: str) -> None:
    row, measured = headline(name)
    if measured is None:
        pytest.skip("the pixel U-Net's 2,000 samples take minutes")
    assert measured["class_consistency"] == pytest.approx(row["class_consistency"], abs=0.002)
    assert measured["fcd"] == pytest.approx(row["fcd"], rel=0.01), "the card is stale"


@pytest.mark.parametrize("name", [floor_case(n) for n in sorted(FLOORS.keys() & set(GENERATORS))])
def test_meets_the_issue_floor(name: str) -> None:
    row, measured = headline(name)
    least_consistency, largest_fcd = FLOORS[name]
    scored = measured or row
    assert scored["class_consistency"] >= least_consistency, f"{name}: {scored}"
    assert largest_fcd is None or scored["fcd"] <= largest_fcd, f"{name}: {scored}"


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


@pytest.mark.parametrize(("marker", "dataset"), [("", "mnist"), ("fashion-", "fashion-mnist")])
def test_docs_quality_table_is_the_cards(marker: str, dataset: str) -> None:
    doc = QUALITY_DOC.read_text()
    pattern = rf"<!-- {marker}generators:start -->\n(.*?)\n<!-- {marker}generators:end -->"
    block = re.search(pattern, doc, re.S)
    assert block, f"docs/models.md lost its {marker}generators markers"
    assert block.group(1).strip() == generator_table(MODELS, dataset).strip(), (
        "docs/models.md quality table is stale: regenerate it with python -c "
        "'from pathlib import Path; from training.generators.generator_eval import generator_table; "
        f'print(generator_table(Path("models"), "{dataset}"))\''
    )


@pytest.mark.parametrize("name", GENERATORS)
def test_the_shipped_generation_section_is_what_training_writes(name: str) -> None:
    """Each shipped config.json's `generation` section equals what the training code's writer
    (training/generators/generation_config.py) makes from the section's own numbers."""
    section = json.loads((MODELS / name / "config.json").read_text())["generation"]
    classes, kind = section["num_classes"], section["kind"]
    if kind == "decoder":
        rebuilt = decoder_generation(
            section["latent_shape"][0], classes, "encoder" in section, "prior" in section
        )
    else:
        denoise = {
            "schedule": section["schedule"],
            "steps": section["defaults"]["steps"],
            "guidance": section["defaults"]["guidance"],
        }
        if kind == "diffusion":
            rebuilt = pixel_diffusion_generation(classes, **denoise)
        else:
            vae = {"output_range": section["output_range"], "decoder": section["decoder"]}
            rebuilt = latent_diffusion_generation(
                section["latent_shape"][0],
                classes,
                vae=vae,
                clip_sample=section["clip_sample"],
                latent_scale=section["latent_scale"],
                **denoise,
            )
    assert rebuilt == section
