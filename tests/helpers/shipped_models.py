"""The shipped models/ folder, copied for a test's own repository (hard links where possible)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

MODELS = Path(__file__).resolve().parents[2] / "models"
AUSTEN_LMS = sorted(p.name for p in MODELS.glob("*-austen") if (p / "config.json").is_file())


def link_or_copy(source: str, destination: str) -> object:
    """shutil.copytree's copy_function: a hard link (no bytes copied), else a copy."""
    try:
        os.link(source, destination)
        return destination
    except OSError:
        return shutil.copy2(source, destination)


def copy_models(names: list[str], root: Path) -> Path:
    """models/<name> for each name under root (made if missing); returns root."""
    for name in names:
        shutil.copytree(MODELS / name, root / name, copy_function=link_or_copy)
    return root
