"""The registry: model name -> loaded versions. Loading a new version never takes down a working one."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import InvalidInput, ModelLoadError, ModelNotFound, ModelNotReady, ServiceError
from service.metrics import Metrics
from service.repository import ModelConfig, Repository, TensorSpec
from service.runtime import Graph
from service.settings import Settings
from service.tensors import NUMPY_DTYPES

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    name: str
    version: int
    config: ModelConfig
    graphs: dict[str, Graph]  # "model" is the primary graph
    card: dict[str, Any] | None
    resources: dict[str, Any] = field(default_factory=dict)  # task-specific: tokenizer, schedule...
    batchers: dict[str, Any] = field(
        default_factory=dict
    )  # graph role -> Batcher, made on first use

    @property
    def primary(self) -> Graph:
        return self.graphs["model"]

    @property
    def provider(self) -> str:
        return self.primary.provider

    def input_spec(self, name: str) -> TensorSpec:
        for spec in self.config.inputs:
            if spec.name == name:
                return spec
        raise InvalidInput(f"model {self.name!r} has no input {name!r}", param="inputs")


@dataclass
class ModelState:
    name: str
    versions: dict[int, LoadedModel] = field(default_factory=dict)
    reason: str | None = None  # why the model is not ready, when it is not

    @property
    def ready(self) -> bool:
        return bool(self.versions) and self.reason is None


# Task-specific preparation run at load (tokenizers, schedules); filled in by service.tasks.
Preparer = Callable[[LoadedModel, Repository], None]
PREPARERS: dict[str, Preparer] = {}


class Registry:
    def __init__(self, repository: Repository, settings: Settings, metrics: Metrics) -> None:
        self.repository = repository
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, ModelState] = {}
        self._lock = threading.Lock()  # loads run in threads; swaps are atomic under it

    def load_all(self) -> None:
        for name in self.repository.model_names():
            self.load(name)

    def load(self, name: str) -> list[LoadedModel]:
        """Load the newest version(s) of `name` fully (warm-up included), then swap them in.

        On failure nothing that serves changes: the error is raised and, if the model had no
        working version, recorded as its reason. Returns the versions the swap replaced, for the
        caller to drain.
        """
        try:
            loaded = self._load_versions(name)
        except ModelNotFound:
            raise  # nothing by that name in the repository: nothing to record
        except ServiceError as exc:
            log.error("model %s failed to load: %s", name, exc.message)
            with self._lock:
                state = self.models.setdefault(name, ModelState(name))
                if not state.versions:
                    state.reason = exc.message
                    self.metrics.model_ready.labels(name, "", "").set(0)
            raise
        with self._lock:
            old = self.models.get(name)
            self.models[name] = ModelState(name, loaded)
            self._clear_gauges(old)
            for version, model in loaded.items():
                self.metrics.model_ready.labels(name, str(version), model.provider).set(1)
            self._count_loaded()
        log.info("model %s loaded versions %s", name, sorted(loaded))
        return [m for v, m in (old.versions if old else {}).items() if loaded.get(v) is not m]

    def load_all_quietly(self) -> None:
        """Load every model; a broken one is reported not ready and does not stop the others."""
        for name in self.repository.model_names():
            with contextlib.suppress(ServiceError):  # already logged and recorded on its state
                self.load(name)

    def unload(self, name: str) -> list[LoadedModel]:
        """Stop serving `name`; returns the versions removed, for the caller to drain."""
        with self._lock:
            state = self.models.pop(name, None)
            if state is None:
                raise ModelNotFound(f"model {name!r} is not loaded")
            self._clear_gauges(state)
            self._count_loaded()
        log.info("model %s unloaded", name)
        return list(state.versions.values())

    def _clear_gauges(self, state: ModelState | None) -> None:
        if state is None:
            return
        for version, model in state.versions.items():
            with contextlib.suppress(KeyError):
                self.metrics.model_ready.remove(state.name, str(version), model.provider)
        with contextlib.suppress(KeyError):
            self.metrics.model_ready.remove(state.name, "", "")

    def _count_loaded(self) -> None:
        self.metrics.models_loaded.set(sum(len(s.versions) for s in self.models.values()))

    def get(self, name: str, version: str | None = None) -> LoadedModel:
        state = self.models.get(name)
        if state is None:
            raise ModelNotFound(f"model {name!r} not found")
        if not state.versions:
            raise ModelNotReady(f"model {name!r} is not ready: {state.reason}")
        if version is None or version == "":
            return state.versions[max(state.versions)]
        # isascii: str.isdigit also accepts digits such as '²' that int() refuses
        if not (version.isascii() and version.isdigit()) or int(version) not in state.versions:
            raise ModelNotFound(f"model {name!r} has no loaded version {version!r}")
        return state.versions[int(version)]

    def _load_versions(self, name: str) -> dict[int, LoadedModel]:
        config = self.repository.config(name)
        versions = self.repository.versions(name)
        if not versions:
            raise ModelLoadError(f"model {name!r} has no version folder")
        return {v: self._load_version(config, v) for v in versions[-self.settings.load_versions :]}

    def _load_version(self, config: ModelConfig, version: int) -> LoadedModel:
        name = config.name
        graphs: dict[str, Graph] = {}
        settings = model_settings(config, self.settings)
        for role, filename in {"model": "model.onnx", **config.graphs}.items():
            path = self.repository.graph_path(name, version, filename)
            try:
                graphs[role] = Graph(path, settings)
            except Exception as exc:  # onnxruntime raises its own types for corrupt files
                raise ModelLoadError(
                    f"model {name!r} version {version}: {filename}: {exc}"
                ) from None
        model = LoadedModel(name, version, config, graphs, self.repository.card(name, version))
        check_signature(model)
        prepare = PREPARERS.get(config.task)
        if prepare is not None:
            prepare(model, self.repository)
        warm_up(model)
        return model


def check_signature(model: LoadedModel) -> None:
    """The config must describe the primary graph's real inputs and outputs."""
    graph, config = model.primary, model.config
    for specs, tensors, what in (
        (config.inputs, graph.inputs, "input"),
        (config.outputs, graph.outputs, "output"),
    ):
        actual = {t.name: t for t in tensors}
        for spec in specs:
            tensor = actual.get(spec.name)
            if tensor is None:
                raise ModelLoadError(
                    f"model {model.name!r}: config {what} {spec.name!r} is not in model.onnx "
                    f"(it has {sorted(actual)})"
                )
            if tensor.datatype != spec.datatype:
                raise ModelLoadError(
                    f"model {model.name!r}: {what} {spec.name!r} is {tensor.datatype} in model.onnx "
                    f"but {spec.datatype} in config.json"
                )
            rank = len(spec.dims) + (1 if config.max_batch_size > 0 else 0)
            if len(tensor.shape) != rank:
                raise ModelLoadError(
                    f"model {model.name!r}: {what} {spec.name!r} has rank {len(tensor.shape)} in "
                    f"model.onnx but config.json implies {rank}"
                )


def warm_up(model: LoadedModel) -> None:
    """One inference at load, so a broken graph fails here and the first request is not slow."""
    config = model.config
    feeds = {}
    for spec in config.inputs:
        dims = [1 if d < 0 else d for d in spec.dims]
        shape = [1, *dims] if config.max_batch_size > 0 else dims
        feeds[spec.name] = np.zeros(shape, dtype=NUMPY_DTYPES[spec.datatype])
    try:
        model.primary.run(feeds)
    except Exception as exc:
        raise ModelLoadError(
            f"model {model.name!r} version {model.version}: warm-up failed: {exc}"
        ) from None


def model_settings(config: ModelConfig, settings: Settings) -> Settings:
    """The settings for a model's sessions: config.json's `onnxruntime` section may pin
    `intra_op_threads` (the GNN does: onnxruntime's ScatterND (add) races over duplicate indices
    when an operator runs on several threads, onnxruntime issues #18048 and #23396)."""
    section = config.raw.get("onnxruntime") or {}
    threads = section.get("intra_op_threads")
    if threads is None:
        return settings
    if not isinstance(threads, int) or isinstance(threads, bool) or not 0 <= threads <= 256:
        raise ModelLoadError(
            f"model {config.name!r}: onnxruntime.intra_op_threads must be an integer in 0..256"
        )
    return settings.model_copy(update={"intra_op_threads": threads})
