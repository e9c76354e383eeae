"""The torch-free generation library the service calls (service/tasks/imagegen.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers.generator_builders import (
    CLASSES,
    LATENT,
    diffusion_config,
    diffusion_sessions,
    latent_diffusion_config,
    latent_diffusion_sessions,
    prior_onnx,
    session,
    vae_config,
    vae_sessions,
)
from PIL import Image

from service.errors import InvalidInput
from service.tasks.imagegen import (
    generate,
    grid,
    grid_png,
    iter_generate,
    reconstruct,
    to_png,
    to_uint8,
)
from training.generators.generation_config import decoder_generation

CASES = {
    "decoder": (vae_config, vae_sessions),
    "diffusion": (diffusion_config, diffusion_sessions),
    "latent-diffusion": (latent_diffusion_config, latent_diffusion_sessions),
}
OPTIONS = [
    ("decoder", {}),
    ("diffusion", {"sampler": "ddim", "steps": 5, "guidance": 2.0}),
    ("diffusion", {"sampler": "ddim", "steps": 5, "guidance": 1.0}),
    ("diffusion", {"sampler": "ddpm", "steps": 5, "guidance": 2.0}),
    ("diffusion", {"sampler": "ddpm", "steps": 5, "guidance": 0.0}),
    ("latent-diffusion", {"sampler": "ddim", "steps": 4, "guidance": 3.0}),
    ("latent-diffusion", {"sampler": "ddpm", "steps": 4, "guidance": 1.0}),
]


@pytest.mark.parametrize(("kind", "options"), OPTIONS)
def test_same_seed_same_images_other_seed_other_images(kind: str, options: dict) -> None:
    make_config, make_sessions = CASES[kind]
    config, sessions = make_config(), make_sessions()
    first = generate(config, sessions, [0, 3, 9], seed=7, **options)
    again = generate(config, sessions, [0, 3, 9], seed=7, **options)
    other = generate(config, sessions, [0, 3, 9], seed=8, **options)
    assert first.shape == (3, 28, 28) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_labels_condition_the_images() -> None:
    config, sessions = vae_config(), vae_sessions()
    images = generate(config, sessions, 3, n=2, seed=0)
    assert images.shape == (2, 28, 28)
    assert not np.array_equal(generate(config, sessions, 4, n=2, seed=0), images)


def test_defaults_come_from_the_config() -> None:
    config, sessions = diffusion_config(), diffusion_sessions()
    steps = [p.step for p in iter_generate(config, sessions, 1, n=2, seed=0)]
    assert steps == list(range(1, config["generation"]["defaults"]["steps"] + 1))


def test_progress_reports_every_step_and_only_the_last_carries_images() -> None:
    config, sessions = diffusion_config(), diffusion_sessions()
    progress = list(iter_generate(config, sessions, [1, 2], seed=0, steps=6, sampler="ddim"))
    assert [(p.step, p.total) for p in progress] == [(i, 6) for i in range(1, 7)]
    assert all(p.images is None for p in progress[:-1]) and progress[-1].images is not None


def test_a_callback_can_stop_the_run() -> None:
    class Disconnected(Exception):
        pass

    seen: list[int] = []

    def on_step(done: int, total: int) -> None:
        seen.append(done)
        if done == 3:
            raise Disconnected

    with pytest.raises(Disconnected):
        generate(diffusion_config(), diffusion_sessions(), 1, n=2, steps=8, on_step=on_step)
    assert seen == [1, 2, 3]


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"labels": 10}, "label"),
        ({"labels": -1}, "label"),
        ({"labels": [1, 2], "n": 3}, "n"),
        ({"labels": [], "n": None}, "n"),
        ({"labels": 1, "steps": 0}, "steps"),
        ({"labels": 1, "steps": 101}, "steps"),
        ({"labels": 1, "guidance": float("nan")}, "guidance"),
        ({"labels": 1, "sampler": "euler"}, "sampler"),
    ],
)
def test_bad_requests_are_invalid_input(arguments: dict, field: str) -> None:
    with pytest.raises(InvalidInput) as error:
        generate(diffusion_config(), diffusion_sessions(), **arguments)
    assert error.value.param == field


def test_reconstruct_keeps_the_shape_and_depends_on_the_image() -> None:
    config, sessions = vae_config(), vae_sessions()
    image = (np.arange(784).reshape(28, 28) % 256).astype(np.uint8)
    out = reconstruct(config, sessions, image, 5)
    assert out.shape == (28, 28) and out.dtype == np.uint8
    batch = reconstruct(config, sessions, np.stack([image, 255 - image]), [5, 5])
    assert batch.shape == (2, 28, 28)
    np.testing.assert_array_equal(batch[0], out)
    assert not np.array_equal(batch[0], batch[1])
    with pytest.raises(InvalidInput):
        reconstruct(config, sessions, np.zeros((14, 14), np.uint8), 5)
    with pytest.raises(InvalidInput):
        reconstruct(diffusion_config(), diffusion_sessions(), image, 5)


def test_png_is_valid_and_sized() -> None:
    images = np.random.default_rng(0).integers(0, 256, (25, 28, 28), dtype=np.uint8)
    single = Image.open(io.BytesIO(to_png(images[0])))
    assert single.format == "PNG" and single.size == (28, 28)
    np.testing.assert_array_equal(np.asarray(single), images[0])
    picture = Image.open(io.BytesIO(grid_png(images, nrow=10, padding=2)))
    assert picture.size == (10 * 30 + 2, 3 * 30 + 2)  # (width, height): 3 rows of up to 10
    assert Image.open(io.BytesIO(grid_png(images, nrow=5, scale=2))).size == (2 * 152, 2 * 152)
    tiles = grid(images, nrow=10, padding=2)
    np.testing.assert_array_equal(tiles[2:30, 32:60], images[1])


def test_a_prior_graph_maps_the_noise_before_the_decoder() -> None:
    """A VAE with a class prior samples decoder(prior(noise, label)); reconstruction still
    decodes the encoder's latents as they are."""
    config = vae_config()
    config["generation"] = decoder_generation(LATENT, CLASSES, encoder=True, prior=True)
    config["graphs"]["prior"] = "prior.onnx"
    sessions = {**vae_sessions(), "prior": session(prior_onnx())}
    labels = np.array([1, 4, 4, 9])
    images = generate(config, sessions, labels.tolist(), seed=3)
    noise = np.random.default_rng(3).standard_normal((4, LATENT), dtype=np.float32)
    (latents,) = sessions["prior"].run(None, {"noise": noise, "label": labels})
    (expected,) = sessions["decoder"].run(None, {"latent": latents, "label": labels})
    np.testing.assert_array_equal(images, to_uint8(expected, [0.0, 1.0]))
    plain = generate(vae_config(), vae_sessions(), labels.tolist(), seed=3)
    assert not np.array_equal(images, plain)
    pictures = plain[:2]
    assert np.array_equal(
        reconstruct(config, sessions, pictures, labels[:2]),
        reconstruct(vae_config(), vae_sessions(), pictures, labels[:2]),
    )
