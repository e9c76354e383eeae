"""Bad input never reaches onnxruntime: each case gets a 4xx JSON error naming the problem, and
the service keeps answering afterwards."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import orjson
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

INFER = "/v2/models/linear-test/infer"
CLASSIFY = "/v1/models/linear-test/classify"


def tensor(**override: Any) -> dict[str, Any]:
    return {
        "name": "image",
        "shape": [1, 1, 28, 28],
        "datatype": "FP32",
        "data": [0.0] * 784,
        **override,
    }


def png(size: tuple[int, int] = (28, 28)) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, 0).save(buffer, format="PNG")
    return buffer.getvalue()


# (method, path, kwargs, status, words the error must contain)
CASES: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("post", "/v2/models/nope/infer", {"json": {"inputs": [tensor()]}}, 404, "nope"),
    ("get", "/v2/models/nope", {}, 404, "nope"),
    ("get", "/v2/models/linear-test/versions/7", {}, 404, "version"),
    ("get", "/v2/models/linear-test/versions/abc/ready", {}, 404, "version"),
    ("get", "/v2/models/..%2F..%2Fetc/ready", {}, 404, ""),
    ("post", INFER, {"content": b"{not json"}, 400, "JSON"),
    ("post", INFER, {"content": b"[1, 2]"}, 400, "object"),
    ("post", INFER, {"json": {}}, 400, "inputs"),
    ("post", INFER, {"json": {"inputs": []}}, 400, "inputs"),
    ("post", INFER, {"json": {"inputs": [tensor()], "extra": 1}}, 400, "extra"),
    ("post", INFER, {"json": {"inputs": [tensor(name="pixels")]}}, 400, "pixels"),
    ("post", INFER, {"json": {"inputs": [tensor(datatype="FP64")]}}, 400, "FP32"),
    ("post", INFER, {"json": {"inputs": [tensor(datatype="FLOAT")]}}, 400, "datatype"),
    ("post", INFER, {"json": {"inputs": [tensor(shape=[1, 784], data=[0.0] * 784)]}}, 400, "shape"),
    ("post", INFER, {"json": {"inputs": [tensor(shape=[2, 1, 28, 28])]}}, 400, "elements"),
    ("post", INFER, {"json": {"inputs": [tensor(shape=[-1, 1, 28, 28])]}}, 400, "shape"),
    ("post", INFER, {"json": {"inputs": [tensor(shape="1x784")]}}, 400, "shape"),
    ("post", INFER, {"json": {"inputs": [tensor(data=["a"] * 784)]}}, 400, "string"),
    ("post", INFER, {"json": {"inputs": [tensor(data=[[0.0] * 700, [0.0] * 84])]}}, 400, "ragged"),
    ("post", INFER, {"json": {"inputs": [tensor(data=[1e39] * 784)]}}, 400, "infinity"),
    # one value past float32's range, late in the picture
    (
        "post",
        INFER,
        {"json": {"inputs": [tensor(data=[0.0] * 700 + [-1e39] + [0.0] * 83)]}},
        400,
        "infinity",
    ),
    ("post", INFER, {"json": {"inputs": [tensor(shape=[0, 1, 28, 28], data=[])]}}, 400, "batch"),
    (
        "post",
        INFER,
        {"json": {"inputs": [tensor(shape=[65, 1, 28, 28], data=[0.0] * 784 * 65)]}},
        400,
        "batch size",
    ),
    ("post", INFER, {"json": {"inputs": [tensor(), tensor()]}}, 400, "twice"),
    ("post", INFER, {"json": {"inputs": [tensor()], "outputs": [{"name": "nope"}]}}, 400, "nope"),
    (
        "post",
        INFER,
        {"json": {"inputs": [tensor(data=None, parameters={"binary_data_size": 3136})]}},
        400,
        "data",
    ),
    (
        "post",
        INFER,
        {
            "content": orjson.dumps(
                {
                    "inputs": [
                        {
                            "name": "image",
                            "shape": [1, 1, 28, 28],
                            "datatype": "FP32",
                            "parameters": {"binary_data_size": 3136},
                        }
                    ]
                }
            )
            + b"\0" * 100,
            "headers": {"Inference-Header-Content-Length": "108"},
        },
        400,
        "",
    ),
    (
        "post",
        INFER,
        {"content": b"{}", "headers": {"Inference-Header-Content-Length": "99"}},
        400,
        "Inference-Header-Content-Length",
    ),
    ("post", INFER, {"content": b"x" * (3 * 1024 * 1024)}, 413, "limit"),
    ("post", CLASSIFY, {"json": {}}, 400, "image"),
    ("post", CLASSIFY, {"content": b"{}"}, 415, "missing"),
    ("post", CLASSIFY, {"json": {"image": "!!!"}}, 400, "base64"),
    (
        "post",
        CLASSIFY,
        {"json": {"image": base64.b64encode(b"not an image").decode()}},
        400,
        "image",
    ),
    ("post", CLASSIFY, {"json": {"image": base64.b64encode(png()[:40]).decode()}}, 400, "image"),
    (
        "post",
        CLASSIFY,
        {"json": {"images": [base64.b64encode(png()).decode()] * 65}},
        400,
        "at most",
    ),
    ("post", CLASSIFY, {"json": {"pixels": [[0.0, "x"]]}}, 400, "pixels"),
    ("post", CLASSIFY, {"json": {"pixels": [[0.0, 300.0]]}}, 400, "pixels"),
    ("post", CLASSIFY, {"json": {"pixels": [0.0, 1.0]}}, 400, "2-D"),
    ("post", CLASSIFY, {"json": {"image": "", "pixels": [[0]]}}, 400, "exactly one"),
    ("post", CLASSIFY, {"json": {"picture": "x"}}, 400, "picture"),
    (
        "post",
        CLASSIFY,
        {"files": {"file": ("x.png", b"GIF89a-broken", "image/png")}},
        400,
        "file[0]",
    ),
    ("post", CLASSIFY, {"files": {"other": ("x.png", png(), "image/png")}}, 400, "no image"),
    (
        "post",
        CLASSIFY,
        {"content": b"abc", "headers": {"Content-Type": "text/plain"}},
        415,
        "'text/plain'",
    ),
    ("post", CLASSIFY + "?top_k=0", {"json": {"pixels": [[0.0]]}}, 400, "top_k"),
    ("post", CLASSIFY + "?top_k=1000", {"json": {"pixels": [[0.0]]}}, 400, "top_k"),
    ("post", CLASSIFY + "?reframe=maybe", {"json": {"pixels": [[0.0]]}}, 400, "reframe"),
    ("post", "/v1/models/nope/classify", {"json": {"pixels": [[0.0]]}}, 404, "nope"),
    (
        "post",
        "/v1/models/linear-test/classify?version=9",
        {"json": {"pixels": [[0.0]]}},
        404,
        "version",
    ),
    ("get", "/v1/models/nope", {}, 404, "nope"),
    ("get", "/no/such/route", {}, 404, ""),
]


def test_decompression_bomb_is_refused(client: TestClient, settings: Any) -> None:
    buffer = io.BytesIO()
    Image.new("L", (5000, 5000), 0).save(buffer, format="PNG")  # tiny file, 25 M pixels
    response = client.post(CLASSIFY, files={"file": ("bomb.png", buffer.getvalue(), "image/png")})
    assert response.status_code == 413
    assert "pixels" in response.json()["error"]


def test_errors_are_counted_by_outcome(client: TestClient) -> None:
    client.post(INFER, json={"inputs": [tensor(datatype="FP64")]})
    client.post(INFER, json={"inputs": [tensor()]})
    text = client.get("/metrics").text
    assert (
        'seedserve_inference_requests_total{model="linear-test",outcome="invalid",version="1"} 1.0'
        in text
    )
    assert (
        'seedserve_inference_requests_total{model="linear-test",outcome="success",version="1"} 1.0'
        in text
    )


# --- Every endpoint, generators included: hostile numbers, strings, bodies and names. ---

ADMIN = "admin-key-0123456789"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
GENERATE = "/v1/images/generations"
PNG_OF = "/v1/models/diffusion-test/generate-image"
RECONSTRUCT = "/v1/models/vae-test/reconstruct?label=1"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def everything(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The classifier, a VAE (decoder and encoder), a diffusion model, admin endpoints on, and a
    valid model just outside the repository that no name may reach. Shared: no case changes it."""
    models_dir = tmp_path_factory.mktemp("everything") / "models"
    write_classifier(models_dir, "linear-test")
    write_decoder_generator(models_dir, "vae-test", with_encoder=True)
    write_diffusion_generator(models_dir, "diffusion-test")
    write_classifier(models_dir.parent, "outside")
    settings = Settings(
        models_dir=models_dir,
        access_log=False,
        max_body_bytes=2 * 1024 * 1024,
        admin_api_key=ADMIN,  # type: ignore[arg-type]
    )
    with TestClient(create_app(settings)) as client:
        yield client


def png_header(width: int, height: int) -> bytes:
    """Only a PNG signature and IHDR chunk: a picture that claims a size and has no pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + crc


def bomb_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (5000, 5000), 0).save(buffer, format="PNG")  # 25 M pixels in a few kB
    return buffer.getvalue()


def upload(content: bytes) -> dict[str, Any]:
    return {"files": {"file": ("x.png", content, "image/png")}}


def raw(body: bytes) -> dict[str, Any]:
    return {"content": body, "headers": JSON}


DEEP_LIST = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
LATIN1 = {"Inference-Header-Content-Length": "\xb2".encode("latin-1")}  # '²': isdigit, not int

EVERY_ENDPOINT_CASES: list[tuple[str, str, dict[str, Any], int, str]] = [
    # Open Inference Protocol: non-finite, huge, negative, empty, non-UTF-8
    ("post", INFER, raw(b'{"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [NaN]}]}'), 400, "JSON"),
    ("post", INFER, {"json": {"inputs": [tensor(shape=[2**31 - 1, 1, 28, 28])]}}, 400, "elements"),
    ("post", INFER, {"json": {"inputs": [tensor(shape=[2**40, 1, 28, 28])]}}, 400, "shape"),
    ("post", INFER, {"json": {"inputs": [tensor(shape=[2**30] * 16)]}}, 400, "elements"),
    ("post", INFER, {"json": {"inputs": [tensor(shape=[1, 1, -28, 28])]}}, 400, "shape"),
    ("post", INFER, {"json": {"inputs": [tensor(name="")]}}, 400, "name"),
    ("post", INFER, {"json": {"inputs": [tensor(datatype="")]}}, 400, "datatype"),
    ("post", INFER, {"json": {"inputs": [tensor()], "id": 5}}, 400, "id"),
    ("post", INFER, {"json": {"inputs": [tensor()], "outputs": "all"}}, 400, "outputs"),
    ("post", INFER, {"json": {"inputs": [tensor()], "parameters": {"binary_data_output": "yes"}}}, 400, "binary_data_output"),
    ("post", INFER, {"json": {"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "parameters": {"binary_data_size": 10**12}}]}}, 400, "runs past"),
    ("post", INFER, {"json": {"inputs": "image"}}, 400, "inputs"),
    ("post", INFER, raw(b"\xff\xfe\xfd"), 400, "UTF-8"),
    ("post", INFER, raw(b""), 400, "JSON"),
    ("post", INFER, raw(b'{"inputs": [{"name": "ima'), 400, "JSON"),
    ("post", INFER, {"content": b"{}", "headers": LATIN1}, 400, "Inference-Header-Content-Length"),
    ("post", "/v2/models/linear-test/versions/%C2%B2/infer", {"json": {"inputs": [tensor()]}}, 404, "version"),
    # classification: pictures that lie, pixels out of range, empty things
    ("post", CLASSIFY, raw(b'{"pixels": [[NaN]]}'), 400, "JSON"),
    ("post", CLASSIFY, raw(b'{"pixels": [[1e999]]}'), 400, "JSON"),
    ("post", CLASSIFY, {"json": {"pixels": [[-5.0]]}}, 400, "pixels"),
    ("post", CLASSIFY, {"json": {"pixels": [[1e300]]}}, 400, "pixels"),
    ("post", CLASSIFY, {"json": {"pixels": [[]]}}, 400, "pixels"),
    ("post", CLASSIFY, {"json": {"pixels": []}}, 400, "pixels"),
    ("post", CLASSIFY, {"json": {"pixels": [[[[0.0]]]]}}, 400, "2-D"),
    ("post", CLASSIFY, {"json": {"image": ""}}, 400, "empty"),
    ("post", CLASSIFY, {"json": {"images": []}}, 400, "no image"),
    ("post", CLASSIFY, raw(b"\xff\xfe"), 400, "UTF-8"),
    ("post", CLASSIFY, upload(b""), 400, "empty"),
    ("post", CLASSIFY, upload(png()[:-20]), 400, "truncated"),
    ("post", CLASSIFY, upload(png_header(100_000, 100_000)), 400, "file[0]"),
    ("post", CLASSIFY, upload(png_header(0, 0)), 400, "file[0]"),
    ("post", CLASSIFY, {"json": {"image": base64.b64encode(bomb_png()).decode()}}, 413, "pixels"),
    ("post", CLASSIFY + "?version=%C2%B2", {"json": {"pixels": [[0.0]]}}, 404, "version"),
    ("post", CLASSIFY + "?top_k=-1", {"json": {"pixels": [[0.0]]}}, 400, "top_k"),
    ("post", CLASSIFY + "?top_k=99999999999999999999", {"json": {"pixels": [[0.0]]}}, 400, "top_k"),
    # OpenAI images API
    ("post", GENERATE, raw(b"{not json"), 400, "JSON"),
    ("post", GENERATE, raw(b""), 400, "body"),
    ("post", GENERATE, {"json": [1, 2]}, 400, "body"),
    ("post", GENERATE, {"json": {}}, 400, "model"),
    ("post", GENERATE, {"json": {"model": ""}}, 404, "''"),
    ("post", GENERATE, {"json": {"model": 5}}, 400, "model"),
    ("post", GENERATE, {"json": {"model": "diffusion-test", "n": -1}}, 400, "n"),
    ("post", GENERATE, {"json": {"model": "diffusion-test", "n": 10**30}}, 400, "at most"),
    ("post", GENERATE, {"json": {"model": "diffusion-test", "n": 2.5}}, 400, "n"),
    ("post", GENERATE, {"json": {"model": "diffusion-test", "n": "three"}}, 400, "n"),
    ("post", GENERATE, raw(b'{"model": "diffusion-test", "n": 1e999}'), 400, "finite"),
    ("post", GENERATE, raw(b'{"model": "diffusion-test", "steps": NaN}'), 400, "steps"),
    ("post", GENERATE, {"json": {"model": "diffusion-test", "steps": -5}}, 400, "steps"),
    ("post", GENERATE, {"json": {"model": "diffusion-test", "steps": 10**30}}, 400, "steps"),
    ("post", GENERATE, {"json": {"model": "diffusion-test", "seed": 10**30}}, 400, "seed"),
    ("post", GENERATE, {"json": {"model": "diffusion-test", "label": 10**40}}, 400, "label"),
    ("post", GENERATE, {"json": {"model": "diffusion-test", "label": ""}}, 400, "label"),
    ("post", GENERATE, {"json": {"model": "diffusion-test", "label": "\u00b2"}}, 400, "label"),
    ("post", GENERATE, {"json": {"model": "diffusion-test", "labels": "1,2"}}, 400, "labels"),
    ("post", GENERATE, {"json": {"model": "diffusion-test", "labels": [None]}}, 400, "labels"),
    ("post", GENERATE, {"json": {"model": "diffusion-test", "labels": [1] * 100_000}}, 400, "at most"),
    ("post", GENERATE, {"json": {"model": "diffusion-test", "prompt": "x" * 5000}}, 400, "prompt"),
    ("post", GENERATE, {"json": {"model": "diffusion-test", "size": "-28x-28"}}, 400, "size"),
    ("post", GENERATE, {"json": {"model": "diffusion-test", "size": ""}}, 400, "size"),
    ("post", GENERATE, {"json": {"model": "diffusion-test", "style": "vivid"}}, 400, "style"),
    ("post", GENERATE, {"content": b'{"model": "x"}', "headers": {"Content-Type": "text/plain"}}, 415, "'text/plain'"),
    ("post", GENERATE, {"content": b'{"model": "x"}'}, 415, "Content-Type: application/json"),
    # PNG endpoint
    ("get", PNG_OF + "?n=-1", {}, 400, "n"),
    ("get", PNG_OF + "?n=1000000000000", {}, 400, "at most"),
    ("get", PNG_OF + "?n=99999999999999999999999999", {}, 400, "at most"),
    ("get", PNG_OF + "?n=1000000&per_class=true", {}, 400, "at most"),
    ("get", PNG_OF + "?n=abc", {}, 400, "n"),
    ("get", PNG_OF + "?steps=0", {}, 400, "steps"),
    ("get", PNG_OF + "?steps=99999999999999999999", {}, 400, "steps"),
    ("get", PNG_OF + "?guidance=nan", {}, 400, "guidance"),
    ("get", PNG_OF + "?guidance=inf", {}, 400, "guidance"),
    ("get", PNG_OF + "?seed=-1", {}, 400, "seed"),
    ("get", PNG_OF + "?label=", {}, 400, "label"),
    ("get", PNG_OF + "?label=%FF", {}, 400, "label"),
    ("get", PNG_OF + "?label=%C2%B2", {}, 400, "label"),
    ("get", PNG_OF + "?per_class=maybe", {}, 400, "per_class"),
    ("get", PNG_OF + "?scale=0", {}, 400, "scale"),
    ("get", PNG_OF + "?scale=1000", {}, 400, "scale"),
    ("get", PNG_OF + "?sampler=", {}, 400, "sampler"),
    ("get", PNG_OF + "?version=%C2%B2", {}, 404, "version"),
    ("get", "/v1/models/linear-test/generate-image", {}, 400, "not an image generator"),
    # VAE reconstruction: the classifier's picture inputs plus a label
    ("post", "/v1/models/vae-test/reconstruct", upload(png()), 400, "label"),
    ("post", "/v1/models/vae-test/reconstruct?label=", upload(png()), 400, "label"),
    ("post", "/v1/models/vae-test/reconstruct?label=99", upload(png()), 400, "label"),
    ("post", "/v1/models/vae-test/reconstruct?label=-1", upload(png()), 400, "label"),
    ("post", RECONSTRUCT, upload(png()[:40]), 400, "file[0]"),
    ("post", RECONSTRUCT, upload(bomb_png()), 413, "pixels"),
    ("post", RECONSTRUCT, raw(b"\xff\xfe"), 400, "UTF-8"),
    ("post", RECONSTRUCT, raw(b""), 400, "JSON"),
    ("post", RECONSTRUCT, {"json": {"pixels": [[0.0] * 28] * 28, "extra": 1}}, 400, "extra"),
    ("post", RECONSTRUCT, {"json": {"images": ["x"] * 65}}, 400, "at most"),
    ("post", RECONSTRUCT, raw(b'{"pixels": [[0.0, 1e999]]}'), 400, "JSON"),
    ("post", "/v1/models/linear-test/reconstruct?label=1", {"json": {"pixels": [[0.0]]}}, 400, "not an image generator"),
    ("post", "/v1/models/diffusion-test/reconstruct?label=1", {"json": {"pixels": [[0.0]]}}, 400, "encoder"),
    # model repository (admin)
    ("post", "/v2/repository/index", {"content": b"{bad", "headers": ADMIN_HEADERS}, 400, "JSON"),
    ("post", "/v2/repository/index", {"content": b"\xff", "headers": ADMIN_HEADERS}, 400, "JSON"),
    ("post", "/v2/repository/index", {"json": {"ready": "yes"}, "headers": ADMIN_HEADERS}, 400, "ready"),
    ("post", "/v2/repository/index", {"json": [1], "headers": ADMIN_HEADERS}, 400, "ready"),
    # model files
    ("get", "/v1/models/linear-test/versions/abc/files", {}, 404, "version"),
    ("get", "/v1/models/linear-test/versions/-1/files", {}, 404, "version"),
    ("get", "/v1/models/linear-test/versions/99999999999/files", {}, 404, "version"),
    ("get", "/v1/models/linear-test/versions/9999999999/files", {}, 404, "version"),
    ("get", "/v1/models/linear-test/versions/1/files/model.onnx", {}, 404, "only its .png and .md"),
    ("get", "/v1/models/linear-test/versions/1/files/card.json", {}, 404, "only its .png and .md"),
    ("get", "/v2/models/linear-test/versions/99999999999999999999999", {}, 404, "version"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "words"), CASES + EVERY_ENDPOINT_CASES
)
def test_bad_input_gets_clear_error(
    everything: TestClient, method: str, path: str, kwargs: dict[str, Any], status: int, words: str
) -> None:
    response = getattr(everything, method)(path, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    if path == GENERATE:  # OpenAI's images API: OpenAI's error shape
        error = error["message"]
    assert isinstance(error, str) and error
    assert words.lower() in error.lower(), error
    assert everything.get("/v2/health/ready").status_code == 200


def body_routes(client: TestClient) -> list[tuple[str, str]]:
    """Every operation that reads a request body, each with a model that exists where one fits,
    so the body itself is what gets judged. New endpoints join automatically."""
    models = {"classify": "linear-test", "infer": "linear-test", "reconstruct": "vae-test"}
    routes = []
    for path, operations in client.app.openapi()["paths"].items():  # type: ignore[attr-defined]
        if "post" not in operations or path.endswith(("/load", "/unload", "/generate-image")):
            continue
        model = next((m for suffix, m in models.items() if path.endswith(suffix)), "linear-test")
        url = path.replace("{model_name}", model).replace("{model_version}", "1")
        routes.append((path, url + ("?label=1" if path.endswith("reconstruct") else "")))
    return routes


HOSTILE_BODIES = {
    "list nested 100000 deep": DEEP_LIST,
    "object nested 50000 deep": DEEP_OBJECT,
    "non-UTF-8 string": b'{"model": "\xff\xfe", "inputs": "\xc0\xae"}',
    "NaN": b'{"model": NaN, "inputs": [NaN]}',
    "number too big for a double": b'{"model": 1e999, "n": 1e999}',
    "truncated": b'{"inputs": [{"name": "ima',
    "not JSON": b"\x00\x01\x02binary",
}


@pytest.mark.parametrize("hostile", sorted(HOSTILE_BODIES))
def test_hostile_json_bodies_get_a_4xx_on_every_endpoint(
    everything: TestClient, hostile: str
) -> None:
    """Depth bombs and broken JSON are refused everywhere: the parsers stop at a bounded depth
    (orjson at 1024 levels, the standard library at its recursion limit) and the body size is
    bounded by SEEDSERVE_MAX_BODY_BYTES before any parsing."""
    headers = {**JSON, **ADMIN_HEADERS}
    for path, url in body_routes(everything):
        response = everything.post(url, content=HOSTILE_BODIES[hostile], headers=headers)
        assert 400 <= response.status_code < 500, (path, response.status_code, response.text)
        assert response.json()["error"], path
    assert everything.get("/v2/health/ready").status_code == 200


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_bodies_are_refused_on_every_endpoint(
    everything: TestClient, chunked: bool
) -> None:
    big = b" " * (3 * 1024 * 1024)
    for path, url in [*body_routes(everything), ("index", "/v2/repository/index")]:
        body: Any = iter([big[: 1 << 20]] * 3) if chunked else big
        response = everything.post(url, content=body, headers={**JSON, **ADMIN_HEADERS})
        assert response.status_code == 413, (path, response.text)
        error = response.json()["error"]  # the OpenAI routes in OpenAI's shape
        assert "limit" in (
            error["message"] if path.startswith("/v1/") and isinstance(error, dict) else error
        )


# Names that would leave models/ if they were ever joined to a path without checking.
HOSTILE_NAMES = [
    "%2E%2E",
    "..%2Foutside",
    "..%2F..%2Fetc%2Fpasswd",
    "%2Fetc%2Fpasswd",
    "..%5Coutside",
    "%C0%AE%C0%AE%2Foutside",
    "linear-test%2F..%2F..%2Foutside",
    "linear-test%00",
    ".hidden",
    "~",
    "x" * 300,
]
HOSTILE_VERSIONS = ["%2E%2E", "..%2F1", "%C2%B2", "%D9%A1", "-1", "1e0", "%201", "1%00", "9" * 30]


def routes_with(client: TestClient, parameter: str) -> list[tuple[str, str]]:
    """(method, path template) of every operation whose path takes `parameter`."""
    return [
        (method, path)
        for path, operations in client.app.openapi()["paths"].items()  # type: ignore[attr-defined]
        if "{" + parameter + "}" in path
        for method in operations
    ]


def fill(template: str, **values: str) -> str:
    path = template.replace("{model_name}", values.get("name", "linear-test"))
    version = values.get("version", "1")
    return path.replace("{model_version}", version).replace("{version}", version)


def assert_refused(response: Any, where: str) -> None:
    assert response.status_code in (400, 404, 405), (
        where,
        response.status_code,
        response.text,
    )
    if response.status_code != 405:
        assert response.json()["error"], where


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_model_names_cannot_leave_the_repository(everything: TestClient, name: str) -> None:
    headers = {**JSON, **ADMIN_HEADERS}
    for method, template in routes_with(everything, "model_name"):
        url = fill(template, name=name)
        response = everything.request(method, url, content=b"{}", headers=headers)
        assert_refused(response, url)
        # the model just outside the repository never answers, and nothing was loaded
    response = everything.post(GENERATE, json={"model": name.replace("%2F", "/")})
    assert_refused(response, GENERATE)
    index = everything.post("/v2/repository/index", headers=ADMIN_HEADERS).json()
    assert {e["name"] for e in index} == {"linear-test", "vae-test", "diffusion-test"}


@pytest.mark.parametrize("version", HOSTILE_VERSIONS)
def test_versions_cannot_leave_the_repository(everything: TestClient, version: str) -> None:
    headers = {**JSON, **ADMIN_HEADERS}
    templates = routes_with(everything, "model_version") + routes_with(everything, "version")
    assert templates
    for method, template in templates:
        url = fill(template, version=version)
        assert_refused(everything.request(method, url, content=b"{}", headers=headers), url)
    for url in (
        CLASSIFY + f"?version={version}",
        PNG_OF + f"?version={version}",
        RECONSTRUCT + f"&version={version}",
    ):
        assert_refused(everything.post(url, json={"pixels": [[0.0]]}), url)
