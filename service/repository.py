"""Model repository discovery: which models and versions exist under `models/`, and their configs.

A model folder holds Triton's layout: `<version>/model.onnx` and, optionally, our `config.json`
or Triton's `config.pbtxt` (one of them; with neither, the config is completed from the graph).
Only configuration (`.json`, `.pbtxt`), `.onnx`, label and data files named by a config are
read, and only paths that stay inside the model's folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from service.config_json import read_config_json
from service.errors import ModelLoadError, ModelNotFound
from service.modelconfig import ModelConfig
from service.pbtxt import read_pbtxt

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MAX_JSON_BYTES = 4 * 1024 * 1024
MAX_JSON_DEPTH = 64
MAX_DATA_BYTES = 256 * 1024 * 1024  # a label, initial-state or warm-up file named by a config


def check_name(name: str, what: str = "model name") -> str:
    """Refuse any name that could reach outside the repository."""
    if not NAME_PATTERN.fullmatch(name) or name in {".", ".."} or ".." in name:
        raise ModelNotFound(f"invalid {what} {name!r}")
    return name


def _depth(value: Any, limit: int) -> int:
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


# config.json sections a version folder may hold for itself (`<version>/<section>.json`):
# config.json has the latest version's, an older version may differ in them. Training writes the
# generator ones into every generator version, and `ood` (the out-of-distribution flag fitted on
# that version) into every classifier version it measured.
GENERATOR_SECTIONS = ("inputs", "outputs", "graphs", "generation")
VERSION_SECTIONS = (*GENERATOR_SECTIONS, "ood")


def version_config(version_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """config.json's content with the sections `version_dir` keeps for itself
    (`<section>.json`, VERSION_SECTIONS) in their place; `config` itself when it keeps none."""
    own = {
        section: read_json(path)
        for section in VERSION_SECTIONS
        if (path := version_dir / f"{section}.json").is_file()
    }
    return {**config, **own} if own else config


def read_json(path: Path) -> Any:
    """Read a repository JSON file with bounded size and nesting depth."""
    if path.suffix != ".json":
        raise ModelLoadError(f"{path.name}: only .json files are read as configuration")
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise ModelLoadError(f"{path.name}: {size} bytes is over the {MAX_JSON_BYTES}-byte limit")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path.name}: not valid JSON ({exc})") from None
    if _depth(data, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise ModelLoadError(f"{path.name}: nested deeper than {MAX_JSON_DEPTH} levels")
    return data


class Repository:
    """The folder of models. Stateless: every call looks at the disk as it is now."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def model_names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and NAME_PATTERN.fullmatch(p.name)
        )

    def model_dir(self, name: str) -> Path:
        path = (self.root / check_name(name)).resolve()
        if path.parent != self.root:
            raise ModelNotFound(f"invalid model name {name!r}")
        if not path.is_dir():
            raise ModelNotFound(f"model {name!r} is not in the repository")
        return path

    def versions(self, name: str) -> list[int]:
        return sorted(
            int(p.name)
            for p in self.model_dir(name).iterdir()
            if p.is_dir() and p.name.isascii() and p.name.isdigit()  # int('²') fails
        )

    def config(self, name: str) -> ModelConfig:
        """The model's config as written: config.json, config.pbtxt, or none (then only its
        name: the rest is completed from the graph at load)."""
        folder = self.model_dir(name)
        json_path, pbtxt_path = folder / "config.json", folder / "config.pbtxt"
        if json_path.is_file() and pbtxt_path.is_file():
            raise ModelLoadError(
                f"model {name!r} has both config.json and config.pbtxt: keep one of them"
            )
        if pbtxt_path.is_file():
            if pbtxt_path.stat().st_size > MAX_JSON_BYTES:
                raise ModelLoadError(f"config.pbtxt: over the {MAX_JSON_BYTES}-byte limit")
            return read_pbtxt(pbtxt_path, name)
        if json_path.is_file():
            return read_config_json(read_json(json_path), name)
        return ModelConfig(name=name, source="none")

    def config_stamp(self, name: str) -> float:
        """Modification time of the model's config file (0 without one): a reload depends on it."""
        folder = self.model_dir(name)
        for filename in ("config.pbtxt", "config.json"):
            path = folder / filename
            if path.is_file():
                return path.stat().st_mtime
        return 0.0

    def model_file(self, name: str, relative: str, what: str) -> Path:
        """A file a config names (labels, initial state, warm-up data): inside the model folder."""
        folder = self.model_dir(name)
        path = (folder / relative).resolve()
        if not path.is_relative_to(folder) or not path.is_file():
            raise ModelLoadError(f"model {name!r}: {what} {relative!r} is not a file in {folder}")
        if path.stat().st_size > MAX_DATA_BYTES:
            raise ModelLoadError(
                f"model {name!r}: {what} {relative!r} is over {MAX_DATA_BYTES} bytes"
            )
        return path

    def version_dir(self, name: str, version: int) -> Path:
        path = self.model_dir(name) / str(version)
        if not path.is_dir():
            raise ModelNotFound(f"model {name!r} has no version {version}")
        return path

    def graph_path(self, name: str, version: int, filename: str) -> Path:
        path = (self.version_dir(name, version) / filename).resolve()
        if path.parent != self.version_dir(name, version).resolve() or path.suffix != ".onnx":
            raise ModelLoadError(
                f"graph {filename!r} must be an .onnx file inside the version folder"
            )
        if not path.is_file():
            raise ModelLoadError(f"model {name!r} version {version} has no {filename}")
        return path

    def card(self, name: str, version: int) -> dict[str, Any] | None:
        path = self.version_dir(name, version) / "card.json"
        if not path.is_file():
            return None
        card = read_json(path)
        return card if isinstance(card, dict) else None
