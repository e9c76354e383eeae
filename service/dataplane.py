"""The data plane: validates tensors against a model, runs inference off the event loop, and
records every request's outcome and timings. Routers translate HTTP and call this."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TypeVar

import numpy as np

from service.batching import Batcher, BatchPolicy, Runs
from service.errors import InvalidInput, Overloaded, ServiceError
from service.metrics import Metrics
from service.registry import LoadedModel, Registry
from service.settings import Settings
from service.stepbatch import RunRows, StepBatcher
from service.tensors import NUMPY_DTYPES

log = logging.getLogger(__name__)
T = TypeVar("T")


class DataPlane:
    def __init__(self, registry: Registry, metrics: Metrics, settings: Settings) -> None:
        self.registry = registry
        self.metrics = metrics
        self.settings = settings
        self.executor = ThreadPoolExecutor(settings.inference_threads, thread_name_prefix="infer")
        # Generation loops hold a thread for many steps: keep them off the inference pool.
        self.task_executor = ThreadPoolExecutor(settings.task_threads, thread_name_prefix="task")
        self._tasks_running: dict[tuple[str, int], int] = {}

    async def close(self) -> None:
        for state in list(self.registry.models.values()):
            for model in state.versions.values():
                for batcher in model.batchers.values():
                    await batcher.close()
        self.task_executor.shutdown(wait=True)
        self.executor.shutdown(wait=True)

    async def load(self, name: str) -> None:
        """(Re)load a model in a thread; the old versions serve until the swap, then drain."""
        replaced = await asyncio.to_thread(self.registry.load, name)
        await self._drain(replaced)

    async def unload(self, name: str) -> None:
        await self._drain(self.registry.unload(name))

    async def _drain(self, models: list[LoadedModel]) -> None:
        for model in models:
            for batcher in model.batchers.values():
                await batcher.close()

    async def run_task(
        self,
        model: LoadedModel,
        work: Callable[[threading.Event], T],
        disconnected: Callable[[], Awaitable[bool]] | None = None,
    ) -> T:
        """Run a long task (a sampling or decoding loop) in the task pool.

        `work` gets an Event that is set when the client goes away; it should check it between
        steps and stop. Beyond `max_concurrent_generations` per model the request is refused.
        """
        release = self.start_generation(model)
        cancel = threading.Event()
        job = asyncio.get_running_loop().run_in_executor(self.task_executor, work, cancel)
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

    def start_generation(self, model: LoadedModel) -> Callable[[], None]:
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

    def policy(self, model: LoadedModel) -> BatchPolicy | None:
        """The batching policy of the model's primary graph: config.json, then settings."""
        config, settings = model.config, self.settings
        if not settings.batching or config.max_batch_size <= 0:
            return None
        delay_ms = settings.max_queue_delay_ms
        if delay_ms is None:
            delay_ms = float(config.batching.get("max_queue_delay_ms", 0.0))
        preferred = tuple(int(p) for p in config.batching.get("preferred_batch_sizes", ()))
        return BatchPolicy(
            max_batch_size=config.max_batch_size,
            max_queue_delay_s=delay_ms / 1e3,
            preferred_batch_sizes=tuple(p for p in preferred if 0 < p <= config.max_batch_size),
            max_queue_size=settings.max_queue_size,
            concurrency=settings.inference_threads,
        )

    def batcher(
        self, model: LoadedModel, role: str = "model", runs: Runs | None = None
    ) -> Batcher | None:
        """The dynamic batcher of `model`'s `role` (made on first use, with the model's policy;
        `runs` is what it calls, the primary graph by default), or None with batching off."""
        batcher = model.batchers.get(role)
        if batcher is None:
            policy = self.policy(model)
            if policy is None:
                return None
            labels = (model.name, str(model.version))
            graph = model.primary if runs is None else runs
            batcher = Batcher(graph, policy, self.executor, self.metrics, labels)
            model.batchers[role] = batcher
        return batcher

    def step_batcher(
        self, model: LoadedModel, run_rows: RunRows | None, max_rows: int
    ) -> StepBatcher | None:
        """The step batcher shared by `model`'s generations (made on first use; `run_rows` runs
        its denoiser over stacked rows); None when step batching is off or there is no denoiser."""
        if not self.settings.step_batching or run_rows is None:
            return None
        batcher: StepBatcher | None = model.resources.get("step_batcher")
        if batcher is None:
            labels = (model.name, str(model.version))
            compute = self.metrics.compute_duration.labels(*labels)

            def timed(feeds: Mapping[str, np.ndarray]) -> np.ndarray:
                started = time.perf_counter()
                output = run_rows(feeds)
                compute.observe(time.perf_counter() - started)
                return output

            def on_call(rows: int, generations: int) -> None:
                self.metrics.batch_size.labels(*labels).observe(rows)
                self.metrics.inference_count.labels(*labels).inc(rows)
                self.metrics.step_batch_generations.labels(*labels).observe(generations)

            batcher = StepBatcher(
                timed,
                max_rows,
                self.settings.max_step_delay_ms / 1e3,
                self.settings.inference_threads,
                on_call,
            )
            model.resources["step_batcher"] = batcher
        return batcher

    def deadline(self) -> float | None:
        timeout = self.settings.request_timeout_s
        return time.perf_counter() + timeout if timeout > 0 else None

    @asynccontextmanager
    async def track(self, model: LoadedModel) -> AsyncIterator[None]:
        """Count one request against `model` by outcome and time it end to end."""
        labels = (model.name, str(model.version))
        start = time.perf_counter()
        outcome = "success"
        try:
            yield
        except InvalidInput:
            outcome = "invalid"
            raise
        except Overloaded:
            outcome = "rejected"
            raise
        except (ServiceError, Exception):
            outcome = "error"
            raise
        finally:
            self.metrics.inference_requests.labels(*labels, outcome).inc()
            self.metrics.request_duration.labels(*labels).observe(time.perf_counter() - start)

    async def infer(
        self,
        model: LoadedModel,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Validate `inputs` against the model's primary graph and run it."""
        validate_inputs(model, inputs)
        check = model.resources.get("check_inputs")  # the task's own checks (graph indices...)
        if check is not None:
            check(inputs, self.settings)
        names = list(output_names) if output_names else [s.name for s in model.config.outputs]
        known = {s.name for s in model.config.outputs}
        for name in names:
            if name not in known:
                raise InvalidInput(f"model {model.name!r} has no output {name!r}", param="outputs")
        batcher = self.batcher(model)
        if batcher is None:
            results = await self.run(model, "model", inputs, names)
            return dict(zip(names, results, strict=True))
        outputs = await batcher.submit(inputs, self.deadline())
        everything = dict(zip(model.primary.output_names, outputs, strict=True))
        return {name: everything[name] for name in names}

    async def run(
        self,
        model: LoadedModel,
        role: str,
        feeds: Mapping[str, np.ndarray],
        output_names: Sequence[str] | None = None,
    ) -> list[np.ndarray]:
        """Run one graph of `model` in the inference thread pool, timing queue and compute."""
        graph = model.graphs[role]
        labels = (model.name, str(model.version))
        queued = time.perf_counter()
        batch = _batch_size(feeds) if model.config.max_batch_size > 0 else 1

        def work() -> list[np.ndarray]:
            started = time.perf_counter()
            self.metrics.queue_duration.labels(*labels).observe(started - queued)
            results = graph.run(feeds, output_names)
            self.metrics.compute_duration.labels(*labels).observe(time.perf_counter() - started)
            return results

        results = await asyncio.get_running_loop().run_in_executor(self.executor, work)
        self.metrics.batch_size.labels(*labels).observe(batch)
        self.metrics.inference_count.labels(*labels).inc(batch)
        return results


def _batch_size(feeds: Mapping[str, np.ndarray]) -> int:
    first = next(iter(feeds.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


def validate_inputs(model: LoadedModel, inputs: Mapping[str, np.ndarray]) -> None:
    """Reject anything onnxruntime would choke on, naming the tensor and the problem."""
    config = model.config
    expected = {spec.name for spec in config.inputs}
    unknown = set(inputs) - expected
    if unknown:
        raise InvalidInput(
            f"model {model.name!r} has no input {sorted(unknown)[0]!r}; its inputs are "
            f"{sorted(expected)}",
            param="inputs",
        )
    batch_sizes = set()
    for spec in config.inputs:
        if spec.name not in inputs:
            raise InvalidInput(f"input {spec.name!r} is missing", param="inputs")
        array = inputs[spec.name]
        if array.dtype != NUMPY_DTYPES[spec.datatype]:
            raise InvalidInput(
                f"input {spec.name!r} must be {spec.datatype}", param=f"inputs.{spec.name}.datatype"
            )
        shape = array.shape
        dims = spec.dims
        if config.max_batch_size > 0:
            if not shape:
                raise InvalidInput(f"input {spec.name!r} needs a batch axis", param=spec.name)
            if not 1 <= shape[0] <= config.max_batch_size:
                raise InvalidInput(
                    f"input {spec.name!r}: batch size {shape[0]} is outside 1..{config.max_batch_size}",
                    param=f"inputs.{spec.name}.shape",
                )
            batch_sizes.add(shape[0])
            shape = shape[1:]
        if len(shape) != len(dims) or any(
            d >= 0 and d != s for d, s in zip(dims, shape, strict=True)
        ):
            want = ([-1] if config.max_batch_size > 0 else []) + list(dims)
            raise InvalidInput(
                f"input {spec.name!r} has shape {list(array.shape)}, expected {want} (-1 = any)",
                param=f"inputs.{spec.name}.shape",
            )
        if any(s == 0 for s in shape):
            raise InvalidInput(f"input {spec.name!r} has an empty axis", param=spec.name)
    if len(batch_sizes) > 1:
        raise InvalidInput(
            f"inputs disagree on the batch size: {sorted(batch_sizes)}", param="inputs"
        )


async def poll_repository(dataplane: DataPlane, interval_s: float) -> None:
    """Triton's poll mode: load new models and new versions, reload changed configs, unload models
    whose folder is gone. A broken new version is reported and the old one keeps serving."""
    registry = dataplane.registry
    seen: dict[str, tuple[int, float]] = {}
    while True:
        await asyncio.sleep(interval_s)
        try:
            on_disk = set(registry.repository.model_names())
            for name in sorted(set(registry.models) - on_disk):
                await dataplane.unload(name)
            for name in sorted(on_disk):
                stamp = await asyncio.to_thread(_stamp, registry, name)
                if name in seen and seen[name] == stamp:
                    continue
                first = name not in seen
                seen[name] = stamp
                if (
                    first
                    and registry.models.get(name)
                    and stamp[0] == max(registry.models[name].versions, default=-1)
                ):
                    continue  # loaded at start-up, unchanged since
                await dataplane.load(name)
        except ServiceError:
            continue  # logged by the registry; the next round tries again only on change
        except Exception:
            log.exception("repository poll failed")


def _stamp(registry: Registry, name: str) -> tuple[int, float]:
    """Newest version on disk and the config's modification time: what a reload depends on."""
    try:
        versions = registry.repository.versions(name)
        config = registry.repository.model_dir(name) / "config.json"
        return (max(versions, default=-1), config.stat().st_mtime if config.exists() else 0.0)
    except ServiceError:
        return (-1, 0.0)
