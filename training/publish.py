"""The one way a trained model becomes a version in the repository the service reads.

Every family hands `publish` a `Release`: its torch modules as `Graph`s, config.json, what it
knows of its training, and two functions of its own (measure the staged files on onnxruntime,
write card.md). The pipeline is the same for all:

    stage -> export every graph -> verify each against torch -> the family's own checks
          -> measure on onnxruntime -> card.json + card.md -> publish (one rename)

A version folder appears in one rename from a staging folder on the same file system, so a
service polling the repository never sees half a version (docs/model-repository.md).
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import torch

from service.repository import GENERATOR_SECTIONS
from training.files import REPO_ROOT, sha256_of, write_json
from training.onnx_export import OPSET, export_onnx, verify

DEFAULT_MODELS_DIR = REPO_ROOT / "models"


@dataclass
class Graph:
    """One ONNX file of a version: the module, the inputs it is traced with, those it is
    verified on (None: the family's `check` verifies it) and its output names."""

    file: str
    module: torch.nn.Module
    example: Mapping[str, torch.Tensor]  # traced with; its keys are the graph's input names
    outputs: Sequence[str]
    check: Mapping[str, torch.Tensor] | None = None
    dynamic_shapes: Any = None  # default: a dynamic batch axis (0) on every input
    translations: Mapping[Any, Any] | None = None  # the exporter's custom_translation_table

    def export(self, folder: Path, opset: int, tolerance: float) -> float | None:
        """Write folder/file and, with `check`, verify it; the largest |onnxruntime - torch|."""
        dynamic = self.dynamic_shapes
        if dynamic is None:
            dynamic = tuple({0: "batch"} for _ in self.example)
            if self.check is not None:  # a batch the trace never saw proves the axis dynamic
                sizes = [len(next(iter(inputs.values()))) for inputs in (self.check, self.example)]
                assert sizes[0] != sizes[1], f"{self.file}: verify on another batch size"
        path = folder / self.file
        export_onnx(
            self.module,
            tuple(self.example.values()),
            path,
            list(self.example),
            list(self.outputs),
            dynamic,
            opset=opset,
            translations=self.translations,
        )
        if self.check is None:
            return None
        return verify(self.module, path, dict(self.check), tolerance)


@dataclass
class Release:
    """What a family publishes; `publish` does the rest the same way for every family."""

    name: str  # <family>-<dataset>: the model's folder in the repository
    config: dict[str, Any]  # config.json (publish adds the name)
    card: dict[str, Any]  # what the family knows: description, dataset, training, ...
    graphs: list[Graph]
    tolerance: float  # largest |onnxruntime - torch| accepted on any output
    # the version's card.md from its finished card.json (name, version and files included)
    describe: Callable[[dict[str, Any]], str]
    # the staged files measured on onnxruntime: the card's entries ("metrics", ...)
    measure: Callable[[Path], dict[str, Any]] = lambda staging: {}
    # more checks of the exported graphs against torch: entries of the card's "export"
    check: Callable[[Path], dict[str, Any]] = lambda staging: {}
    # anything else the version holds (vocab.json, curves.png, a copy of a graph)
    write_files: Callable[[Path], None] = lambda staging: None
    opset: int = OPSET
    verified_on: str = ""  # what the graphs with a `check` were verified on, for the card
    one_difference: bool = True  # the card's max_abs_diff: one number, not one per file


def publish(release: Release, models_dir: Path, version: int | None = None) -> Path:
    """Export, verify, measure and publish `release` as models_dir/<name>/<version>."""
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{release.name}-", dir=models_dir))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the version from a service run as another user
    try:
        differences = {
            graph.file: graph.export(staging, release.opset, release.tolerance)
            for graph in release.graphs
        }
        checked = {k: v for k, v in differences.items() if v is not None}
        export: dict[str, Any] = {"opset": release.opset, "tolerance": release.tolerance}
        if checked:
            export["max_abs_diff"] = max(checked.values()) if release.one_difference else checked
        if release.verified_on:
            export["verified_on"] = release.verified_on
        export |= release.check(staging)
        release.write_files(staging)
        card = {**release.card, **release.measure(staging)}
        card["export"] = export | card.get("export", {})
        return publish_version(
            staging, models_dir, release.name, release.config, card, release.describe, version
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when published


# ---------------------------------------------------------------------------------------------
# The repository on disk


def next_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def latest_version(model_dir: Path) -> Path:
    """The highest integer version folder of a model (the one the service serves)."""
    versions = [p for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    if not versions:
        raise FileNotFoundError(f"no version of {model_dir.name} in {model_dir.parent}")
    return max(versions, key=lambda p: int(p.name))


def library_versions() -> dict[str, str]:
    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def publish_version(
    staging: Path,
    models_dir: Path,
    name: str,
    config: dict[str, Any],
    card: dict[str, Any],
    describe: Callable[[dict[str, Any]], str],
    version: int | None = None,
) -> Path:
    """Move a fully written staging folder into `models_dir/name/<version>` and write the config.

    The card gets the version, a timestamp, library versions and the sha256 of every file, so
    nothing about the shipped files is typed by hand; card.md is written from it.
    """
    model_dir = models_dir / name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = version or next_version(model_dir)
    target = model_dir / str(version)
    if target.exists():
        shutil.rmtree(target)
    if "generation" in config:  # a generator: how this version samples, whatever the next does
        for section in GENERATOR_SECTIONS:  # its own, read by the service over config.json's
            write_json(staging / f"{section}.json", config.get(section, {}))
    card = {
        "name": name,
        "version": version,
        "created": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        **card,
        "versions": library_versions(),
        "files": {
            p.name: {"sha256": sha256_of(p), "bytes": p.stat().st_size}
            for p in sorted(staging.iterdir())
            if p.suffix in {".onnx", ".json"} and p.name != "card.json"
        },
    }
    write_json(staging / "card.json", card)
    (staging / "card.md").write_text(describe(card))
    shutil.move(staging, target)  # a rename: staged on the same file system
    write_json(model_dir / "config.json", {"name": name, **config})
    print(f"published {target}", flush=True)
    return target
