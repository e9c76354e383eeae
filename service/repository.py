"""Model repository discovery: which models and versions exist under `models/`, and their configs.

Only `.json` and `.onnx` files are ever read, and only paths that stay inside the repository.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.errors import ModelLoadError, ModelNotFound

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MAX_JSON_BYTES = 4 * 1024 * 1024
MAX_JSON_DEPTH = 64
DATATYPES = {
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
}  # fmt: skip
TASKS = {"classification", "language-model", "image-generation"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    dims: tuple[int, ...]  # without the batch axis when the model batches


@dataclass(frozen=True)
class ModelConfig:
    name: str
    task: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 0
    family: str = ""
    dataset: str = ""
    platform: str = "onnxruntime_onnx"
    labels: tuple[str, ...] = ()
    preprocessing: dict[str, Any] = field(default_factory=dict)
    graphs: dict[str, str] = field(default_factory=dict)
    batching: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)  # every section, task-specific ones included


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


def _tensor_specs(items: Any, where: str) -> tuple[TensorSpec, ...]:
    if not isinstance(items, list) or not items:
        raise ModelLoadError(f"config.json: {where} must be a non-empty list")
    specs = []
    for item in items:
        try:
            spec = TensorSpec(
                str(item["name"]), str(item["datatype"]), tuple(int(d) for d in item["dims"])
            )
        except (KeyError, TypeError, ValueError):
            raise ModelLoadError(
                f"config.json: each of {where} needs name, datatype and dims"
            ) from None
        if spec.datatype not in DATATYPES:
            raise ModelLoadError(
                f"config.json: {where} {spec.name!r} has unknown datatype {spec.datatype!r}"
            )
        specs.append(spec)
    return tuple(specs)


def parse_config(data: Any, name: str) -> ModelConfig:
    if not isinstance(data, dict):
        raise ModelLoadError("config.json: must be a JSON object")
    if data.get("name", name) != name:
        raise ModelLoadError(
            f"config.json: name {data.get('name')!r} does not match folder {name!r}"
        )
    task = data.get("task")
    if task not in TASKS:
        raise ModelLoadError(f"config.json: task must be one of {sorted(TASKS)}, not {task!r}")
    graphs = data.get("graphs") or {}
    if not isinstance(graphs, dict) or not all(
        isinstance(v, str) and v.endswith(".onnx") and "/" not in v and "\\" not in v
        for v in graphs.values()
    ):
        raise ModelLoadError(
            "config.json: graphs must map roles to .onnx file names in the version folder"
        )
    try:
        max_batch_size = int(data.get("max_batch_size", 0))
    except (TypeError, ValueError):
        raise ModelLoadError("config.json: max_batch_size must be an integer") from None
    return ModelConfig(
        name=name,
        task=task,
        inputs=_tensor_specs(data.get("inputs"), "inputs"),
        outputs=_tensor_specs(data.get("outputs"), "outputs"),
        max_batch_size=max_batch_size,
        family=str(data.get("family", "")),
        dataset=str(data.get("dataset", "")),
        platform=str(data.get("platform", "onnxruntime_onnx")),
        labels=tuple(str(x) for x in data.get("labels") or ()),
        preprocessing=dict(data.get("preprocessing") or {}),
        graphs=dict(graphs),
        batching=dict(data.get("batching") or {}),
        raw=data,
    )


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
        path = self.model_dir(name) / "config.json"
        if not path.is_file():
            raise ModelLoadError(f"model {name!r} has no config.json")
        return parse_config(read_json(path), name)

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
