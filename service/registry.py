"""The registry: model name -> loaded versions (runtimes). Loading a new version never takes
down a working one. Each version's config is completed from its graph and its runtime chosen
from `service.runtimes.RUNTIMES` by the config's task."""

from __future__ import annotations

import contextlib
import logging
import threading
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from service.autocomplete import complete
from service.config_json import read_config_json
from service.errors import InvalidInput, ModelLoadError, ModelNotFound, ModelNotReady, ServiceError
from service.metrics import Metrics
from service.modelconfig import ModelConfig, VersionPolicy
from service.repository import Repository, version_config
from service.runtime import Graph
from service.runtimes import RUNTIMES, Serving, TensorModel
from service.scheduling.sequence_batcher import (
    FileStore,
    MemoryStore,
    SequenceLimits,
    SequenceStore,
)
from service.settings import Settings

log = logging.getLogger(__name__)
R = TypeVar("R", bound=TensorModel)


@dataclass
class ModelState:
    name: str
    versions: dict[int, TensorModel] = field(default_factory=dict)
    reason: str | None = None  # why the model is not ready, when it is not

    @property
    def ready(self) -> bool:
        return bool(self.versions) and self.reason is None


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str | None
    state: str  # READY or UNAVAILABLE
    reason: str | None


def _gone(model: TensorModel) -> str | None:
    """Say so when a serving version's files were deleted from the repository since it loaded."""
    missing = sorted(g.path.name for g in model.graphs.values() if not g.path.is_file())
    if not missing:
        return None
    return (
        f"{', '.join(missing)} no longer in the repository: the loaded copy serves until the "
        "model is unloaded or reloaded"
    )


class Registry:
    def __init__(
        self,
        repository: Repository,
        settings: Settings,
        metrics: Metrics,
        executor: Executor | None = None,
        sequences: SequenceStore | None = None,
    ) -> None:
        self.repository = repository
        self.settings = settings
        self.metrics = metrics
        self.serving = Serving(
            settings,
            metrics,
            executor or ThreadPoolExecutor(settings.inference_threads, thread_name_prefix="infer"),
            sequences or sequence_store(settings),
        )
        self.models: dict[str, ModelState] = {}
        self._lock = threading.Lock()  # loads run in threads; swaps are atomic under it

    def load(self, name: str) -> list[TensorModel]:
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

    def unload(self, name: str) -> list[TensorModel]:
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

    def ready(self) -> bool:
        """The server's readiness once started: a model ready (every model, with
        `strict_readiness`)."""
        states = list(self.models.values())
        if self.settings.strict_readiness:
            return bool(states) and all(s.ready for s in states)
        return any(s.ready for s in states)

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every model of the repository (and every one loaded) with its state: each loaded
        version READY, a model without one UNAVAILABLE with the reason."""
        entries = []
        for name in sorted(set(self.repository.model_names()) | set(self.models)):
            state = self.models.get(name)
            if state is not None and state.versions:
                entries += [
                    IndexEntry(name, str(v), "READY", _gone(model))
                    for v, model in sorted(state.versions.items())
                ]
            elif not ready_only:
                reason = state.reason if state is not None else "not loaded"
                entries.append(IndexEntry(name, None, "UNAVAILABLE", reason))
        return entries

    def get(self, name: str, version: str | None = None) -> TensorModel:
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

    def get_runtime(
        self, kind: type[R], name: str, version: str | None = None, *, param: str = "model"
    ) -> R:
        """The loaded model `name`, which must be of runtime `kind` (a task's endpoints serve
        only their task's models)."""
        model = self.get(name, version)
        if not isinstance(model, kind):
            what = (
                f"a {model.task} model"
                if model.task
                else "a tensor model (Open Inference Protocol only)"
            )
            raise InvalidInput(f"model {name!r} is {what}, not {kind.noun}", param=param)
        return model

    def _load_versions(self, name: str) -> dict[int, TensorModel]:
        config = self.repository.config(name)
        available = self.repository.versions(name)
        if not available:
            raise ModelLoadError(f"model {name!r} has no version folder")
        policy = config.version_policy or VersionPolicy("latest", self.settings.load_versions)
        versions = policy.choose(available)
        if not versions:
            raise ModelLoadError(
                f"model {name!r}: its version_policy selects none of the versions {available}"
            )
        return {v: self._load_version(config, v) for v in versions}

    def _load_version(self, config: ModelConfig, version: int) -> TensorModel:
        name = config.name
        graphs: dict[str, Graph] = {}
        settings = model_settings(config, self.settings)
        config = self._version_config(config, version)
        for role, filename in {"model": "model.onnx", **config.graphs}.items():
            path = self.repository.graph_path(name, version, filename)
            try:
                graphs[role] = Graph(path, settings)
            except Exception as exc:  # onnxruntime raises its own types for corrupt files
                raise ModelLoadError(
                    f"model {name!r} version {version}: {filename}: {exc}"
                ) from None
        primary = graphs["model"]
        try:
            completed = complete(
                config, primary.inputs, primary.outputs, self.settings.auto_max_batch_size
            )
        except ModelLoadError as exc:
            raise ModelLoadError(f"model {name!r} version {version}: {exc.message}") from None
        runtime = RUNTIMES[completed.task]
        model = runtime(
            completed, version, graphs, self.repository.card(name, version), self.serving
        )
        state = self.models.get(name)
        model.replaces_serving = state is not None and bool(state.versions)
        try:
            model.prepare(self.repository)
        except ServiceError:
            raise
        except Exception as exc:  # a task section of an unexpected shape: this model only
            raise ModelLoadError(f"model {name!r} version {version}: {exc}") from None
        if completed.sequence_batching is not None:
            self.serving.sequences.configure(model.key, self.sequence_limits(completed))
        return model

    def _version_config(self, config: ModelConfig, version: int) -> ModelConfig:
        """config.json with the sections this version keeps for itself (repository's
        `version_config`): training writes them into each generator version's folder, since
        config.json holds the latest version's and an older one may differ (a generator's
        latent size, graphs, sampling settings)."""
        if config.source != "config.json":
            return config
        raw = version_config(self.repository.version_dir(config.name, version), config.raw)
        if raw is config.raw:
            return config
        try:
            return read_config_json(raw, config.name)
        except ModelLoadError as exc:
            raise ModelLoadError(f"version {version}'s own sections: {exc.message}") from None

    def sequence_limits(self, config: ModelConfig) -> SequenceLimits:
        assert config.sequence_batching is not None, "only stateful models keep sequences"
        return SequenceLimits.for_model(
            config.sequence_batching,
            max_sequences=self.settings.max_sequences,
            max_state_bytes=self.settings.max_sequence_state_bytes,
        )


def sequence_store(settings: Settings) -> SequenceStore:
    """Where stateful models keep their sequences: in memory with one worker; with several, in
    files of the workers' shared folder, so any worker continues any sequence."""
    limits = default_sequence_limits(settings)
    if settings.cluster_dir is None:
        return MemoryStore(limits)
    return FileStore(settings.cluster_dir / "sequences", limits)


def default_sequence_limits(settings: Settings) -> SequenceLimits:
    """Until a model configures its own (idle time from its config), Triton's default idle."""
    return SequenceLimits(settings.max_sequences, settings.max_sequence_state_bytes, 1.0)


def model_settings(config: ModelConfig, settings: Settings) -> Settings:
    """The settings for a model's sessions: its config may pin onnxruntime's intra-op threads
    (the GNN does: onnxruntime's ScatterND (add) races over duplicate indices when an operator
    runs on several threads, onnxruntime issues #18048 and #23396) and choose the device
    (Triton's instance_group kind: KIND_CPU always runs on the CPU)."""
    update: dict[str, object] = {}
    if config.intra_op_threads is not None:
        update["intra_op_threads"] = config.intra_op_threads
    if config.device == "cpu":
        update["provider"] = "cpu"
    elif config.device == "gpu":
        update["provider"] = "cuda"
    return settings.model_copy(update=update) if update else settings
