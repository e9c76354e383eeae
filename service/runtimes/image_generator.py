"""The image-generator runtime: VAE and GAN decoders, pixel and latent diffusion. Its config's
`generation` section drives service/tasks/imagegen.py; the denoising steps of the generations
running at once share onnxruntime calls through the version's step batcher."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from service.errors import ModelLoadError
from service.repository import Repository
from service.runtimes.tensor import TensorModel
from service.scheduling.step_batcher import StepBatcher, step_timing
from service.tasks import imagegen

log = logging.getLogger(__name__)


class ImageGenerator(TensorModel):
    task = "image-generation"
    noun = "an image generator"
    finite_inputs = True
    step_batcher: StepBatcher | None = None  # None: step batching off, or no denoiser
    step_batching_saving_ms: float | None = None  # measured at load (scheduling.step_batcher)

    @property
    def generation(self) -> dict[str, Any]:
        """The version's `generation` section: its generation.json, else config.json's (the
        registry reads both; written by training; docs/image-generation.md)."""
        section: dict[str, Any] = self.config.raw["generation"]
        return section

    @property
    def sessions(self) -> dict[str, imagegen.OnnxSession]:
        return {role: graph.session for role, graph in self.graphs.items()}

    @property
    def image_size(self) -> tuple[int, int]:
        _, height, width = self.generation["image_shape"]
        return int(height), int(width)

    def prepare(self, repository: Repository) -> None:
        if not isinstance(self.config.raw.get("generation"), dict):
            raise ModelLoadError(f"model {self.name!r}: config.json needs a generation section")
        super().prepare(repository)
        denoiser = imagegen.denoiser_call(self.config.raw, self.sessions)
        settings = self.serving.settings
        if settings.step_batching and denoiser is not None:
            alone, shared = step_timing(denoiser, imagegen.denoiser_step(self.generation))
            self.step_batching_saving_ms = 1e3 * (alone - shared)
            gain = (alone - shared) / alone
            if (
                self.step_batching_saving_ms >= settings.step_batching_min_saving_ms
                and gain >= settings.step_batching_min_gain
            ):
                self.step_batcher = self._step_batcher(denoiser)
            log.info(
                "model %r version %s: a denoising step takes %.3f ms alone, %.3f ms in a call "
                "shared by 8: step batching %s (needs a saving of %s ms and %s of the time)",
                self.name,
                self.version,
                1e3 * alone,
                1e3 * shared,
                "on" if self.step_batcher is not None else "off",
                settings.step_batching_min_saving_ms,
                settings.step_batching_min_gain,
            )

    def _step_batcher(self, denoiser: Any) -> StepBatcher:
        metrics, labels = self.serving.metrics, self.labels
        compute = metrics.compute_duration.labels(*labels)

        def timed(feeds: Mapping[str, np.ndarray]) -> np.ndarray:
            started = time.perf_counter()
            output: np.ndarray = denoiser(feeds)
            compute.observe(time.perf_counter() - started)
            return output

        def on_call(rows: int, generations: int) -> None:
            metrics.batch_size.labels(*labels).observe(rows)
            metrics.inference_count.labels(*labels).inc(rows)
            metrics.step_batch_generations.labels(*labels).observe(generations)

        settings = self.serving.settings
        return StepBatcher(
            timed,
            imagegen.DENOISER_ROWS_PER_CALL,
            settings.max_step_delay_ms / 1e3,
            settings.inference_threads,
            on_call,
        )
