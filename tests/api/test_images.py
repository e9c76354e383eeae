"""Image generation endpoints against real (tiny) ONNX generators: decoder, diffusion, VAE."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient
from helpers.onnx_builders import (
    write_classifier,
    write_decoder_generator,
    write_diffusion_generator,
)
from PIL import Image

from service.app import create_app
from service.settings import Settings

GEN = "/v1/images/generations"


@pytest.fixture
def gen_dir(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    write_decoder_generator(root, "gan-test")
    write_decoder_generator(root, "vae-test", with_encoder=True)
    write_diffusion_generator(root, "diffusion-test")
    write_classifier(root, "linear-test")
    return root


@pytest.fixture
def gen(gen_dir: Path) -> Iterator[TestClient]:
    settings = Settings(models_dir=gen_dir, access_log=False, max_denoising_work=2000)
    with TestClient(create_app(settings)) as client:
        yield client


def pixels(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return np.asarray(image)


def b64_images(answer: dict) -> list[np.ndarray]:
    return [pixels(base64.b64decode(item["b64_json"])) for item in answer["data"]]


@pytest.mark.parametrize("model", ["gan-test", "vae-test", "diffusion-test"])
def test_openai_shape_and_determinism(gen: TestClient, model: str) -> None:
    body = {"model": model, "n": 3, "label": 4, "seed": 11}
    first = gen.post(GEN, json=body)
    assert first.status_code == 200, first.text
    answer = first.json()
    assert isinstance(answer["created"], int)
    assert answer["seed"] == 11 and answer["model"] == model
    assert answer["labels"] == ["4", "4", "4"]
    images = b64_images(answer)
    assert len(images) == 3 and all(im.shape == (28, 28) and im.dtype == np.uint8 for im in images)
    again = b64_images(gen.post(GEN, json=body).json())
    for a, b in zip(images, again, strict=True):
        np.testing.assert_array_equal(a, b)
    other = b64_images(gen.post(GEN, json={**body, "seed": 12}).json())
    assert any(not np.array_equal(a, b) for a, b in zip(images, other, strict=True))


@pytest.mark.parametrize(
    "options",
    [
        {"sampler": "ddim", "steps": 5},
        {"sampler": "ddim", "steps": 20, "guidance": 0.0},
        {"sampler": "ddpm", "steps": 10, "guidance": 1.0},
        {"sampler": "ddpm", "steps": 100, "guidance": 3.0},
    ],
)
def test_every_sampler_option_is_deterministic(gen: TestClient, options: dict) -> None:
    body = {"model": "diffusion-test", "n": 2, "labels": [1, 2], "seed": 5, **options}
    a = b64_images(gen.post(GEN, json=body).json())
    b = b64_images(gen.post(GEN, json=body).json())
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_options_change_the_result(gen: TestClient) -> None:
    base = {"model": "diffusion-test", "label": 1, "seed": 5}
    variants = [
        {"steps": 5},
        {"steps": 10},
        {"sampler": "ddpm", "steps": 10},
        {"steps": 10, "guidance": 0.0},
    ]
    results = [b64_images(gen.post(GEN, json={**base, **v}).json())[0] for v in variants]
    for i in range(len(results)):
        for j in range(i + 1, len(results)):
            assert not np.array_equal(results[i], results[j]), (variants[i], variants[j])


def test_labels_by_name_index_and_prompt(gen: TestClient) -> None:
    by_index = gen.post(GEN, json={"model": "gan-test", "label": 7, "seed": 1}).json()
    by_name = gen.post(GEN, json={"model": "gan-test", "label": "7", "seed": 1}).json()
    by_prompt = gen.post(
        GEN, json={"model": "gan-test", "prompt": "draw a 7 please", "seed": 1}
    ).json()
    assert by_index["data"] == by_name["data"] == by_prompt["data"]
    assert by_prompt["data"][0]["revised_prompt"] == "7"


def test_png_grid_endpoints(gen: TestClient) -> None:
    single = gen.get("/v1/models/gan-test/generate-image?label=3&seed=9")
    assert single.status_code == 200 and single.headers["content-type"] == "image/png"
    assert single.headers["x-seed"] == "9"
    assert pixels(single.content).shape == (28, 28)
    grid = gen.get("/v1/models/gan-test/generate-image?n=4&nrow=2&seed=9&scale=2")
    assert pixels(grid.content).shape == (2 * (2 * 30 + 2), 2 * (2 * 30 + 2))
    per_class = gen.post(
        "/v1/models/diffusion-test/generate-image?per_class=true&n=3&seed=1&steps=4"
    )
    assert pixels(per_class.content).shape == (10 * 30 + 2, 3 * 30 + 2)
    readme = gen.get("/v1/models/gan-test/generate-image?per_class=true&n=8&scale=2")
    assert readme.status_code == 200, readme.text  # the README's example: 80 images
    both = gen.get("/v1/models/gan-test/generate-image?per_class=true&label=3")
    assert both.status_code == 400 and "not both" in both.json()["error"]
    over = gen.get("/v1/models/gan-test/generate-image?per_class=true&n=13")
    assert over.status_code == 400
    assert "per_class=true with n=13 asks for 130 images" in over.json()["error"]
    as_png = gen.post(GEN, json={"model": "gan-test", "n": 2, "seed": 9, "response_format": "png"})
    assert as_png.headers["content-type"] == "image/png"
    random_seed = gen.get("/v1/models/gan-test/generate-image")
    assert random_seed.headers["x-seed"].isdigit()


def test_vae_reconstruction(gen: TestClient) -> None:
    picture = np.zeros((28, 28), dtype=np.uint8)
    picture[5:20, 12:16] = 255
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    files = [("file", ("a.png", buffer.getvalue(), "image/png"))] * 2
    response = gen.post("/v1/models/vae-test/reconstruct?label=1", files=files)
    assert response.status_code == 200, response.text
    assert pixels(response.content).shape == (32, 2 * 30 + 2)
    no_encoder = gen.post("/v1/models/gan-test/reconstruct?label=1", files=files)
    assert no_encoder.status_code == 400 and "encoder" in no_encoder.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"model": "nope"}, 404, "nope"),
        ({"model": "linear-test"}, 400, "not an image generator"),
        ({"model": "gan-test", "n": 129}, 400, "at most 128"),
        ({"model": "gan-test", "n": 0}, 400, "n"),
        ({"model": "gan-test", "label": 10}, 400, "[0, 9]"),
        ({"model": "gan-test", "label": "cat"}, 400, "not a class"),
        ({"model": "gan-test", "prompt": "a cat"}, 400, "prompt"),
        ({"model": "gan-test", "labels": []}, 400, "empty"),
        ({"model": "gan-test", "labels": [1, 2], "n": 3}, 400, "n = 3"),
        ({"model": "gan-test", "labels": [1], "label": 1}, 400, "not both"),
        ({"model": "gan-test", "size": "1024x1024"}, 400, "28x28"),
        ({"model": "gan-test", "response_format": "url"}, 400, "response_format"),
        ({"model": "gan-test", "colour": "red"}, 400, "colour"),
        ({"model": "gan-test", "seed": -1}, 400, "seed"),
        ({"model": "gan-test", "steps": 5}, 400, "steps"),
        ({"model": "gan-test", "guidance": 1.0}, 400, "guidance"),
        ({"model": "vae-test", "sampler": "ddim"}, 400, "sampler"),
        ({"model": "diffusion-test", "steps": 101}, 400, "steps"),
        ({"model": "diffusion-test", "steps": 100, "n": 20}, 400, "image-steps"),
        ({"model": "diffusion-test", "sampler": "euler"}, 400, "sampler"),
        ({"model": "diffusion-test", "guidance": 51}, 400, "guidance"),
    ],
)
def test_bad_generation_requests(gen: TestClient, body: dict, status: int, words: str) -> None:
    response = gen.post(GEN, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]  # OpenAI's shape, as the openai client reads it
    assert words in error["message"]
    assert error["type"] == ("invalid_request_error" if status == 400 else "not_found_error")


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_numbers_are_refused(gen: TestClient, literal: bytes) -> None:
    body = b'{"model": "diffusion-test", "guidance": ' + literal + b"}"
    response = gen.post(GEN, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert "guidance" in response.json()["error"]["message"]


@pytest.mark.parametrize("query", ["steps=5", "guidance=2", "sampler=ddim"])
def test_decoders_refuse_diffusion_options(gen: TestClient, query: str) -> None:
    """A GAN or VAE draws in one call: steps, guidance and sampler would be ignored, so they are
    refused, naming the parameter."""
    name = query.split("=")[0]
    response = gen.get(f"/v1/models/gan-test/generate-image?{query}")
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith(f"{name} applies to diffusion models only")
    assert gen.get(f"/v1/models/diffusion-test/generate-image?{query}").status_code == 200


def test_openai_client_reads_our_errors(gen: TestClient) -> None:
    """The official client over the real app: our message and field reach its exceptions."""
    client = openai.OpenAI(
        base_url=f"{gen.base_url}/v1", api_key="unused", http_client=gen, max_retries=0
    )
    done = client.images.generate(model="gan-test", prompt="a 7", extra_body={"seed": 1})
    assert done.data and done.data[0].b64_json and done.data[0].revised_prompt == "7"
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.generate(model="gan-test", prompt="7", n=1, extra_body={"steps": 5})
    assert refused.value.param == "steps" and refused.value.type == "invalid_request_error"
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["message"].startswith("steps applies to diffusion models only")
    with pytest.raises(openai.BadRequestError) as too_many:
        client.images.generate(model="gan-test", prompt="7", n=0)
    assert too_many.value.param == "n"
    with pytest.raises(openai.NotFoundError) as missing:
        client.images.generate(model="no-such-model", prompt="7")
    assert "no-such-model" in str(missing.value)


def test_generation_metrics(gen: TestClient) -> None:
    gen.post(GEN, json={"model": "diffusion-test", "n": 3, "steps": 7, "seed": 1})
    text = gen.get("/metrics").text
    assert 'seedserve_generated_images_total{model="diffusion-test",version="1"} 3.0' in text
    assert 'seedserve_denoising_steps_total{model="diffusion-test",version="1"} 7.0' in text
    assert (
        'seedserve_generation_duration_seconds_count{model="diffusion-test",version="1"} 1.0'
        in text
    )
