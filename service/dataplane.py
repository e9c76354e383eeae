"""The data plane: picks up loads and unloads (draining what they replace), hands inference to
the model's runtime, runs generation loops off the event loop, and records every request's
outcome and timings. Routers translate HTTP and call this."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from service import tracing
from service.errors import InvalidInput, Overloaded
from service.metrics import Metrics
from service.protocol.v2 import InferRequest, OutputTensor, RequestedOutput, top_classes
from service.registry import Registry
from service.runtimes import TensorModel
from service.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


class Tracking:
    """One request's `DataPlane.track` (a class, not a generator-based context manager: it is
    entered by every request)."""

    __slots__ = ("children", "model", "start")

    def __init__(self, children: _Tracked, model: TensorModel) -> None:
        self.children = children
        self.model = model
        self.start = 0.0

    async def __aenter__(self) -> None:
        self.start = time.perf_counter()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        took = time.perf_counter() - self.start
        outcome = _outcome(kind)
        self.children.requests(outcome).inc()
        self.children.duration.observe(took)
        self.model.stats.finished(outcome == "success", int(took * 1e9))


def _outcome(kind: type[BaseException] | None) -> str:
    """A request's outcome label from what ended it: the client went away or the server is
    stopping (cancelled), its input (invalid), a full queue (rejected), any other error; a
    generator closed early (GeneratorExit) counts as a success, as nothing failed."""
    if kind is None:
        return "success"
    if issubclass(kind, asyncio.CancelledError):
        return "cancelled"
    if issubclass(kind, InvalidInput):
        return "invalid"
    if issubclass(kind, Overloaded):
        return "rejected"
    return "error" if issubclass(kind, Exception) else "success"


class _Tracked:
    """The request metrics of one model version, bound to its labels once (prometheus-client's
    `labels()` takes a lock and builds the key at every call)."""

    def __init__(self, metrics: Metrics, labels: tuple[str, str]) -> None:
        self.duration = metrics.request_duration.labels(*labels)
        self._requests = metrics.inference_requests
        self._labels = labels
        self._by_outcome: dict[str, Any] = {}

    def requests(self, outcome: str) -> Any:
        counter = self._by_outcome.get(outcome)
        if counter is None:
            counter = self._by_outcome[outcome] = self._requests.labels(*self._labels, outcome)
        return counter


class DataPlane:
    def __init__(self, registry: Registry, metrics: Metrics, settings: Settings) -> None:
        self.registry = registry
        self.metrics = metrics
        self.settings = settings
        self.executor = registry.serving.executor
        # Generation loops hold a thread for many steps: keep them off the inference pool.
        self.task_executor = ThreadPoolExecutor(settings.task_threads, thread_name_prefix="task")
        self._tracked: dict[tuple[str, str], _Tracked] = {}  # by model version
        self._tasks_running: dict[tuple[str, int], int] = {}

    async def close(self) -> None:
        for state in list(self.registry.models.values()):
            for model in state.versions.values():
                await model.close()
        await self.registry.serving.sequences.close()
        self.task_executor.shutdown(wait=True)
        self.executor.shutdown(wait=True)

    async def load(self, name: str) -> None:
        """(Re)load a model in a thread; the old versions serve until the swap, then drain."""
        replaced = await asyncio.to_thread(self.registry.load, name)
        await self._drain(replaced)

    async def unload(self, name: str) -> None:
        await self._drain(self.registry.unload(name))

    async def _drain(self, models: list[TensorModel]) -> None:
        served = {m.key for s in self.registry.models.values() for m in s.versions.values()}
        for model in models:
            await model.close()
            if model.config.sequence_batching is not None and model.key not in served:
                await self.registry.serving.sequences.drop(model.key)

    async def run_task(
        self,
        model: TensorModel,
        work: Callable[[threading.Event], T],
        disconnected: Callable[[], Awaitable[bool]] | None = None,
    ) -> T:
        """Run a long task (a sampling or decoding loop) in the task pool.

        `work` gets an Event that is set when the client goes away; it should check it between
        steps and stop. Beyond `max_concurrent_generations` per model the request is refused.
        """
        release = self.start_generation(model)
        cancel = threading.Event()
        job = asyncio.get_running_loop().run_in_executor(
            self.task_executor, tracing.bind(work), cancel
        )  # bound: the loop's steps and onnxruntime calls are traced under the request
        try:
            while disconnected is not None and not job.done():
                done, _ = await asyncio.wait({job}, timeout=0.1)
                if not done and await disconnected():
                    cancel.set()
                    break
            return await job
        finally:
            cancel.set()  # also stops the work when this coroutine itself is cancelled
            # Nobody awaits `job` once this coroutine is cancelled: take its outcome so asyncio
            # does not log "exception was never retrieved" for a stopped task.
            job.add_done_callback(lambda f: f.cancelled() or f.exception())
            release()

    def start_generation(self, model: TensorModel) -> Callable[[], None]:
        """Count one generation against `model`'s `max_concurrent_generations` (Overloaded
        beyond it) and in the in-flight gauge; call the returned function (on the event loop,
        any number of times) once the generation has stopped."""
        key = (model.name, model.version)
        limit = self.settings.max_concurrent_generations
        if self._tasks_running.get(key, 0) >= limit:
            self.metrics.rejected.labels(model.name, str(model.version), "busy").inc()
            raise Overloaded(
                f"model {model.name!r} is running {limit} generations, its limit; retry later"
            )
        self._tasks_running[key] = self._tasks_running.get(key, 0) + 1
        gauge = self.metrics.tasks_in_flight.labels(model.name, str(model.version))
        gauge.inc()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._tasks_running[key] -= 1
                gauge.dec()

        return release

    def track(self, model: TensorModel) -> Tracking:
        """Count one request against `model` by outcome and time it end to end (in the
        metrics, and in the model's statistics as a success or a failure): `async with`."""
        children = self._tracked.get(model.labels)
        if children is None:
            children = self._tracked[model.labels] = _Tracked(self.metrics, model.labels)
        return Tracking(children, model)

    async def infer(
        self,
        model: TensorModel,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str] | None = None,
        parameters: Mapping[str, Any] | None = None,
        internal: bool = False,
    ) -> dict[str, np.ndarray]:
        """Run `model` on `inputs` (its runtime checks, batches or sequences them); `internal`:
        with the graph outputs its task reads beyond the config's (TensorModel.infer)."""
        return await model.infer(inputs, output_names, parameters, internal)

    async def infer_request(self, model: TensorModel, request: InferRequest) -> list[OutputTensor]:
        """One Open Inference Protocol request, whatever its transport: the outputs it asked
        for (all when it named none), typed, each as asked (binary or not, top classes)."""
        requested = request.outputs
        names = [o.name for o in requested] if requested is not None else None
        results = await model.infer(request.inputs, names, request.parameters)
        if requested is None:
            return [
                OutputTensor(name, model.output_types[name], array, request.binary_output)
                for name, array in results.items()
            ]
        return [_shaped(model, results[w.name], w) for w in requested]


def _shaped(model: TensorModel, array: np.ndarray, wanted: RequestedOutput) -> OutputTensor:
    """One requested output as asked: binary or JSON, the top classes where asked for them."""
    datatype = model.output_types[wanted.name]
    if wanted.classification:
        labels = model.output_labels.get(wanted.name, ())
        array = top_classes(array, wanted.classification, model.config.batches, labels)
        datatype = "BYTES"
    return OutputTensor(wanted.name, datatype, array, wanted.binary)
