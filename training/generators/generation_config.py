"""config.json's `generation` section of each generator kind (docs/image-generation.md), written
by the training scripts and, through these same functions, by the tests' stand-in generators
(tests/helpers/generator_builders.py). No torch here: the service-side tests import it."""

from __future__ import annotations

from typing import Any

IMAGE_SHAPE = [1, 28, 28]
# which graph, input and output of a version does what (the names training exports with)
DECODER = {"graph": "model", "latent_input": "latent", "label_input": "label", "output": "image"}
ENCODER = {
    "graph": "encoder",
    "image_input": "image",
    "label_input": "label",
    "mean_output": "mean",
    "log_variance_output": "log_variance",
}
PRIOR = {"graph": "prior", "noise_input": "noise", "label_input": "label", "output": "latent"}
DENOISER = {
    "graph": "model",
    "sample_input": "x_t",
    "timestep_input": "t",
    "label_input": "label",
    "output": "noise",
}


def schedule_parameters(kind: str, timesteps: int) -> dict[str, Any]:
    """The noise schedule; service/tasks/diffusion.py rebuilds abar from it."""
    if kind == "linear":
        return {"type": "linear", "timesteps": timesteps, "beta_start": 1e-4, "beta_end": 0.02}
    if kind == "cosine":
        return {"type": "cosine", "timesteps": timesteps, "s": 0.008, "max_beta": 0.999}
    raise ValueError(f"unknown schedule {kind!r} (known: linear, cosine)")


def decoder_generation(
    latent_dim: int, num_classes: int, encoder: bool, prior: bool = False
) -> dict[str, Any]:
    """A GAN's generator or a VAE's decoder (and, for the VAE, its encoder and maybe a prior
    graph that maps the noise to its latents): one call, latent and label in, an image in
    [0, 1] out."""
    section: dict[str, Any] = {
        "kind": "decoder",
        "image_shape": IMAGE_SHAPE,
        "latent_shape": [latent_dim],
        "output_range": [0.0, 1.0],
        "num_classes": num_classes,
        "decoder": DECODER,
    }
    return section | ({"encoder": ENCODER} if encoder else {}) | ({"prior": PRIOR} if prior else {})


def denoising(
    num_classes: int, schedule: dict[str, Any], steps: int, guidance: float
) -> dict[str, Any]:
    """What both diffusion kinds share: the denoiser graph (it outputs the noise), the schedule,
    the samplers and their defaults; label `num_classes` is the unconditional one."""
    return {
        "null_label": num_classes,
        "denoiser": DENOISER,
        "prediction": "epsilon",
        "schedule": schedule,
        "samplers": ["ddim", "ddpm"],
        "defaults": {"sampler": "ddim", "steps": steps, "guidance": guidance},
    }


def pixel_diffusion_generation(num_classes: int, **denoise: Any) -> dict[str, Any]:
    """Diffusion in pixel space, images in [-1, 1]; `denoise`: `denoising`'s arguments."""
    return {
        "kind": "diffusion",
        "image_shape": IMAGE_SHAPE,
        "latent_shape": IMAGE_SHAPE,
        "output_range": [-1.0, 1.0],
        "num_classes": num_classes,
        "clip_sample": 1.0,
        **denoising(num_classes, **denoise),
    }


def latent_diffusion_generation(
    latent_dim: int,
    num_classes: int,
    vae: dict[str, Any],
    clip_sample: float | None,
    latent_scale: float,
    **denoise: Any,
) -> dict[str, Any]:
    """Diffusion over a VAE's latents (`vae`: that VAE's own `generation` section), decoded by
    its decoder, shipped in the version as decoder.onnx."""
    return {
        "kind": "latent-diffusion",
        "image_shape": IMAGE_SHAPE,
        "latent_shape": [latent_dim],
        "output_range": vae["output_range"],
        "num_classes": num_classes,
        "clip_sample": clip_sample,
        **denoising(num_classes, **denoise),
        "latent_scale": latent_scale,
        "decoder": {**vae["decoder"], "graph": "decoder"},
    }
