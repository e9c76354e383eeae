"""Measure a generator the way it is served: samples come from service/tasks/imagegen.py on
onnxruntime, and are scored by the project's best classifier (models/cnn-<dataset>, ONNX).

- Class consistency: the share of generated images the classifier assigns to the requested class.
- Fréchet classifier distance (FCD): the Fréchet distance between Gaussians fitted to the
  classifier's penultimate-layer features of generated and of test images. It is FID's formula
  on a small in-domain classifier instead of Inception, so its numbers are not comparable to FID.
  Its floor is the distance between two halves of the test set, and real training images
  measured like a model's samples show what a perfect generator would score at that sample size.

    python -m training evaluate diffusion --dataset mnist   # re-measure the latest version
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from service.repository import version_config
from service.tasks.imagegen import generate, grid_png
from training.data.images import fixed_permutation, load_image_data
from training.families import of_group
from training.onnx_export import onnx_session
from training.publish import latest_version

SAMPLE_SEED = 1234  # seed of the scored samples (not the training seed: a different draw)
GRID_PER_CLASS = 10  # images per row of samples.png


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between features (N, D) and (M, D).

    Tr((S_a S_b)^(1/2)) equals Tr((R S_b R)^(1/2)) with R = S_a^(1/2), a symmetric PSD matrix whose
    square root comes from `eigh`: no complex parts to discard as with a general sqrtm.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.ndim == b.ndim == 2 and a.shape[1] == b.shape[1], f"features {a.shape} vs {b.shape}"
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = root_a @ cov_b @ root_a
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    distance = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root
    return float(max(distance, 0.0))


def penultimate_tensor(model: onnx.ModelProto) -> str:
    """The input of the last fully connected layer: the Gemm or MatMul that gives the graph's
    first output (the logits), else the last one in the graph."""
    layers = [n for n in model.graph.node if n.op_type in {"Gemm", "MatMul"}]
    if not layers:
        raise ValueError("the classifier has no Gemm/MatMul node to take features from")
    first_output = model.graph.output[0].name
    last = next((n for n in layers if first_output in n.output), layers[-1])
    return str(last.input[0])


class ClassifierProbe:
    """A shipped ONNX classifier with its penultimate features exposed as an extra output."""

    def __init__(self, version_dir: Path, threads: int = 1) -> None:
        self.version_dir = version_dir
        config = json.loads((version_dir.parent / "config.json").read_text())
        self.name = str(config["name"])
        self.mean = float(config["preprocessing"]["mean"])
        self.std = float(config["preprocessing"]["std"])
        model = onnx.load(str(version_dir / "model.onnx"))
        self.feature_name = penultimate_tensor(model)
        outputs = [o.name for o in model.graph.output]
        self.logits_name = "logits" if "logits" in outputs else outputs[0]
        if self.feature_name not in outputs:
            model.graph.output.append(
                onnx.helper.make_tensor_value_info(self.feature_name, onnx.TensorProto.FLOAT, None)
            )
        self.input_name = model.graph.input[0].name
        self.session = onnx_session(model.SerializeToString(), threads)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (N, 28, 28) -> features (N, D), logits (N, classes)."""
        features, logits = [], []
        for i in range(0, len(images), 500):
            x = (images[i : i + 500, None].astype(np.float32) / 255 - self.mean) / self.std
            f, z = self.session.run([self.feature_name, self.logits_name], {self.input_name: x})
            features.append(f.reshape(len(x), -1))
            logits.append(z)
        return np.concatenate(features), np.concatenate(logits)


def class_consistency(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.argmax(axis=1) == labels))


def per_class_consistency(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float]:
    hits = logits.argmax(axis=1) == labels
    return [round(float(hits[labels == c].mean()), 4) for c in range(num_classes)]


def load_sessions(
    version_dir: Path, config: Mapping[str, Any], threads: int = 1
) -> dict[str, ort.InferenceSession]:
    """model.onnx as "model" and every graph of config["graphs"] under its role."""
    files = {"model": "model.onnx", **config.get("graphs", {})}
    return {role: onnx_session(version_dir / name, threads) for role, name in files.items()}


def balanced_labels(count: int, num_classes: int) -> np.ndarray:
    return np.arange(count, dtype=np.int64) % num_classes


def reference_metrics(
    probe: ClassifierProbe, data: Any, counts: Sequence[int]
) -> tuple[np.ndarray, dict[str, Any]]:
    """Test-set features, and the floors: test half vs half, and real training images scored
    exactly like generated ones at each sample count used (FCD grows as samples shrink)."""
    test_features, test_logits = probe(data.test_images)
    order = fixed_permutation(len(test_features))
    half = len(order) // 2
    real_rows = []
    for count in sorted(set(counts)):
        real = np.random.default_rng(SAMPLE_SEED).permutation(len(data.train_images))[:count]
        real_features, real_logits = probe(data.train_images[real])
        real_rows.append(
            {
                "samples": int(count),
                "fcd": frechet_distance(real_features, test_features),
                "class_consistency": class_consistency(real_logits, data.train_labels[real]),
            }
        )
    return test_features, {
        "classifier": {
            "name": probe.name,
            "version": int(probe.version_dir.name),
            "feature": probe.feature_name,
            "feature_dim": int(test_features.shape[1]),
            "test_accuracy": class_consistency(test_logits, data.test_labels),
        },
        "fcd_floor_test_halves": frechet_distance(
            test_features[order[:half]], test_features[order[half:]]
        ),
        "real_train_images": real_rows,
    }


def score_setting(
    config: Mapping[str, Any],
    sessions: Mapping[str, Any],
    probe: ClassifierProbe,
    test_features: np.ndarray,
    count: int,
    setting: Mapping[str, Any],
) -> dict[str, Any]:
    """Generate `count` class-balanced images with one sampler setting and score them."""
    setting = {k: v for k, v in setting.items() if k != "samples"}
    num_classes = int(config["generation"]["num_classes"])
    labels = balanced_labels(count, num_classes)
    started = time.perf_counter()
    images = generate(config, sessions, labels.tolist(), seed=SAMPLE_SEED, **setting)
    seconds = time.perf_counter() - started
    features, logits = probe(images)
    return {
        **setting,
        "samples": count,
        "class_consistency": class_consistency(logits, labels),
        "class_consistency_per_class": per_class_consistency(logits, labels, num_classes),
        "fcd": frechet_distance(features, test_features),
        "seconds": round(seconds, 1),
    }


def sample_grid(
    config: Mapping[str, Any], sessions: Mapping[str, Any], setting: Mapping[str, Any]
) -> bytes:
    """One row per class, GRID_PER_CLASS samples each, enlarged 2x for the card."""
    num_classes = int(config["generation"]["num_classes"])
    labels = np.repeat(np.arange(num_classes), GRID_PER_CLASS)
    images = generate(config, sessions, labels.tolist(), seed=SAMPLE_SEED, **setting)
    return grid_png(images, nrow=GRID_PER_CLASS, scale=2)


def evaluate_version(
    version_dir: Path,
    config: Mapping[str, Any],
    data: Any,
    run: Any,
    settings: Sequence[Mapping[str, Any]] | None,
    write_grid: bool = True,
) -> dict[str, Any]:
    """Every metric of the card, plus samples.png written into `version_dir` (unless told not to)."""
    classifier_dir = run.classifier or latest_version(run.models_dir / f"cnn-{data.name}")
    probe = ClassifierProbe(classifier_dir, run.threads)
    settings = list(settings or [{}])
    counts = [int(s.get("samples", run.eval_samples)) for s in settings]
    test_features, metrics = reference_metrics(probe, data, counts)
    sessions = load_sessions(version_dir, config, run.threads)
    if write_grid:
        grid_setting = {k: v for k, v in settings[0].items() if k != "samples"}
        (version_dir / "samples.png").write_bytes(sample_grid(config, sessions, grid_setting))
    results = []
    for setting, count in zip(settings, counts, strict=True):
        result = score_setting(config, sessions, probe, test_features, count, setting)
        print(
            f"{config['name']} {dict(setting)}: class consistency {result['class_consistency']:.4f}, "
            f"FCD {result['fcd']:.3f} ({result['seconds']} s)"
        )
        results.append(result)
    return {**metrics, "sample_seed": SAMPLE_SEED, "settings": results}


def evaluate_shipped(family: str, run: Any, version: Path | None = None) -> dict[str, Any]:
    """Re-measure a shipped version (default: the latest) with the settings its card lists."""
    data = load_image_data(run.dataset, run.data_dir)
    version_dir = version or latest_version(run.models_dir / f"{family}-{data.name}")
    # with this version's own sections, as the service reads them
    config = version_config(
        version_dir, json.loads((version_dir.parent / "config.json").read_text())
    )
    card = json.loads((version_dir / "card.json").read_text())
    keys = ("sampler", "steps", "guidance", "samples")
    settings = [
        {k: row[k] for k in keys if k in row} for row in card.get("metrics", {}).get("settings", [])
    ]
    return evaluate_version(version_dir, config, data, run, settings, write_grid=False)


# ---------------------------------------------------------------------------------------------
# The card for people


def generator_card_markdown(card: Mapping[str, Any]) -> str:
    """card.md from card.json: what it is, how good it is, how it was made."""
    lines = [
        f"# {card['name']} version {card['version']}",
        "",
        str(card.get("description", "")),
        "",
    ]
    metrics = card.get("metrics")
    if metrics:
        classifier = metrics["classifier"]
        lines += [
            "## Quality",
            "",
            f"Scored by `{classifier['name']}` version {classifier['version']} (test accuracy "
            f"{classifier['test_accuracy']:.4f}) on class-balanced samples (seed "
            f"{metrics['sample_seed']}) generated by `service/tasks/imagegen.py` "
            "on onnxruntime. FCD = Fréchet classifier distance: the Fréchet distance between "
            f"Gaussians fitted to the classifier's {classifier['feature_dim']}-d penultimate "
            "features (`"
            + classifier["feature"]
            + "`) of the samples and of the 10,000 test images "
            "(not FID: a different network, not comparable to FID numbers).",
            "",
            "| sampler | steps | guidance | samples | class consistency | FCD | seconds |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in metrics["settings"]:
            lines.append(
                f"| {row.get('sampler', 'decoder')} | {row.get('steps', 1)} | "
                f"{row.get('guidance', '-')} | {row['samples']} | {row['class_consistency']:.4f} | "
                f"{row['fcd']:.3f} | {row['seconds']} |"
            )
        for real in metrics["real_train_images"]:
            lines.append(
                f"| real training images | - | - | {real['samples']} | "
                f"{real['class_consistency']:.4f} | {real['fcd']:.3f} | - |"
            )
        lines += [
            "",
            f"Floor: FCD between two halves of the test set = {metrics['fcd_floor_test_halves']:.3f}.",
            "",
            "![samples, one row per class](samples.png)",
            "",
        ]
    training = card["training"]
    lines += [
        "## Training",
        "",
        f"{training.get('parameters', 0):,} parameters, {training.get('iterations', '?')} iterations "
        f"in {training.get('seconds', '?')} CPU seconds ({training.get('wall_seconds', '?')} s wall "
        f"clock, shared cores) on {training['run']['threads']} thread(s). "
        f"Data: {card['dataset']['name']} ({card['dataset']['source']}), "
        f"{card['dataset']['splits']['train']:,} training images.",
        "",
        *monitor_lines(training.get("monitor") or {}),
        "![training curves](curves.png)",
        "",
        "```json",
        json.dumps(
            {"config": training.get("config"), "model_config": training.get("model_config")},
            indent=2,
        ),
        "```",
        "",
        "## Export",
        "",
        f"ONNX opset {card['export']['opset']}, checked against torch on "
        f"{card['export'].get('verified_on', '?')}: max |onnxruntime - torch| = "
        f"{card['export'].get('max_abs_diff')} (tolerance {card['export']['tolerance']}).",
        "",
        "| file | sha256 | bytes |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | `{f['sha256']}` | {f['bytes']:,} |" for name, f in card["files"].items()]
    return "\n".join(lines) + "\n"


def monitor_lines(monitor: Mapping[str, Any]) -> list[str]:
    """The GAN monitor's readings while training (training/generators/train_gan.py), if it ran."""
    if not monitor.get("iterations"):
        return []
    readings = ", ".join(
        f"{i}: {fcd:.2f} ({consistency:.3f})"
        for i, fcd, consistency in zip(
            monitor["iterations"], monitor["fcd_train"], monitor["class_consistency"], strict=True
        )
    )
    return [
        "While training, FCD of 2,000 samples of the EMA generator against 10,000 training images "
        f"(class consistency), by iteration: {readings}.",
        "",
    ]


# ---------------------------------------------------------------------------------------------
# docs/models.md's table of every shipped generator


def generator_table(models_dir: Path, dataset: str = "mnist") -> str:
    """The quality table and sample grids of docs/models.md, from the latest card of each family.

    tests/generate/test_shipped_generators.py checks that docs/models.md holds exactly this text.
    """
    lines = [
        "| model | sampler | steps | guidance | samples | class consistency | FCD |",
        "|---|---|---|---|---|---|---|",
    ]
    grids: list[str] = []
    real: dict[int, dict[str, Any]] = {}  # sample count -> real training images scored alike
    floor: tuple[int, float] | None = None  # (images per half, FCD)
    for family in of_group("generator"):  # vae, gan, diffusion, latent-diffusion
        try:
            version = latest_version(models_dir / f"{family}-{dataset}")
        except FileNotFoundError:
            continue
        card = json.loads((version / "card.json").read_text())
        metrics = card["metrics"]
        for row in metrics["settings"]:
            lines.append(
                f"| {card['name']} | {row.get('sampler', 'decoder')} | {row.get('steps', 1)} | "
                f"{row.get('guidance', '-')} | {row['samples']:,} | "
                f"{row['class_consistency']:.4f} | {row['fcd']:.2f} |"
            )
        real |= {int(row["samples"]): row for row in metrics["real_train_images"]}
        floor = floor or (card["dataset"]["splits"]["test"] // 2, metrics["fcd_floor_test_halves"])
        relative = Path("..") / version.relative_to(models_dir.parent)  # from docs/models.md
        grids.append(f"| {card['name']} | ![{card['name']} samples]({relative}/samples.png) |")
    if floor is None:
        return ""
    for count, row in sorted(real.items()):
        lines.append(
            f"| real training images | - | - | - | {count:,} | "
            f"{row['class_consistency']:.4f} | {row['fcd']:.2f} |"
        )
    lines.append(
        f"| test set, half vs half (floor) | - | - | - | {floor[0]:,} | - | {floor[1]:.2f} |"
    )
    return "\n".join([*lines, "", "| model | samples (one row per class) |", "|---|---|", *grids])
