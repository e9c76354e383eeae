"""The out-of-distribution flag of a shipped classifier: `python -m training ood [model ...]`.

A classifier answers every picture with some class, sure of itself on a blank square or a
holiday photo as on a digit. The flag says "this does not look like my training pictures" from a
score of the classifier's own logits (service/tasks/class_scores.py: energy, max-logit or
max-softmax), so the service computes it on onnxruntime's outputs with no other model.

For each model (the latest version) this measures, on pictures sent through the service's own
preprocessing (service/tasks/image_preprocessing.py: inversion, reframing, normalisation, and the conversion
to graphs for a graph classifier):

- in distribution: the validation split (the 5,000 training pictures held out from training by
  training/data/images.py) to fit the threshold, and the official test split to report;
- out of distribution: the other dataset's test split (Fashion-MNIST for a digit model, MNIST for
  a Fashion model), blank pictures, noise and colour photos, each cut in two halves made apart
  (other pictures, other seeds): the "select" half chooses the score, the "report" half is the one
  the card's AUROCs are measured on.

The score with the best worst-case AUROC over the four sets on the select halves is kept; the
threshold is the validation scores' 95th percentile (95% of in-distribution pictures pass). The
result goes into config.json's `ood` section (what the service reads) and the version's card.

When no score of the graph's outputs reaches the floor (0.95) on every select half, the feature
scores of training/classifiers/ood_features.py are compared too, and if one does better, the
graph with that score added as an output is published as a new version (the same weights, so
the same answers) and measured again from the service's side.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from PIL import Image

from service.tasks.class_scores import (
    GRAPH_SCORES,
    LOGIT_SCORES,
    PIXEL_SCORES,
    OodSpec,
    PixelModel,
    ood_scores,
    pixel_statistics,
)
from service.tasks.graphs import GraphSpec, image_to_graph
from service.tasks.image_preprocessing import ImageSpec, preprocess, to_gray
from training.cards import markdown_table, replace_block
from training.classifiers.classifier_eval import onnx_graph_logits, onnx_outputs
from training.classifiers.ood_features import (
    OUTPUT,
    FeatureScore,
    LayerBank,
    SummaryProbe,
    candidates,
    fit_layers,
    with_head,
)
from training.data.images import (
    MAX_VALIDATION,
    carve,
    fixed_permutation,
    idx_folder,
    read_idx_split,
)
from training.files import REPO_ROOT, sha256_of, write_json
from training.publish import DEFAULT_MODELS_DIR, latest_version

TPR = 0.95  # share of in-distribution pictures the threshold lets through
OTHER_DATASET = {"mnist": "fashion-mnist", "fashion-mnist": "mnist"}
OOD_SETS = ("other", "blank", "noise", "photo")  # "other": the other dataset's test split
HALVES = ("select", "report")
PER_HALF = 120  # generated pictures (noise, photo crops) in each half
PIXEL_TRAIN = 20000  # training pictures the pixel statistics' Gaussian is fitted on
BLANK_SIZES = ((5, 5), (28, 28), (64, 64), (480, 640), (30, 100))
FLOOR = 0.95  # below it on some set, the feature scores are tried (a new version)
FLOORS = {"cnn-mnist": FLOOR, "cnn-fashion-mnist": FLOOR}  # the AUROC promised (issue #15)
CARD_START, CARD_END = "<!-- ood:start -->", "<!-- ood:end -->"
TABLE_START, TABLE_END = "<!-- classifier-ood:start -->", "<!-- classifier-ood:end -->"
QUALITY_DOC = REPO_ROOT / "docs" / "models.md"  # its classifier-ood table


# ---------------------------------------------------------------------------------------------
# Pictures: grayscale (H, W) arrays in [0, 1], as the service holds an uploaded picture once
# decoded (service/tasks/image_preprocessing.py: decode_image -> to_gray).


def photos() -> list[Image.Image]:
    """Colour photos shipped inside installed packages (no download): scikit-learn's china.jpg
    and flower.jpg, matplotlib's grace_hopper.jpg."""
    from matplotlib import cbook
    from sklearn.datasets import load_sample_images

    pictures = [Image.fromarray(array) for array in load_sample_images().images]
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as hopper:
        pictures.append(hopper.convert("RGB"))
    return pictures


def photo_pictures(half: str, count: int = PER_HALF) -> list[np.ndarray]:
    """The whole photos (select half) or their mirror images (report half), then random crops
    of 24 to 400 pixels a side, each seen as the service sees an upload."""
    rng = np.random.default_rng(HALVES.index(half) + 1)
    sources = photos()
    wholes = [
        p if half == "select" else p.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for p in sources
    ]
    pictures = [to_gray(p) for p in wholes]
    while len(pictures) < count:
        photo = sources[int(rng.integers(len(sources)))]
        width, height = (int(rng.integers(24, min(400, side) + 1)) for side in photo.size)
        left = int(rng.integers(0, photo.width - width + 1))
        top = int(rng.integers(0, photo.height - height + 1))
        pictures.append(to_gray(photo.crop((left, top, left + width, top + height))))
    return pictures


def blank_pictures(half: str) -> list[np.ndarray]:
    """Pictures of one grey level, in several sizes: levels 0, 0.1, ... 1 (select half) and
    0.05, 0.15, ... 0.95 (report half)."""
    levels = np.arange(0.0, 1.0001, 0.1) if half == "select" else np.arange(0.05, 1.0, 0.1)
    return [np.full(size, level, dtype=np.float32) for size in BLANK_SIZES for level in levels]


def noise_pictures(half: str, count: int = PER_HALF) -> list[np.ndarray]:
    """Uniform and Gaussian noise, bright or dim, in several sizes (each half its own seed)."""
    rng = np.random.default_rng(100 + HALVES.index(half))
    pictures = []
    for i in range(count):
        height, width = BLANK_SIZES[1:][i % 4]
        scale = float(rng.uniform(0.2, 1.0))  # dim to full-range noise
        if i % 2:
            noise = rng.uniform(0.0, scale, (height, width))
        else:
            noise = rng.normal(scale / 2, scale / 4, (height, width))
        pictures.append(noise.clip(0, 1).astype(np.float32))
    return pictures


def dataset_pictures(dataset: str, split: str, count: int = 0, half: str = "") -> list[np.ndarray]:
    """A dataset's pictures as grayscale arrays: the official test split, or the validation
    split carved from the training pictures exactly as training carves it. `count` > 0: that many,
    taken after the fixed permutation; `half`: one half of the split (the other dataset's)."""
    return dataset_split(dataset, split, count, half)[0]


def dataset_split(
    dataset: str, split: str, count: int = 0, half: str = ""
) -> tuple[list[np.ndarray], np.ndarray]:
    """`dataset_pictures` and their labels."""
    folder = idx_folder(dataset, None)
    if split in {"train", "validation"}:  # "train": the pictures training learnt from
        train = read_idx_split(folder, "train", dataset)[0]
        rest, carved = carve(train, min(MAX_VALIDATION, max(1, len(train.labels) // 10)))
        raw = carved if split == "validation" else rest
    else:
        raw = read_idx_split(folder, "test", dataset)[0]
    order = fixed_permutation(len(raw.labels))
    if half:
        middle = len(order) // 2
        order = order[:middle] if half == "select" else order[middle:]
    if count:
        order = order[:count]
    chosen = np.sort(order)
    return [image.astype(np.float32) / 255 for image in raw.images[chosen]], raw.labels[chosen]


def ood_pictures(dataset: str, set_name: str, half: str, count: int = 0) -> list[np.ndarray]:
    if set_name == "other":
        return dataset_pictures(OTHER_DATASET[dataset], "test", count, half)
    if set_name == "blank":
        return blank_pictures(half)
    if set_name == "noise":
        return noise_pictures(half, count or PER_HALF)
    if set_name == "photo":
        return photo_pictures(half, count or PER_HALF)
    raise ValueError(f"unknown set {set_name!r}")


# ---------------------------------------------------------------------------------------------
# Logits, through the service's preprocessing and onnxruntime


@dataclass(frozen=True)
class ShippedClassifier:
    name: str
    model_dir: Path
    version: int
    config: dict[str, Any]

    @classmethod
    def load(cls, model_dir: Path) -> ShippedClassifier:
        config = json.loads((model_dir / "config.json").read_text())
        version = int(latest_version(model_dir).name)
        return cls(model_dir.name, model_dir, version, config)

    @property
    def dataset(self) -> str:
        return str(self.config["dataset"])

    @property
    def onnx_path(self) -> Path:
        return self.model_dir / str(self.version) / "model.onnx"

    @property
    def takes_pictures(self) -> bool:
        """False for a graph classifier, which may be sent graphs: logit scores only."""
        return "graph" not in self.config

    @cached_property
    def has_head(self) -> bool:
        """Whether the graph computes a feature score (ood_features.with_head)."""
        return OUTPUT in {o.name for o in onnx.load(str(self.onnx_path)).graph.output}

    def run(self, pictures: list[np.ndarray]) -> Batch:
        """Pictures prepared as the service prepares uploads, and the model's logits (and graph
        score, if it has one) on them."""
        spec = ImageSpec.from_config(self.config["preprocessing"])
        images = np.stack([preprocess(picture, spec) for picture in pictures])  # (N, 1, H, W)
        pictures_seen = images * spec.std + spec.mean
        if "graph" in self.config:
            graph = GraphSpec.from_config(self.config["graph"])
            logits = onnx_graph_logits(
                self.onnx_path, [image_to_graph(i[0], graph) for i in images]
            )
            return Batch(logits, pictures_seen, images)
        if not self.has_head:
            (logits,) = onnx_outputs(self.onnx_path, images, ["logits"])
            return Batch(logits, pictures_seen, images)
        logits, graph_scores = onnx_outputs(self.onnx_path, images, ["logits", OUTPUT])
        return Batch(logits, pictures_seen, images, graph_scores)


@dataclass(frozen=True)
class Batch:
    logits: np.ndarray  # (N, classes)
    pictures: np.ndarray  # (N, 1, H, W) as the model saw them, intensities in [0, 1]
    images: np.ndarray  # the same, normalised: what the graph was fed
    graph_scores: np.ndarray | None = None  # the graph's own score output, if it has one

    def scores(self, spec: OodSpec) -> np.ndarray:
        if spec.score in GRAPH_SCORES:
            assert self.graph_scores is not None, f"the graph computes no {spec.score} score"
            return spec.scores(self.graph_scores[:, None])
        return spec.scores(self.logits, self.pictures)

    def __len__(self) -> int:
        return len(self.logits)


def fit_pixel_model(train: Batch, validation: Batch) -> PixelModel:
    """The Gaussian of the training pictures' statistics; each part of the combined score
    standardised on the validation split."""
    statistics = pixel_statistics(train.pictures)
    mean = statistics.mean(axis=0)
    precision = np.linalg.inv(np.cov(statistics.T) + 1e-9 * np.eye(len(mean)))
    unscaled = PixelModel(mean, precision, {})
    energy = ood_scores(validation.logits, "energy")
    distance = unscaled.distance(validation.pictures)
    return PixelModel(
        mean,
        precision,
        {
            "energy": (float(energy.mean()), float(energy.std())),
            "pixel-statistics": (float(distance.mean()), float(distance.std())),
        },
    )


def candidate(model: ShippedClassifier, score: str, pixels: PixelModel | None) -> OodSpec:
    """The score as the service would compute it, threshold not yet fitted."""
    needs = score in PIXEL_SCORES
    return OodSpec(model.version, score, 0.0, pixels=pixels if needs else None)


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Probability that an out-of-distribution picture scores above an in-distribution one
    (ties count half): the area under the ROC curve of "score > t means out"."""
    scores = np.concatenate([in_scores, out_scores])
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties, 1-based
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)
    n_in, n_out = len(in_scores), len(out_scores)
    return float((ranks[n_in:].sum() - n_out * (n_out + 1) / 2) / (n_in * n_out))


# ---------------------------------------------------------------------------------------------
# The measurement


@dataclass
class Measurement:
    spec: OodSpec  # the chosen score with its fitted threshold
    compared: dict[str, dict[str, float]]  # score -> set -> AUROC on the select halves
    auroc: dict[str, float]  # set -> AUROC on the report halves against the test split
    in_distribution_rate: dict[str, float]  # "test" and each set: share flagged in distribution
    counts: dict[str, int]  # pictures per report set (and the validation and test splits)


def worst_then_mean(aurocs: dict[str, float]) -> tuple[float, float]:
    return min(aurocs.values()), float(np.mean(list(aurocs.values())))


def measure(model: ShippedClassifier, count: int = 0) -> tuple[ShippedClassifier, Measurement]:
    """Choose the score, fit its threshold and report (see the module docstring). `count` > 0
    caps the pictures taken from each dataset split (tests). Returns the model measured: a new
    version when a feature score was chosen and its graph published."""
    dataset = model.dataset
    validation = model.run(dataset_pictures(dataset, "validation", count))
    halves = {
        (name, half): model.run(ood_pictures(dataset, name, half, count))
        for name in OOD_SETS
        for half in HALVES
    }
    pixels, train = None, None
    if model.takes_pictures:
        train_pictures, train_labels = dataset_split(dataset, "train", count or PIXEL_TRAIN)
        train = model.run(train_pictures)
        pixels = fit_pixel_model(train, validation)
    scored = [
        candidate(model, score, pixels)
        for score in LOGIT_SCORES + PIXEL_SCORES
        if score in LOGIT_SCORES or pixels is not None
    ]
    compared = {
        c.score: {
            name: auroc(validation.scores(c), halves[name, "select"].scores(c)) for name in OOD_SETS
        }
        for c in scored
    }
    chosen = max(scored, key=lambda c: worst_then_mean(compared[c.score]))
    if train is not None and worst_then_mean(compared[chosen.score])[0] < FLOOR:
        tried = feature_scores(model, train, train_labels, validation, halves)
        compared |= {feature.label: aurocs for feature, aurocs, _ in tried}
        feature, aurocs, expected = max(tried, key=lambda r: worst_then_mean(r[1]))
        if worst_then_mean(aurocs) > worst_then_mean(compared[chosen.score]):
            model, graph_scores = publish_head(model, feature, validation, expected)
            chosen = OodSpec(model.version, feature.score, 0.0, output=OUTPUT)
            validation = replace(validation, graph_scores=graph_scores)  # the same logits
            halves = {
                (name, "report"): model.run(ood_pictures(dataset, name, "report", count))
                for name in OOD_SETS
            }
    return model, report(model, chosen, compared, validation, halves, count)


def feature_scores(
    model: ShippedClassifier,
    train: Batch,
    labels: np.ndarray,
    validation: Batch,
    halves: dict[tuple[str, str], Batch],
) -> list[tuple[FeatureScore, dict[str, float], np.ndarray]]:
    """Every feature score (ood_features.candidates) with its AUROCs on the select halves and
    its scores of the validation pictures."""
    probe = SummaryProbe(onnx.load(str(model.onnx_path)))
    valid = probe(validation.images)
    layers = fit_layers(probe, probe(train.images), labels, valid)
    select = {name: probe(halves[name, "select"].images) for name in OOD_SETS}
    results = []
    for feature in candidates(layers):
        inside = feature.numpy(valid)
        aurocs = {name: auroc(inside, feature.numpy(select[name])) for name in OOD_SETS}
        results.append((feature, aurocs, inside))
    return results


def report(
    model: ShippedClassifier,
    chosen: OodSpec,
    compared: dict[str, dict[str, float]],
    validation: Batch,
    halves: dict[tuple[str, str], Batch],
    count: int,
) -> Measurement:
    """The threshold fitted on the validation split, and the AUROCs on the report halves against
    the test split, as the service computes the score."""
    threshold = float(np.quantile(validation.scores(chosen), TPR))
    spec = replace(chosen, threshold=threshold)
    test = model.run(dataset_pictures(model.dataset, "test", count))
    test_scores = test.scores(spec)
    scores = {name: halves[name, "report"].scores(spec) for name in OOD_SETS}
    return Measurement(
        spec=spec,
        compared=compared,
        auroc={name: auroc(test_scores, scores[name]) for name in OOD_SETS},
        in_distribution_rate={
            "test": float((test_scores <= threshold).mean()),
            **{name: float((s <= threshold).mean()) for name, s in scores.items()},
        },
        counts={"validation": len(validation), "test": len(test)}
        | {name: len(s) for name, s in scores.items()},
    )


def publish_head(
    model: ShippedClassifier, feature: FeatureScore, validation: Batch, expected: np.ndarray
) -> tuple[ShippedClassifier, np.ndarray]:
    """The graph with `feature` added as its `ood_score` output, as a new version (the same
    folder when the latest version already is such a graph), its card carried over; checked
    against `expected`, the numpy computation on the validation split. Returns the published
    model and its graph's scores of the validation pictures."""
    headed = with_head(onnx.load(str(model.onnx_path)), feature)
    old = model.model_dir / str(model.version)
    card = json.loads((old / "card.json").read_text())
    same_head = card.get("ood_head", {}).get("score") == feature.label
    version = model.version if model.has_head and same_head else model.version + 1
    folder = model.model_dir / str(version)
    folder.mkdir(exist_ok=True)
    for name in ("card.md", "curves.png"):
        if folder != old and (old / name).exists():
            (folder / name).write_bytes((old / name).read_bytes())
    onnx.save(headed, str(folder / "model.onnx"))
    (graph_scores,) = onnx_outputs(folder / "model.onnx", validation.images, [OUTPUT])
    difference = float(np.max(np.abs(graph_scores - expected)))
    if difference > 1e-2 * max(1.0, float(np.max(np.abs(expected)))):
        raise RuntimeError(f"the ood head disagrees with its numpy computation by {difference}")
    old_sha = card["files"]["model.onnx"]["sha256"]
    based_on = card.get("ood_head", {}).get("weights_of_version", model.version)
    card["version"] = version
    card["ood_head"] = {
        "weights_of_version": based_on,
        "score": feature.label,
        "layers": [g.tensor for g in feature.layers],
        **({"bank": len(first.bank)} if isinstance(first := feature.layers[0], LayerBank) else {}),
        "output": OUTPUT,
        "max_abs_diff_vs_numpy": difference,
        "note": f"version {based_on}'s graph and weights, unchanged, with the out-of-distribution "
        "feature score (training/classifiers/ood_features.py) added as one more output",
    }
    card["files"]["model.onnx"] = {
        "sha256": sha256_of(folder / "model.onnx"),
        "bytes": (folder / "model.onnx").stat().st_size,
    }
    write_json(folder / "card.json", card)
    card_md = folder / "card.md"
    new_sha = card["files"]["model.onnx"]["sha256"]
    lines = card_md.read_text().replace(old_sha, new_sha).split("\n")
    lines[0] = f"# {model.name}, version {version}"
    head_note = (
        f"Version {version}: version {based_on}'s graph and weights, unchanged (the same "
        f"answers), with the out-of-distribution score {feature.label} added as the output "
        f"`{OUTPUT}` (see the flag's section below)."
    )
    if not any(line.startswith(f"Version {version}: version") for line in lines):
        lines[1:1] = ["", head_note]
    card_md.write_text("\n".join(lines))
    return ShippedClassifier.load(model.model_dir), graph_scores


# ---------------------------------------------------------------------------------------------
# Writing config.json, the card and the quality doc (docs/models.md)


def config_section(m: Measurement) -> dict[str, Any]:
    """config.json's `ood` section, read by the service (service/tasks/class_scores.py OodSpec)."""
    spec = m.spec
    section: dict[str, Any] = {
        "version": spec.version,
        "score": spec.score,
        "temperature": spec.temperature,
        "threshold": spec.threshold,
        "output": spec.output,
        "tpr": TPR,
    }
    if spec.pixels is not None:
        section["pixels"] = spec.pixels.to_config()
    return section


def set_descriptions(dataset: str) -> dict[str, str]:
    other = OTHER_DATASET[dataset]
    return {
        "other": f"{other} test split, the half not used to choose the score",
        "blank": f"one grey level (0.05 to 0.95) in sizes {', '.join(f'{h}x{w}' for h, w in BLANK_SIZES)}",
        "noise": "uniform and Gaussian noise, dim to full range, 28x28 to 480x640",
        "photo": "china.jpg, flower.jpg (scikit-learn), grace_hopper.jpg (matplotlib), "
        "mirrored, and random crops of 24-400 pixels",
    }


def card_section(model: ShippedClassifier, m: Measurement) -> dict[str, Any]:
    return {
        **config_section(m),
        "threshold_fitted_on": f"validation split ({m.counts['validation']} training pictures "
        "held out from training), 95th percentile of the score",
        "auroc": {
            OTHER_DATASET[model.dataset] if k == "other" else k: v for k, v in m.auroc.items()
        },
        "in_distribution_rate": {
            OTHER_DATASET[model.dataset] if k == "other" else k: v
            for k, v in m.in_distribution_rate.items()
        },
        "measured_on": {
            "in_distribution": f"{model.dataset} test split ({m.counts['test']} pictures)",
            **{
                OTHER_DATASET[model.dataset] if k == "other" else k: f"{d} ({m.counts[k]} pictures)"
                for k, d in set_descriptions(model.dataset).items()
            },
        },
        "scores_compared": m.compared,
        "preprocessing": "the service's (service/tasks/image_preprocessing.py), as for an upload",
    }


def card_markdown(model: ShippedClassifier, section: dict[str, Any]) -> str:
    sets = list(section["auroc"])
    compared = [
        [score, *(f"{section['scores_compared'][score][k]:.4f}" for k in OOD_SETS)]
        for score in section["scores_compared"]
    ]
    return "\n\n".join(
        [
            CARD_START,
            "## Out-of-distribution flag",
            f"`classify` answers carry, per picture, `score` = {section['score']} "
            "(service/tasks/class_scores.py) and "
            f"`in_distribution` = score <= {section['threshold']:.4f}, the threshold that lets "
            f"{TPR:.0%} of the validation pictures through. Measured with `python -m training "
            "ood` on pictures prepared by the service's code; AUROC of the score against the "
            f"{model.dataset} test split (1.0: every such picture scores above every test picture):",
            markdown_table(
                ["set", "AUROC", "passed as in distribution", "pictures"],
                [
                    [
                        model.dataset + " test",
                        "",
                        f"{section['in_distribution_rate']['test']:.2%}",
                        section["measured_on"]["in_distribution"],
                    ]
                ]
                + [
                    [
                        s,
                        f"{section['auroc'][s]:.4f}",
                        f"{section['in_distribution_rate'][s]:.2%}",
                        section["measured_on"][s],
                    ]
                    for s in sets
                ],
            ),
            "Scores compared (AUROC against the validation split, on the halves kept for choosing):",
            markdown_table(
                ["score", OTHER_DATASET[model.dataset], "blank", "noise", "photo"], compared
            ),
            CARD_END,
        ]
    )


def write_results(model: ShippedClassifier, m: Measurement) -> dict[str, Any]:
    """The `ood` section into config.json and the version's own ood.json (what the service
    reads for that version, whatever a later version's score), card.json and card.md; returns
    the card's section."""
    config = {k: v for k, v in model.config.items() if k != "ood"} | {"ood": config_section(m)}
    write_json(model.model_dir / "config.json", config)
    folder = model.model_dir / str(model.version)
    write_json(folder / "ood.json", config["ood"])
    card = json.loads((folder / "card.json").read_text())
    card["ood"] = section = card_section(model, m)
    write_json(folder / "card.json", card)
    card_md = folder / "card.md"
    card_md.write_text(
        replace_block(card_md.read_text(), CARD_START, CARD_END, card_markdown(model, section))
    )
    return section


def ood_table(sections: dict[str, dict[str, Any]]) -> str:
    rows = [
        [
            f"`{name}`",
            s["score"],
            f"{s['threshold']:.3f}",
            *(f"{v:.3f}" for v in s["auroc"].values()),
            f"{s['in_distribution_rate']['test']:.1%}",
        ]
        for name, s in sections.items()
    ]
    return "\n".join(
        [
            TABLE_START,
            markdown_table(
                [
                    "model",
                    "score",
                    "threshold",
                    "AUROC vs other dataset",
                    "vs blank",
                    "vs noise",
                    "vs photo",
                    "test passed",
                ],
                rows,
            ),
            TABLE_END,
        ]
    )


def shipped_classifiers(models_dir: Path) -> Iterator[Path]:
    for config in sorted(models_dir.glob("*/config.json")):
        data = json.loads(config.read_text())
        if data.get("task") == "classification" and data.get("dataset") in OTHER_DATASET:
            yield config.parent


def main(argv: list[str], say: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training ood", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("models", nargs="*", help="model names (default: every shipped classifier)")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--dry-run", action="store_true", help="measure and print; write nothing")
    args = parser.parse_args(argv)
    folders = [args.models_dir / n for n in args.models] or list(
        shipped_classifiers(args.models_dir)
    )
    wrote = False
    for folder in folders:
        model = ShippedClassifier.load(folder)
        if model.dataset not in OTHER_DATASET:
            say(f"{model.name}: no out-of-distribution sets for dataset {model.dataset!r}")
            return 2
        with tempfile.TemporaryDirectory() as scratch:
            if args.dry_run:  # a feature score's new version goes into a copy, then away
                model = ShippedClassifier.load(shutil.copytree(folder, Path(scratch) / folder.name))
            model, m = measure(model)
        auroc = ", ".join(f"{k} {v:.4f}" for k, v in m.auroc.items())
        say(
            f"{model.name} v{model.version}: {m.spec.score} <= {m.spec.threshold:.4f}; AUROC {auroc}; "
            f"test passed {m.in_distribution_rate['test']:.2%}"
        )
        if not args.dry_run:
            write_results(model, m)
            wrote = True
    if wrote and args.models_dir == DEFAULT_MODELS_DIR:  # the table of every shipped card
        QUALITY_DOC.write_text(
            replace_block(
                QUALITY_DOC.read_text(), TABLE_START, TABLE_END, ood_table(shipped_sections())
            )
        )
    return 0


def shipped_sections(models_dir: Path = DEFAULT_MODELS_DIR) -> dict[str, dict[str, Any]]:
    """The `ood` section of each shipped classifier's latest card, by model name."""
    sections = {}
    for folder in shipped_classifiers(models_dir):
        model = ShippedClassifier.load(folder)
        card = json.loads((model.onnx_path.parent / "card.json").read_text())
        sections[model.name] = card["ood"]
    return sections


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
