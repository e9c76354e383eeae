"""The image-generator runtime: VAE and GAN decoders, pixel and latent diffusion. Its config's
`generation` section drives service/tasks/imagegen.py; the denoising steps of the generations
running at once share onnxruntime calls through the version's step batcher."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from service.errors import ModelLoadError
from service.repository import Repository
from service.runtimes.tensor import TensorModel
from service.scheduling.step_batcher import StepBatcher
from service.tasks import imagegen


class ImageGenerator(TensorModel):
    task = "image-generation"
    noun = "an image generator"
    finite_inputs = True
    step_batcher: StepBatcher | None = None  # None: step batching off, or no denoiser

    @property
    def generation(self) -> dict[str, Any]:
        """The config's `generation` section (written by training/generators/generator_commands.py)."""
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
        if self.serving.settings.step_batching and denoiser is not None:
            self.step_batcher = self._step_batcher(denoiser)

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
