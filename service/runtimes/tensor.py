"""The tensor-model runtime: what every served model is.

A `TensorModel` owns one model version's onnxruntime graphs, its dynamic batcher and its
sequences (implicit state), and answers Open Inference Protocol inference: inputs checked
against the completed config, `reshape` applied, optional inputs left out, stateful models run
in sequence order with their state kept between requests. Task runtimes (classifier, language
model, image generator) are subclasses that add what their task needs in typed fields.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from service import tracing
from service.errors import InvalidInput, ModelLoadError
from service.metrics import Metrics
from service.modelconfig import (
    ModelConfig,
    StateSpec,
    TensorSpec,
    VersionPolicy,
    Warmup,
    WarmupInput,
)
from service.protocol.types import ModelMetadata, TensorMetadata
from service.repository import Repository
from service.runtime import CPU, Graph, pruned_graph
from service.scheduling.dynamic_batcher import Batcher, BatchPolicy, Runs
from service.scheduling.sequence_batcher import SequenceId, SequenceStore, sequence_request
from service.scheduling.wide_batches import MIN_SIZE, WideBatches
from service.settings import Settings
from service.stats import ModelStats
from service.tensors import NUMPY_DTYPES, parse_bytes_elements

log = logging.getLogger(__name__)
SEQUENCE_PARAMETERS = frozenset({"sequence_id", "sequence_start", "sequence_end"})


@dataclass(frozen=True)
class Serving:
    """What the server lends every runtime: settings, metrics, the inference thread pool and
    the keeper of sequence state."""

    settings: Settings
    metrics: Metrics
    executor: Executor
    sequences: SequenceStore


class TensorModel:
    """One loaded version of any ONNX model, served over the Open Inference Protocol."""

    task: ClassVar[str | None] = None
    noun: ClassVar[str] = "a tensor model"  # what a task endpoint says it wanted instead
    # NaN and infinity in inputs: a user's model may take them (a scikit-learn imputer reads
    # NaN as missing); the task models were never trained on them and refuse them.
    finite_inputs: ClassVar[bool] = False

    def __init__(
        self,
        config: ModelConfig,
        version: int,
        graphs: dict[str, Graph],
        card: dict[str, Any] | None,
        serving: Serving,
    ) -> None:
        self.name = config.name
        self.version = version
        self.config = config
        self.graphs = graphs  # "model" is model.onnx; config graphs add roles
        # what protocol requests run: model.onnx pruned to the outputs they may ask for (set
        # in prepare; the whole graph stays for the task's `internal_outputs`)
        self.protocol = graphs["model"]
        self.card = card
        self.serving = serving
        self.labels = (self.name, str(version))  # metric labels
        self.key = sequence_key(self.name, version, graphs["model"])
        self.output_types = {s.name: s.datatype for s in config.outputs}
        self.input_names = frozenset(s.name for s in config.inputs)
        self.input_dtypes = [(s, NUMPY_DTYPES[s.datatype]) for s in config.inputs]
        self.reshapes = any(s.reshape is not None for s in config.inputs + config.outputs)
        self.output_labels: dict[str, tuple[str, ...]] = {}  # classification extension
        self.initial_state: dict[str, np.ndarray] = {}  # per state input, one row
        self.batcher: Batcher | None = None  # protocol requests'
        self.internal_batcher: Batcher | None = None  # requests for the internal outputs too
        # graph outputs the task reads but the config does not declare: never served over V2
        self.internal_outputs: tuple[str, ...] = ()
        self.stats = ModelStats()  # Triton's statistics extension
        # Set by the registry when this version would replace a serving one: then a failed
        # automatic warm-up refuses it rather than swap a working model for a failing one.
        self.replaces_serving = False

    # -- loading ---------------------------------------------------------------------------------
    def prepare(self, repository: Repository) -> None:
        """Read what the config names (label files, initial states), make the batcher and warm
        up. Subclasses extend it with their task's resources; errors are ModelLoadError."""
        for spec in self.config.outputs:
            if spec.label_filename:
                path = repository.model_file(self.name, spec.label_filename, "label_filename")
                self.output_labels[spec.name] = tuple(path.read_text().splitlines())
            elif self.config.labels:  # config.json's labels name every output's classes
                self.output_labels[spec.name] = self.config.labels
        sequence = self.config.sequence_batching
        for state in sequence.states if sequence else ():
            self.initial_state[state.input_name] = self._initial(state, repository)
        self._prune()
        for sample in self.config.warmup:
            self._warm_up(sample, repository)
        if not self.config.warmup:
            self._warm_up_automatically()
        policy = batch_policy(self.config, self.serving.settings)
        if policy is not None and self.config.sequence_batching is None:
            self.batcher = self._batcher(self.protocol, policy)
            internal = self.protocol is not self.primary
            self.internal_batcher = self._batcher(self.primary, policy) if internal else None

    def _batcher(self, graph: Graph, policy: BatchPolicy) -> Batcher:
        serving = self.serving
        runs = self._widened(graph)
        return Batcher(runs, policy, serving.executor, serving.metrics, self.labels, self.stats)

    def _widened(self, graph: Graph) -> Runs:
        """The graph, with a second session on more threads for its big batches where those
        run faster on it (service/scheduling/wide_batches.py)."""
        settings = self.serving.settings
        threads = settings.wide_batch_threads or len(os.sched_getaffinity(0))
        own = graph.settings.intra_op_threads  # 0: onnxruntime's default, a thread per core
        if (
            own == 0
            or own >= threads
            or self.config.intra_op_threads is not None  # the model pins them
            or self.config.max_batch_size < MIN_SIZE
            or graph.provider != CPU
            or graph.size_mb() > settings.wide_batch_max_mb
        ):
            return graph
        name = f"{self.name} version {self.version}"
        return WideBatches(graph, lambda: graph.with_threads(threads), name)

    def _prune(self) -> None:
        """Protocol requests run model.onnx without the nodes only other outputs need: the
        whole graph stays only where the task reads `internal_outputs`."""
        if not self.serving.settings.prune_outputs:
            return
        sequence = self.config.sequence_batching
        served = [s.name for s in self.config.outputs]
        served += [s.output_name for s in sequence.states] if sequence else []
        if set(self.primary.output_names) <= set(served):
            return
        pruned = pruned_graph(self.primary, served)
        if pruned is None:
            return
        log.info(
            "model %r version %s: protocol requests run its graph pruned to %s",
            self.name,
            self.version,
            served,
        )
        self.protocol = pruned
        if not self.internal_outputs:  # nothing reads the other outputs: the whole graph goes
            self.graphs = {**self.graphs, "model": pruned}

    def _initial(self, state: StateSpec, repository: Repository) -> np.ndarray:
        dtype = NUMPY_DTYPES[state.datatype]
        dims = tuple(1 if d < 0 else d for d in state.dims)
        initial = state.initial
        if initial is None or initial.zero or initial.data_file is None:
            return np.zeros(dims, dtype=dtype)
        path = repository.model_file(
            self.name, f"initial_state/{initial.data_file}", "initial_state data_file"
        )
        raw = np.frombuffer(path.read_bytes(), dtype=dtype.newbyteorder("<"))
        if raw.size != math.prod(dims):
            raise ModelLoadError(
                f"model {self.name!r}: initial state {initial.data_file!r} holds {raw.size} "
                f"values, the state {state.input_name!r} needs {math.prod(dims)}"
            )
        return raw.astype(dtype).reshape(dims)

    def _warm_up(self, sample: Warmup, repository: Repository) -> None:
        """Triton's model_warmup: the config asked for it, so its failure fails the load."""
        rng = np.random.default_rng(0)
        try:
            feeds = {
                name: self._warm_up_input(spec, sample.batch_size, repository, rng)
                for name, spec in sample.inputs.items()
            }
            feeds = {**feeds, **self._state_feeds()}
            for _ in range(max(1, sample.count)):
                for graph in self._served_graphs():
                    graph.run(self.graph_feeds(feeds))
        except Exception as exc:  # a short data file, a graph that fails: this model only
            reason = exc.message if isinstance(exc, ModelLoadError) else str(exc)
            raise ModelLoadError(
                f"model {self.name!r} version {self.version}: warm-up {sample.name!r} failed: "
                f"{reason}"
            ) from None

    def _warm_up_input(
        self, spec: WarmupInput, batch_size: int, repository: Repository, rng: np.random.Generator
    ) -> np.ndarray:
        dtype = NUMPY_DTYPES[spec.datatype]
        shape = ([batch_size] if self.config.batches else []) + list(spec.dims)
        count = math.prod(shape)
        if spec.fill == "file" and spec.data_file:
            path = repository.model_file(self.name, f"warmup/{spec.data_file}", "warm-up file")
            raw = path.read_bytes()
            if spec.datatype == "BYTES":  # Triton's layout: 4-byte little-endian length, bytes
                return parse_bytes_elements(raw, count).reshape(shape)
            data = np.frombuffer(raw, dtype=dtype.newbyteorder("<"))
            if data.size < count:
                raise ModelLoadError(
                    f"{spec.data_file!r} holds {data.size} {spec.datatype} values, {count} needed"
                )
            return data[:count].astype(dtype).reshape(shape)
        if spec.datatype == "BYTES":
            fill = b"" if spec.fill == "zero" else rng.bytes(8)
            return np.full(shape, fill, dtype=object)
        if spec.fill == "random" and dtype.kind == "f":
            return rng.random(shape).astype(dtype)
        if spec.fill == "random" and dtype.kind in "iu":
            return rng.integers(0, 100, shape).astype(dtype)
        return np.zeros(shape, dtype=dtype)

    def _warm_up_automatically(self) -> None:
        """One zero inference where every shape is known, so the first request is not slow. A
        failure is only a warning (zeros are no test of a valid model: some refuse them), except
        when this version would replace one that serves: a reload never swaps a model that
        answers for one that may not."""
        feeds = {}
        for spec in self.config.inputs:
            if spec.optional:
                continue
            if any(d < 0 for d in spec.dims) or spec.datatype == "BYTES":
                return
            shape = ([1] if self.config.batches else []) + list(spec.dims)
            feeds[spec.name] = np.zeros(shape, dtype=NUMPY_DTYPES[spec.datatype])
        feeds = {**feeds, **self._state_feeds()}
        try:
            for graph in self._served_graphs():
                graph.run(self.graph_feeds(feeds))
        except Exception as exc:
            message = f"model {self.name!r} version {self.version}: warm-up failed: {exc}"
            if self.replaces_serving:
                raise ModelLoadError(f"{message} (the serving version keeps serving)") from None
            log.warning("%s", message)

    def _served_graphs(self) -> list[Graph]:
        """model.onnx, and its pruned form where protocol requests run that."""
        return [self.primary] + ([self.protocol] if self.protocol is not self.primary else [])

    def _state_feeds(self) -> dict[str, np.ndarray]:
        """Initial state and control values for a warm-up call of a stateful model."""
        if self.config.sequence_batching is None:
            return {}
        return {**self._fresh_state(), **self._controls(0, True, True)}

    # -- serving -------------------------------------------------------------------------------
    @property
    def primary(self) -> Graph:
        return self.graphs["model"]

    @property
    def provider(self) -> str:
        return str(self.primary.provider)

    def effective_config(self) -> ModelConfig:
        """The config with what the server decided where it said nothing: the versions it
        loads, the calls that may run at once, the batching delay."""
        settings, config = self.serving.settings, self.config
        batching = config.dynamic_batching
        if batching is not None:
            delay_ms = settings.max_queue_delay_ms
            if delay_ms is not None or batching.max_queue_delay_us is None:
                batching = replace(batching, max_queue_delay_us=round((delay_ms or 0) * 1000))
        return replace(
            config,
            version_policy=config.version_policy or VersionPolicy("latest", settings.load_versions),
            instance_count=config.instance_count or settings.inference_threads,
            dynamic_batching=batching if settings.batching else None,
        )

    def metadata(self, versions: Sequence[int]) -> ModelMetadata:
        """The protocol's model metadata: inputs and outputs with the batch axis as -1."""
        batch = [-1] if self.config.max_batch_size > 0 else []
        return ModelMetadata(
            name=self.name,
            versions=[str(v) for v in versions],
            platform=self.config.platform,
            inputs=[
                TensorMetadata(name=s.name, datatype=s.datatype, shape=batch + list(s.dims))
                for s in self.config.inputs
            ],
            outputs=[
                TensorMetadata(name=s.name, datatype=s.datatype, shape=batch + list(s.dims))
                for s in self.config.outputs
            ],
            parameters={"task": self.config.task, "provider": self.provider},
        )

    def input_spec(self, name: str) -> TensorSpec:
        spec = self.config.input(name)
        if spec is None:
            raise InvalidInput(f"model {self.name!r} has no input {name!r}", param="inputs")
        return spec

    def check_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        """The task's own checks beyond shapes and types (graph indices...); none here."""

    async def infer(
        self,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str] | None = None,
        parameters: Mapping[str, Any] | None = None,
        internal: bool = False,
    ) -> dict[str, np.ndarray]:
        """Check `inputs` against the config, run the model (batched with other requests, or in
        its sequence) and return the requested outputs in the config's shapes; `internal`: the
        `internal_outputs` too (for the task's own endpoint, never for the protocol's)."""
        names = self.requested_outputs(output_names)
        if internal:
            names += [name for name in self.internal_outputs if name not in names]
        validate_inputs(self, inputs)
        self.check_inputs(inputs)
        sequence_id, start, end = (
            sequence_request(parameters)
            if parameters and not SEQUENCE_PARAMETERS.isdisjoint(parameters)
            else (None, False, False)
        )
        feeds = self.graph_feeds(inputs) if self.reshapes else inputs
        if self.config.sequence_batching is not None:
            outputs = await self._run_in_sequence(feeds, sequence_id, start, end)
        elif sequence_id is not None:
            raise InvalidInput(
                f"model {self.name!r} keeps no state between requests (its config has no "
                "sequence_batching): leave out sequence_id, sequence_start and sequence_end",
                param="parameters.sequence_id",
            )
        elif self.batcher is not None:
            batcher, graph = self.batcher, self.protocol
            if internal and self.internal_batcher is not None:
                batcher, graph = self.internal_batcher, self.primary
            results = await batcher.submit(feeds, self.deadline())
            outputs = dict(zip(graph.output_names, results, strict=True))
        else:
            graph = self.primary if internal else self.protocol
            results = await self.run_graph(graph, feeds, names)
            outputs = dict(zip(names, results, strict=True))
        if not self.reshapes:
            return {name: outputs[name] for name in names}
        return {name: self._config_shape(name, outputs[name]) for name in names}

    def requested_outputs(self, output_names: Sequence[str] | None) -> list[str]:
        known = self.output_types  # the config's outputs, in its order
        if not output_names:
            return list(known)
        for name in output_names:
            if name not in known:
                raise InvalidInput(
                    f"model {self.name!r} has no output {name!r}; its outputs are {list(known)}",
                    param="outputs",
                )
        return list(output_names)

    def graph_feeds(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The request's tensors as the graph takes them: `reshape` applied."""
        feeds = dict(inputs)
        for spec in self.config.inputs:
            if spec.reshape is not None and spec.name in feeds:
                array = feeds[spec.name]
                batch = array.shape[:1] if self.config.batches else ()
                feeds[spec.name] = _reshaped(array, batch + spec.reshape, spec.name)
        return feeds

    def _config_shape(self, name: str, array: np.ndarray) -> np.ndarray:
        spec = self.config.output(name)
        if spec is None or spec.reshape is None:
            return array
        batch = array.shape[:1] if self.config.batches else ()
        return _reshaped(array, batch + spec.dims, name)

    async def _run_in_sequence(
        self,
        feeds: Mapping[str, np.ndarray],
        sequence_id: SequenceId | None,
        start: bool,
        end: bool,
    ) -> dict[str, np.ndarray]:
        """Triton's sequence batcher with implicit state: this sequence's state is fed to the
        graph's state inputs and replaced by its state outputs; requests of one sequence run one
        at a time, in order."""
        if sequence_id is None:
            raise InvalidInput(
                f"model {self.name!r} is stateful: every request needs parameters.sequence_id "
                "(and sequence_start on the first, sequence_end on the last)",
                param="parameters.sequence_id",
            )
        if self.config.batches and any(len(v) != 1 for v in feeds.values()):
            raise InvalidInput(
                "a request of a sequence carries one item (batch size 1)", param="inputs"
            )
        states = self.config.sequence_batching.states if self.config.sequence_batching else ()
        async with self.serving.sequences.session(self.key, sequence_id, start, end) as slot:
            state = slot.state if slot.state is not None else self._fresh_state()
            full = {**feeds, **state, **self._controls(sequence_id, start, end)}
            results = await self.run_graph(self.protocol, full)
            outputs = dict(zip(self.protocol.output_names, results, strict=True))
            slot.state = {s.input_name: outputs[s.output_name] for s in states}
        store, metrics = self.serving.sequences, self.serving.metrics
        metrics.sequences_live.labels(*self.labels).set(store.live(self.key))
        metrics.sequence_state_bytes.labels(*self.labels).set(store.state_bytes(self.key))
        return outputs

    def _fresh_state(self) -> dict[str, np.ndarray]:
        batch = (1,) if self.config.batches else ()
        return {k: v.reshape(batch + v.shape) for k, v in self.initial_state.items()}

    def _controls(self, sequence_id: SequenceId, start: bool, end: bool) -> dict[str, np.ndarray]:
        """The control tensors the config declares (Triton: shape [1], with the batch axis)."""
        sequence = self.config.sequence_batching
        shape = (1, 1) if self.config.batches else (1,)
        feeds = {}
        for control in sequence.controls if sequence else ():
            dtype = NUMPY_DTYPES[control.datatype]
            if control.kind == "CORRID":
                value: Any = str(sequence_id).encode() if dtype.kind == "O" else sequence_id
                if dtype.kind != "O" and not isinstance(sequence_id, int):
                    raise InvalidInput(
                        f"model {self.name!r} takes integer sequence ids", param="sequence_id"
                    )
            else:
                flag = {"START": start, "END": end, "READY": True}[control.kind]
                value = control.true_value if flag else control.false_value
            feeds[control.name] = np.full(shape, value, dtype=dtype)
        return feeds

    def deadline(self) -> float | None:
        timeout = self.serving.settings.request_timeout_s
        return time.perf_counter() + timeout if timeout > 0 else None

    async def run(
        self, role: str, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> list[np.ndarray]:
        """Run the graph of `role` in the inference thread pool, timing queue and compute."""
        return await self.run_graph(self.graphs[role], feeds, output_names)

    async def run_graph(
        self,
        graph: Graph,
        feeds: Mapping[str, np.ndarray],
        output_names: Sequence[str] | None = None,
    ) -> list[np.ndarray]:
        """Run `graph` in the inference thread pool, timing queue and compute."""
        metrics = self.serving.metrics
        queued = time.perf_counter()
        batch = _batch_size(feeds) if self.config.batches else 1
        times = [queued, queued]  # the run's start and end, set on the inference thread
        trace = tracing.current()
        queued_ns = 0 if trace is None else tracing.now_ns()

        def work() -> list[np.ndarray]:
            started = time.perf_counter()
            metrics.queue_duration.labels(*self.labels).observe(started - queued)
            if trace is not None:
                model, version = self.labels
                attributes = {"seedserve.model": model, "seedserve.model_version": version}
                tracing.record("queue", trace, queued_ns, tracing.now_ns(), attributes)
            results = graph.run(feeds, output_names)
            ended = time.perf_counter()
            metrics.compute_duration.labels(*self.labels).observe(ended - started)
            times[:] = started, ended
            return results

        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self.serving.executor, tracing.bind(work))
        metrics.batch_size.labels(*self.labels).observe(batch)
        metrics.inference_count.labels(*self.labels).inc(batch)
        # statistics on the event loop, so that their integer adds need no lock; the inputs go
        # to onnxruntime as they are (nothing to stack): compute_input takes no time here
        started, ended = times
        self.stats.queued(int((started - queued) * 1e9))
        self.stats.executed(
            batch,
            1,
            input_ns=0,
            infer_ns=int((ended - started) * 1e9),
            output_ns=int((time.perf_counter() - ended) * 1e9),
        )
        return results

    async def close(self) -> None:
        """Answer what is queued, then stop this version's batchers. Its sequences are the data
        plane's to free: a reload of the same files goes on with them."""
        for batcher in (self.batcher, self.internal_batcher):
            if batcher is not None:
                await batcher.close()


def sequence_key(name: str, version: int, graph: Graph) -> str:
    """Where a version's sequences live in the store: the same for every worker and for a
    reload of the same file, another once the file changes (its state may not fit)."""
    stat = graph.path.stat()
    return f"{name}/{version}/{stat.st_mtime_ns:x}-{stat.st_size:x}"


def batch_policy(config: ModelConfig, settings: Settings) -> BatchPolicy | None:
    """The dynamic batching policy of a model's primary graph: its config, then settings."""
    batching = config.dynamic_batching
    if not settings.batching or config.max_batch_size <= 0 or batching is None:
        return None
    if settings.max_queue_delay_ms is not None:
        delay_s = settings.max_queue_delay_ms / 1e3
    else:
        delay_s = (batching.max_queue_delay_us or 0) / 1e6
    preferred = batching.preferred_batch_sizes
    return BatchPolicy(
        max_batch_size=config.max_batch_size,
        max_queue_delay_s=delay_s,
        preferred_batch_sizes=tuple(p for p in preferred if 0 < p <= config.max_batch_size),
        max_queue_size=settings.max_queue_size,
        concurrency=config.instance_count or settings.inference_threads,
        inline_max_s=settings.inline_max_ms / 1e3,
        pipeline=settings.pipeline_batches,
    )


def _reshaped(array: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    try:
        return array.reshape(shape)
    except ValueError:
        raise InvalidInput(
            f"tensor {name!r} of shape {list(array.shape)} cannot take the config's reshape "
            f"{list(shape)}",
            param=name,
        ) from None


def _batch_size(feeds: Mapping[str, np.ndarray]) -> int:
    first = next(iter(feeds.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


def validate_inputs(model: TensorModel, inputs: Mapping[str, np.ndarray]) -> None:
    """Reject anything onnxruntime would choke on, naming the tensor and the problem. (On the
    hot path of every request: plain loops, what can be is worked out at load.)"""
    config = model.config
    if not model.input_names.issuperset(inputs):
        unknown = sorted(set(inputs) - model.input_names)
        raise InvalidInput(
            f"model {model.name!r} has no input {unknown[0]!r}; its inputs are "
            f"{sorted(model.input_names)}",
            param="inputs",
        )
    batching = config.max_batch_size > 0
    batch_size = None
    for spec, dtype in model.input_dtypes:
        array = inputs.get(spec.name)
        if array is None:
            if spec.optional:
                continue
            raise InvalidInput(f"input {spec.name!r} is missing", param="inputs")
        if array.dtype != dtype:
            raise InvalidInput(
                f"input {spec.name!r} must be {spec.datatype}", param=f"inputs.{spec.name}.datatype"
            )
        shape = array.shape
        if batching:
            if not shape:
                raise InvalidInput(f"input {spec.name!r} needs a batch axis", param=spec.name)
            if not 1 <= shape[0] <= config.max_batch_size:
                raise InvalidInput(
                    f"input {spec.name!r}: batch size {shape[0]} is outside 1..{config.max_batch_size}",
                    param=f"inputs.{spec.name}.shape",
                )
            if batch_size is not None and shape[0] != batch_size:
                raise InvalidInput(
                    f"inputs disagree on the batch size: {sorted({batch_size, shape[0]})}",
                    param="inputs",
                )
            batch_size = shape[0]
            shape = shape[1:]
        if not _fits(shape, spec.dims):
            want = ([-1] if batching else []) + list(spec.dims)
            raise InvalidInput(
                f"input {spec.name!r} has shape {list(array.shape)}, expected {want} (-1 = any)",
                param=f"inputs.{spec.name}.shape",
            )
        if 0 in shape:
            raise InvalidInput(f"input {spec.name!r} has an empty axis", param=spec.name)
        if model.finite_inputs and dtype.kind == "f" and not np.isfinite(array).all():
            raise InvalidInput(f"input {spec.name!r} contains NaN or infinity", param=spec.name)


def _fits(shape: tuple[int, ...], dims: tuple[int, ...]) -> bool:
    if len(shape) != len(dims):
        return False
    for size, dim in zip(shape, dims):  # noqa: B905, SIM110 (lengths checked; a loop beats all() here)
        if dim >= 0 and dim != size:
            return False
    return True
