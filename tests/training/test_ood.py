"""The out-of-distribution flag of every shipped classifier (training/classifiers/ood.py): the config's
section matches the card and the latest version, and the CNNs keep AUROC >= 0.95 against every
out-of-distribution set, re-measured here on a few hundred pictures with the service's code."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.tasks.class_scores import OodSpec
from training.cards import replace_block
from training.classifiers.ood import (
    FLOORS,
    OOD_SETS,
    OTHER_DATASET,
    QUALITY_DOC,
    TABLE_END,
    TABLE_START,
    ShippedClassifier,
    auroc,
    dataset_pictures,
    ood_pictures,
    ood_table,
    shipped_classifiers,
)
from training.data.images import DATA_DIR, IDX_FILES, KNOWN_DATASETS, idx_file
from training.publish import DEFAULT_MODELS_DIR

CLASSIFIERS = sorted(p.name for p in shipped_classifiers(DEFAULT_MODELS_DIR))
COUNT = 300  # pictures of each dataset split: seconds, and still a tight AUROC


def has_test_split(dataset: str) -> bool:
    folder = DATA_DIR / KNOWN_DATASETS[dataset].folder
    return all(idx_file(folder, IDX_FILES["test", kind]) for kind in ("images", "labels"))


def test_auroc_counts_ties_half() -> None:
    assert auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    assert auroc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5
    assert auroc(np.array([0.0, 2.0]), np.array([1.0])) == 0.5


def test_replace_block_appends_then_replaces() -> None:
    once = replace_block("# card\n", "<s>", "<e>", "<s>\na\n<e>")
    assert once == "# card\n\n<s>\na\n<e>\n"
    assert replace_block(once, "<s>", "<e>", "<s>\nb\n<e>") == "# card\n\n<s>\nb\n<e>\n"


def test_every_shipped_classifier_is_covered() -> None:
    assert set(FLOORS) <= set(CLASSIFIERS)
    assert len(CLASSIFIERS) >= 9


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_section_matches_the_card(name: str) -> None:
    model = ShippedClassifier.load(DEFAULT_MODELS_DIR / name)
    section = model.config["ood"]
    card = json.loads((model.onnx_path.parent / "card.json").read_text())
    assert section["version"] == model.version, "fitted on another version: run training ood"
    for key in ("score", "threshold", "temperature"):
        assert card["ood"][key] == section[key]
    assert OodSpec.from_config(section).version == model.version
    # the version keeps its own copy: served beside a later version, it keeps this flag
    own = json.loads((model.onnx_path.parent / "ood.json").read_text())
    assert own == section
    assert set(card["ood"]["auroc"]) == {OTHER_DATASET[model.dataset], "blank", "noise", "photo"}
    assert "<!-- ood:start -->" in (model.onnx_path.parent / "card.md").read_text()


def test_docs_table_is_the_cards() -> None:
    """The table `python -m training ood` writes into its doc (`QUALITY_DOC`, docs/models.md), made
    again from the shipped cards, is the one there."""
    sections = {}
    for folder in shipped_classifiers(DEFAULT_MODELS_DIR):
        model = ShippedClassifier.load(folder)
        sections[model.name] = json.loads((model.onnx_path.parent / "card.json").read_text())["ood"]
    text = QUALITY_DOC.read_text()
    assert TABLE_START in text and TABLE_END in text, (
        f"{QUALITY_DOC} lost its classifier-ood markers"
    )
    assert replace_block(text, TABLE_START, TABLE_END, ood_table(sections)) == text, (
        f"the out-of-distribution table of {QUALITY_DOC} is stale: run python -m training ood"
    )


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_shipped_cnn_meets_the_auroc_floor(name: str) -> None:
    model = ShippedClassifier.load(DEFAULT_MODELS_DIR / name)
    for dataset in (model.dataset, OTHER_DATASET[model.dataset]):
        if not has_test_split(dataset):
            pytest.skip(f"data/{dataset} is absent: run `make data`")
    spec = OodSpec.from_config(model.config["ood"])  # the score as the service computes it

    def scores(pictures: list[np.ndarray]) -> np.ndarray:
        return model.run(pictures).scores(spec)

    test = scores(dataset_pictures(model.dataset, "test", COUNT))
    measured = {
        s: auroc(test, scores(ood_pictures(model.dataset, s, "report", COUNT))) for s in OOD_SETS
    }
    assert min(measured.values()) >= FLOORS[name], measured
    passed = float((test <= spec.threshold).mean())
    assert 0.9 <= passed <= 0.99, f"{passed:.3f} of test pictures pass a 95% threshold"
