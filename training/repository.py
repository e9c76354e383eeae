"""Writing model versions into the repository the service reads (see docs/model-repository.md)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import onnx
import onnxruntime

DEFAULT_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def next_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def library_versions() -> dict[str, str]:
    import torch  # only training has torch

    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def write_json(path: Path, data: Any) -> None:
    """Write through a temporary file and a rename: a service reading the file while it is
    rewritten (config.json of a live model) sees the old or the new content, never half."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(partial, path)


def publish_version(
    staging: Path,
    models_dir: Path,
    name: str,
    config: dict[str, Any],
    card: dict[str, Any],
    version: int | None = None,
) -> Path:
    """Move a fully written staging folder into `models_dir/name/<version>` and write the config.

    The card gets the version, a timestamp, library versions and the sha256 of every file, so
    nothing about the shipped files is typed by hand. The folder appears in one rename, so a
    service polling the repository never sees a half-written version.
    """
    model_dir = models_dir / name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = version or next_version(model_dir)
    target = model_dir / str(version)
    if target.exists():
        shutil.rmtree(target)
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
    staging.rename(target) if staging.parent == model_dir else shutil.move(str(staging), target)
    write_json(model_dir / "config.json", {"name": name, **config})
    return target
