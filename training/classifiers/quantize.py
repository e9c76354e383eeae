"""int8 dynamic quantisation of a shipped classifier, kept only when it costs little accuracy.

    python -m training quantize mlp-mnist [cnn-mnist ...] [--models-dir models] [--max-drop 0.5]

For the newest version of each model: `quant_pre_process` (shape inference; quantize_dynamic
fails on dynamo exports without it), `quantize_dynamic` with int8 weights, then both files are
measured on the dataset's official test split and timed at batch 64 with one thread. When the
accuracy drop is below `--max-drop` percentage points and the int8 graph is `--min-speedup`
times as fast, it is written as `model.int8.onnx` beside `model.onnx` and the card records the measurements (the service serves it with
SEEDSERVE_INT8=true); otherwise nothing is written and the card records the refusal.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process

from training.classifiers.classifier_eval import (
    classification_metrics,
    median_latency_ms,
    onnx_logits,
)
from training.data.images import load_test_split, normalise
from training.files import sha256_of
from training.publish import DEFAULT_MODELS_DIR, latest_version

INT8_FILE = "model.int8.onnx"
TIMING_BATCH = 64


def quantize_file(source: Path, target: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared))
        # MatMul/Gemm only: dynamically quantised convolutions (ConvInteger) ran 5-9x slower
        # than float ones in onnxruntime on this CPU, while int8 matrix products ran ~3x faster.
        quantize_dynamic(
            str(prepared),
            str(target),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
        )


def quantize_version(
    version: Path, max_drop_points: float, min_speedup: float = 1.1
) -> dict[str, Any]:
    """Quantise, measure, keep or refuse; returns the card's `int8` entry (also written)."""
    config = json.loads((version.parent / "config.json").read_text())
    if config.get("task") != "classification" or "graph" in config:
        raise ValueError(f"{version.parent.name}: only image classifiers are quantised here")
    test = load_test_split(config["dataset"])
    pre = config["preprocessing"]
    images = normalise(test.images, pre["mean"], pre["std"]).numpy()
    source, target = version / "model.onnx", version / INT8_FILE
    with tempfile.TemporaryDirectory() as tmp:
        candidate = Path(tmp) / INT8_FILE
        quantize_file(source, candidate)
        before = classification_metrics(onnx_logits(source, images), test.labels, config["labels"])
        after = classification_metrics(
            onnx_logits(candidate, images), test.labels, config["labels"]
        )
        batch = {"image": np.ascontiguousarray(images[:TIMING_BATCH])}
        drop = 100 * (before["accuracy"] - after["accuracy"])
        fp32_ms = median_latency_ms(source, batch)
        int8_ms = median_latency_ms(candidate, batch)
        entry: dict[str, Any] = {
            "method": "onnxruntime quantize_dynamic of MatMul/Gemm: int8 weights, uint8 activations",
            "test_accuracy": after["accuracy"],
            "fp32_test_accuracy": before["accuracy"],
            "accuracy_drop_points": round(drop, 4),
            "max_drop_points": max_drop_points,
            f"latency_ms_batch{TIMING_BATCH}": {
                "fp32": round(fp32_ms, 4),
                "int8": round(int8_ms, 4),
            },
            "bytes": {"fp32": source.stat().st_size, "int8": candidate.stat().st_size},
            "measured_with": f"onnxruntime, 1 thread, {len(test.labels)} test images",
            "min_speedup": min_speedup,
            # kept only when it costs less than the limit and is clearly faster
            "kept": drop < max_drop_points and int8_ms * min_speedup < fp32_ms,
        }
        if entry["kept"]:
            shutil.copy(candidate, target)
        else:
            target.unlink(missing_ok=True)
    card_path = version / "card.json"
    card = json.loads(card_path.read_text())
    card["int8"] = entry
    files = card.setdefault("files", {})
    if entry["kept"]:
        files[INT8_FILE] = {"sha256": sha256_of(target), "bytes": target.stat().st_size}
    else:
        files.pop(INT8_FILE, None)
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    _update_markdown(version / "card.md", entry)
    return entry


def _update_markdown(path: Path, entry: dict[str, Any]) -> None:
    if not path.exists():
        return
    text = path.read_text().split("\n## int8 quantisation\n")[0].rstrip("\n")
    timing = entry[f"latency_ms_batch{TIMING_BATCH}"]
    verdict = (
        f"kept as `{INT8_FILE}` (served with `SEEDSERVE_INT8=true`)"
        if entry["kept"]
        else f"not shipped: it must lose less than {entry['max_drop_points']} points and be "
        f"{entry['min_speedup']}x as fast"
    )
    text += (
        "\n\n## int8 quantisation\n\n"
        f"{entry['method']}: test accuracy {100 * entry['test_accuracy']:.2f}% vs "
        f"{100 * entry['fp32_test_accuracy']:.2f}% in float32 "
        f"(accuracy drop {entry['accuracy_drop_points']:+.2f} points); batch {TIMING_BATCH} takes "
        f"{timing['int8']:.3f} ms vs {timing['fp32']:.3f} ms; {entry['bytes']['int8']:,} bytes vs "
        f"{entry['bytes']['fp32']:,}. Measured with {entry['measured_with']}. {verdict[0].upper()}{verdict[1:]}.\n"
    )
    path.write_text(text)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m training quantize", description=__doc__)
    parser.add_argument("models", nargs="+", help="model names in the repository")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--max-drop", type=float, default=0.5, help="accuracy points")
    parser.add_argument("--min-speedup", type=float, default=1.1, help="fp32 time / int8 time")
    args = parser.parse_args(argv)
    for name in args.models:
        version = latest_version(args.models_dir / name)
        entry = quantize_version(version, args.max_drop, args.min_speedup)
        timing = entry[f"latency_ms_batch{TIMING_BATCH}"]
        print(
            f"{name}/{version.name}: int8 {100 * entry['test_accuracy']:.2f}% vs "
            f"{100 * entry['fp32_test_accuracy']:.2f}%, batch {TIMING_BATCH} "
            f"{timing['int8']:.3f} vs {timing['fp32']:.3f} ms: "
            + ("kept" if entry["kept"] else "refused"),
            flush=True,
        )
    return 0
