"""The project's own `config.json` reader (what training/ writes beside every shipped model).

`task` is optional: a config without one describes a tensor model, served over the Open
Inference Protocol only. `inputs`/`outputs` may be left out: they are then completed from the
graph (service.autocomplete), as for a folder with no config at all.
"""

from __future__ import annotations

from typing import Any

from service.errors import ModelLoadError
from service.modelconfig import (
    DATATYPES,
    TASKS,
    DynamicBatching,
    ModelConfig,
    TensorSpec,
    VersionPolicy,
)

TASK_SECTIONS = {"preprocessing", "graph", "tokenizer", "step", "generation", "max_length", "ood"}
KNOWN_FIELDS = {
    "name", "task", "family", "dataset", "platform", "max_batch_size", "inputs", "outputs",
    "labels", "preprocessing", "graphs", "batching", "onnxruntime", "version_policy",
    # task sections, read by the task runtimes
    "graph", "tokenizer", "step", "generation", "max_length", "ood",
}  # fmt: skip


def read_config_json(data: Any, name: str) -> ModelConfig:
    if not isinstance(data, dict):
        raise ModelLoadError("config.json: must be a JSON object")
    if data.get("name", name) != name:
        raise ModelLoadError(
            f"config.json: name {data.get('name')!r} does not match folder {name!r}"
        )
    unknown = sorted(set(data) - KNOWN_FIELDS)
    if unknown:
        raise ModelLoadError(
            f"config.json: unknown fields {unknown} (known: {sorted(KNOWN_FIELDS)})"
        )
    task = data.get("task")
    if task is not None and task not in TASKS:
        raise ModelLoadError(
            f"config.json: task must be one of {list(TASKS)} or absent, not {task!r}"
        )
    stray = sorted(TASK_SECTIONS & set(data)) if task is None else []
    if stray:
        raise ModelLoadError(
            f"config.json: {stray} belong to a task model; give `task` or remove them"
        )
    if "ood" in data and task not in {None, "classification"}:
        raise ModelLoadError(
            f"config.json: ood (the out-of-distribution flag) is a classifier's, not a {task}'s"
        )
    platform = data.get("platform", "onnxruntime_onnx")
    if platform != "onnxruntime_onnx":
        raise ModelLoadError(f"config.json: platform must be onnxruntime_onnx, not {platform!r}")
    max_batch_size = _integer(data.get("max_batch_size", 0), "max_batch_size", 0, 2**31 - 1)
    return ModelConfig(
        name=name,
        task=task,
        source="config.json",
        inputs=_tensor_specs(data.get("inputs"), "inputs"),
        outputs=_tensor_specs(data.get("outputs"), "outputs"),
        max_batch_size=max_batch_size,
        dynamic_batching=_batching(data.get("batching")) if max_batch_size > 0 else None,
        version_policy=_version_policy(data.get("version_policy")),
        intra_op_threads=_threads(data.get("onnxruntime")),
        family=str(data.get("family", "")),
        dataset=str(data.get("dataset", "")),
        labels=tuple(str(x) for x in data.get("labels") or ()),
        graphs=_graphs(data.get("graphs")),
        raw=data,
    )


def _integer(value: Any, where: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ModelLoadError(f"config.json: {where} must be an integer in {low}..{high}")
    return value


def _tensor_specs(items: Any, where: str) -> tuple[TensorSpec, ...]:
    if items is None:
        return ()  # completed from the graph
    if not isinstance(items, list):
        raise ModelLoadError(f"config.json: {where} must be a list")
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


def _batching(section: Any) -> DynamicBatching:
    section = section or {}
    if not isinstance(section, dict):
        raise ModelLoadError("config.json: batching must be an object")
    delay = section.get("max_queue_delay_ms")
    preferred = section.get("preferred_batch_sizes") or []
    if not isinstance(preferred, list) or not all(
        isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in preferred
    ):
        raise ModelLoadError(
            "config.json: batching.preferred_batch_sizes must be positive integers"
        )
    if delay is not None and (not isinstance(delay, int | float) or delay < 0):
        raise ModelLoadError("config.json: batching.max_queue_delay_ms must be a number >= 0")
    return DynamicBatching(
        preferred_batch_sizes=tuple(preferred),
        max_queue_delay_us=None if delay is None else round(delay * 1000),
    )


def _version_policy(section: Any) -> VersionPolicy | None:
    """Triton's JSON form: {"latest": {"num_versions": N}}, {"all": {}}, {"specific": {...}}."""
    if section is None:
        return None
    if not isinstance(section, dict) or len(section) != 1:
        raise ModelLoadError("config.json: version_policy must have one of latest, all, specific")
    ((kind, body),) = section.items()
    body = body or {}
    if kind == "latest":
        count = _integer(body.get("num_versions", 1), "version_policy.latest.num_versions", 1, 1000)
        return VersionPolicy("latest", num_versions=count)
    if kind == "all":
        return VersionPolicy("all")
    if kind == "specific":
        versions = body.get("versions")
        if not isinstance(versions, list) or not versions:
            raise ModelLoadError("config.json: version_policy.specific.versions must be a list")
        return VersionPolicy(
            "specific",
            versions=tuple(
                _integer(v, "version_policy.specific.versions", 0, 2**62) for v in versions
            ),
        )
    raise ModelLoadError(f"config.json: unknown version_policy {kind!r}")


def _threads(section: Any) -> int | None:
    """`onnxruntime.intra_op_threads` pins a model's threads (the GNN does: onnxruntime's
    ScatterND (add) races over duplicate indices on several threads, issues #18048 and #23396)."""
    if section is not None and not isinstance(section, dict):
        raise ModelLoadError("config.json: onnxruntime must be an object")
    threads = (section or {}).get("intra_op_threads")
    if threads is None:
        return None
    return _integer(threads, "onnxruntime.intra_op_threads", 0, 256)


def _graphs(graphs: Any) -> dict[str, str]:
    graphs = graphs or {}
    if not isinstance(graphs, dict) or not all(
        isinstance(v, str) and v.endswith(".onnx") and "/" not in v and "\\" not in v
        for v in graphs.values()
    ):
        raise ModelLoadError(
            "config.json: graphs must map roles to .onnx file names in the version folder"
        )
    return dict(graphs)
