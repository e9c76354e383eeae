"""Class-conditional image generation on onnxruntime: VAE and GAN decoders, pixel and latent
diffusion (DDIM / DDPM with classifier-free guidance), VAE reconstruction, and PNG encoding.

Everything is driven by the `generation` section of a model's config.json (written by
training/generators/generator_commands.py; documented in docs/image-generation.md) and by sessions the caller owns:
`sessions` maps a graph role to an onnxruntime `InferenceSession` — "model" for model.onnx, and
each key of config["graphs"] ("decoder", "encoder") for the other files of the version.

Numbers, not HTTP: bad requests raise `InvalidInput`; the caller turns it into a response.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

from service.errors import InvalidInput
from service.scheduling.step_batcher import StepBatcher, traced_alone
from service.tasks.diffusion import SAMPLERS, alphas_cumprod, denoise, sampling_timesteps

KINDS = ("decoder", "diffusion", "latent-diffusion")
MAX_ROWS_PER_CALL = 256  # images per onnxruntime call: bounds the memory of one step
DENOISER_ROWS_PER_CALL = 2 * MAX_ROWS_PER_CALL  # rows of a denoiser call (guidance doubles them)


class OnnxSession(Protocol):
    """What we need of an `onnxruntime.InferenceSession`."""

    def run(
        self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any]
    ) -> Sequence[Any]: ...


Sessions = Mapping[str, OnnxSession]
StepCallback = Callable[[int, int], None]  # (steps done, total steps); raise to stop


@dataclass(frozen=True)
class Progress:
    """One denoising step done; the last one (step == total) carries the uint8 images."""

    step: int
    total: int
    images: np.ndarray | None = None


# ---------------------------------------------------------------------------------------------
# Requests


def label_array(
    config: Mapping[str, Any], labels: int | Sequence[int], n: int | None
) -> np.ndarray:
    """One int64 class index per image: `labels` repeated n times, or a sequence of n labels."""
    num_classes = int(config["generation"]["num_classes"])
    if isinstance(labels, int | np.integer):
        count = 1 if n is None else n
        array = np.full(count, int(labels), dtype=np.int64)
    else:
        array = np.asarray(list(labels), dtype=np.int64).reshape(-1)
        if n is not None and n != len(array):
            raise InvalidInput(f"n = {n} but {len(array)} labels were given", param="n")
    if len(array) < 1:
        raise InvalidInput("at least one image must be asked for", param="n")
    if array.min() < 0 or array.max() >= num_classes:
        raise InvalidInput(f"labels must lie in [0, {num_classes - 1}]", param="label")
    return array


def refuse_diffusion_options(
    steps: int | None, guidance: float | None, sampler: str | None
) -> None:
    """A decoder (GAN, VAE) draws each image in one call: denoising options would be ignored,
    so they are refused rather than dropped without a word."""
    for name, value in (("steps", steps), ("guidance", guidance), ("sampler", sampler)):
        if value is not None:
            raise InvalidInput(
                f"{name} applies to diffusion models only: this model is a decoder (GAN or VAE) "
                "that draws each image in one call",
                param=name,
            )


def diffusion_options(
    generation: Mapping[str, Any], steps: int | None, guidance: float | None, sampler: str | None
) -> tuple[int, float, str]:
    """The request's steps, guidance and sampler, or the model's defaults, checked."""
    defaults = generation["defaults"]
    steps = int(defaults["steps"] if steps is None else steps)
    guidance = float(defaults["guidance"] if guidance is None else guidance)
    sampler = str(defaults["sampler"] if sampler is None else sampler)
    total = int(generation["schedule"]["timesteps"])
    if not 1 <= steps <= total:
        raise InvalidInput(f"steps must lie in [1, {total}], got {steps}", param="steps")
    if not (math.isfinite(guidance) and 0.0 <= guidance <= 50.0):
        raise InvalidInput(f"guidance must lie in [0, 50], got {guidance}", param="guidance")
    if sampler not in SAMPLERS:
        raise InvalidInput(f"sampler must be one of {', '.join(SAMPLERS)}", param="sampler")
    return steps, guidance, sampler


# ---------------------------------------------------------------------------------------------
# Graph calls


def run_in_chunks(
    session: OnnxSession,
    output: str,
    feeds: Mapping[str, np.ndarray],
    rows: int = MAX_ROWS_PER_CALL,
) -> np.ndarray:
    """Run one output of a graph over row chunks of the feeds (all feeds share the batch axis)."""
    n = len(next(iter(feeds.values())))
    parts = []
    for start in range(0, n, rows):
        chunk = {name: value[start : start + rows] for name, value in feeds.items()}
        parts.append(np.asarray(session.run([output], chunk)[0]))
    return np.concatenate(parts)


def denoiser_call(
    config: Mapping[str, Any], sessions: Sessions
) -> Callable[[Mapping[str, np.ndarray]], np.ndarray] | None:
    """The denoiser graph as one call over rows (x, t, label stacked, each row its own timestep
    and class), in chunks of DENOISER_ROWS_PER_CALL; None when the model has no denoiser."""
    spec = config["generation"].get("denoiser")
    if spec is None:
        return None
    session, output = sessions[spec["graph"]], spec["output"]
    return lambda feeds: run_in_chunks(session, output, feeds, DENOISER_ROWS_PER_CALL)


def denoiser_step(generation: Mapping[str, Any], rows: int = 2) -> dict[str, np.ndarray]:
    """Denoiser feeds of one step of one generation (2 rows: classifier-free guidance), as a
    sample: zeros at mid-schedule, the unconditional label."""
    spec = generation["denoiser"]
    middle = int(generation["schedule"]["timesteps"]) // 2
    return {
        spec["sample_input"]: np.zeros((rows, *generation["latent_shape"]), dtype=np.float32),
        spec["timestep_input"]: np.full(rows, middle, dtype=np.int64),
        spec["label_input"]: np.full(rows, int(generation["null_label"]), dtype=np.int64),
    }


def decode(
    spec: Mapping[str, Any], sessions: Sessions, latents: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """Latents (N, *latent_shape) -> images as the decoder graph outputs them (N, C, H, W)."""
    feeds = {spec["latent_input"]: latents.astype(np.float32), spec["label_input"]: labels}
    return run_in_chunks(sessions[spec["graph"]], spec["output"], feeds)


def prior_latents(
    spec: Mapping[str, Any], sessions: Sessions, noise: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """Noise ~ N(0, I) (N, *latent_shape) -> latents of the labels' classes through the prior
    graph (a VAE's per-class Gaussian fitted to its encoder's latents)."""
    feeds = {spec["noise_input"]: noise, spec["label_input"]: labels}
    return run_in_chunks(sessions[spec["graph"]], spec["output"], feeds)


def to_uint8(images: np.ndarray, output_range: Sequence[float]) -> np.ndarray:
    """(N, C, H, W) floats in output_range -> uint8 (N, H, W), or (N, H, W, C) when C > 1."""
    low, high = float(output_range[0]), float(output_range[1])
    scaled = np.clip((images - low) / (high - low), 0.0, 1.0) * 255.0
    pixels = np.rint(scaled).astype(np.uint8)
    return pixels[:, 0] if pixels.shape[1] == 1 else pixels.transpose(0, 2, 3, 1)


# ---------------------------------------------------------------------------------------------
# Generation


def iter_generate(
    config: Mapping[str, Any],
    sessions: Sessions,
    labels: int | Sequence[int],
    n: int | None = None,
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    sampler: str | None = None,
    step_batcher: StepBatcher | None = None,
) -> Generator[Progress, None, None]:
    """Generate step by step: yields Progress after each denoising step, the last with images.

    Stopping the iteration (a client went away) stops the work after the current step. The same
    arguments and seed give the same images: all randomness comes from one numpy Generator.
    With `step_batcher` (made for this model's denoiser), each step's denoiser call may share
    one onnxruntime call with the steps of other generations running at the same time.
    """
    generation = config["generation"]
    kind = generation["kind"]
    if kind not in KINDS:
        raise ValueError(f"unknown generation kind {kind!r} (known: {', '.join(KINDS)})")
    label_ids = label_array(config, labels, n)
    rng = np.random.default_rng(seed)
    shape = (len(label_ids), *generation["latent_shape"])
    if kind == "decoder":
        refuse_diffusion_options(steps, guidance, sampler)
        latents = rng.standard_normal(shape, dtype=np.float32)
        if "prior" in generation:  # a learned prior maps the noise to the decoder's latents
            latents = prior_latents(generation["prior"], sessions, latents, label_ids)
        images = decode(generation["decoder"], sessions, latents, label_ids)
        yield Progress(1, 1, to_uint8(images, generation["output_range"]))
        return
    steps, guidance, sampler = diffusion_options(generation, steps, guidance, sampler)
    abar = alphas_cumprod(generation["schedule"])
    total = len(sampling_timesteps(len(abar), steps))
    spec = generation["denoiser"]
    alone = denoiser_call(config, sessions)
    assert alone is not None, "a diffusion model has a denoiser"
    run_rows = step_batcher.run if step_batcher is not None else traced_alone(alone)

    def predict_noise(x: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray:
        feeds = {spec["sample_input"]: x, spec["timestep_input"]: t, spec["label_input"]: y}
        return run_rows(feeds)

    x_t = rng.standard_normal(shape, dtype=np.float32)
    clip = generation.get("clip_sample")
    steps_run = denoise(
        predict_noise,
        x_t,
        label_ids,
        abar,
        steps,
        sampler,
        guidance,
        int(generation["null_label"]),
        rng,
        None if clip is None else float(clip),
    )
    x_0 = x_t
    # The fellow generations of a step batcher wait for this one only while it is denoising.
    with step_batcher.job() if step_batcher is not None else contextlib.nullcontext():
        for step, x in enumerate(steps_run, start=1):
            if step < total:
                yield Progress(step, total)
            else:
                x_0 = x
    if kind == "latent-diffusion":
        latents = x_0 * float(generation["latent_scale"])
        x_0 = decode(generation["decoder"], sessions, latents, label_ids)
    yield Progress(total, total, to_uint8(x_0, generation["output_range"]))


def generate(
    config: Mapping[str, Any],
    sessions: Sessions,
    labels: int | Sequence[int],
    n: int | None = None,
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    sampler: str | None = None,
    on_step: StepCallback | None = None,
    step_batcher: StepBatcher | None = None,
) -> np.ndarray:
    """uint8 images (N, H, W) for the requested class labels; see `iter_generate`.

    `on_step(done, total)` is called after every step; an exception raised there stops the run.
    """
    run = iter_generate(config, sessions, labels, n, seed, steps, guidance, sampler, step_batcher)
    # closing: a stop raised by on_step leaves the generator at once (and its step batcher)
    with contextlib.closing(run):
        for progress in run:
            if on_step is not None:
                on_step(progress.step, progress.total)
            if progress.images is not None:
                return progress.images
    raise AssertionError("generation ended without images")


# ---------------------------------------------------------------------------------------------
# VAE: encode and reconstruct


def pixels_in_unit_range(config: Mapping[str, Any], images: np.ndarray) -> np.ndarray:
    """uint8 (or [0, 1] float) images (N, H, W) or (H, W) -> float32 (N, C, H, W) in [0, 1]."""
    shape = tuple(config["generation"]["image_shape"])
    array = np.asarray(images)
    scaled = (
        array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
    )
    if scaled.ndim == 2:
        scaled = scaled[None]
    if scaled.ndim == 3:
        scaled = scaled[:, None]
    if scaled.shape[1:] != shape:
        raise InvalidInput(f"images must be {list(shape[1:])} pixels, got {list(array.shape)}")
    if not np.isfinite(scaled).all() or scaled.min() < 0 or scaled.max() > 1:
        raise InvalidInput("pixel values must lie in [0, 1] (or be uint8)")
    return scaled


def encode(
    config: Mapping[str, Any], sessions: Sessions, images: np.ndarray, labels: int | Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """The VAE posterior of each image: mean and log-variance, (N, latent_dim) each."""
    generation = config["generation"]
    if "encoder" not in generation:
        raise InvalidInput(f"model {config.get('name', '?')!r} has no encoder")
    spec = generation["encoder"]
    x = pixels_in_unit_range(config, images)
    label_ids = label_array(config, labels, len(x))
    feeds = {spec["image_input"]: x, spec["label_input"]: label_ids}
    session = sessions[spec["graph"]]
    mean = run_in_chunks(session, spec["mean_output"], feeds)
    log_variance = run_in_chunks(session, spec["log_variance_output"], feeds)
    return mean, log_variance


def reconstruct(
    config: Mapping[str, Any], sessions: Sessions, images: np.ndarray, labels: int | Sequence[int]
) -> np.ndarray:
    """Encode to the posterior mean and decode again: uint8 images of the input's shape."""
    mean, _ = encode(config, sessions, images, labels)
    generation = config["generation"]
    label_ids = label_array(config, labels, len(mean))
    decoded = decode(generation["decoder"], sessions, mean, label_ids)
    out = to_uint8(decoded, generation["output_range"])
    return out[0] if np.asarray(images).ndim == 2 else out


# ---------------------------------------------------------------------------------------------
# PNG


def to_png(image: np.ndarray) -> bytes:
    """uint8 (H, W) grayscale or (H, W, 3) RGB -> PNG bytes."""
    array = np.asarray(image)
    assert array.dtype == np.uint8, f"expected uint8 pixels, got {array.dtype}"
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def grid(images: np.ndarray, nrow: int, padding: int = 2, scale: int = 1) -> np.ndarray:
    """Tile uint8 images (N, H, W) into one picture, `nrow` images per row (torchvision's term).

    Missing cells at the end stay black; `scale` enlarges every pixel (small digits in a card).
    """
    count, height, width = images.shape[:3]
    assert nrow >= 1 and count >= 1, "a grid needs at least one image and one column"
    rows = math.ceil(count / nrow)
    canvas = np.zeros(
        (
            rows * (height + padding) + padding,
            nrow * (width + padding) + padding,
            *images.shape[3:],
        ),
        dtype=np.uint8,
    )
    for i, image in enumerate(images):
        top = padding + (i // nrow) * (height + padding)
        left = padding + (i % nrow) * (width + padding)
        canvas[top : top + height, left : left + width] = image
    return canvas.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else canvas


def grid_png(images: np.ndarray, nrow: int, padding: int = 2, scale: int = 1) -> bytes:
    """PNG of `grid(images, nrow, padding, scale)`."""
    return to_png(grid(np.asarray(images), nrow, padding, scale))
