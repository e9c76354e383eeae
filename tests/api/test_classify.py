"""`POST /v1/models/{name}/classify` in every input form, against direct onnxruntime."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi.testclient import TestClient
from helpers.pictures import png_of

from service.tasks.image_preprocessing import ImageSpec, preprocess

SPEC = ImageSpec(mean=0.1307, std=0.3081)


def expected_top1(models_dir: Path, pixels: np.ndarray) -> int:
    session = ort.InferenceSession(str(models_dir / "linear-test" / "1" / "model.onnx"))
    quantised = np.round(pixels * 255) / 255  # what survives the PNG round trip
    probabilities = session.run(
        ["probabilities"], {"image": preprocess(quantised.astype(np.float32), SPEC)[None]}
    )[0]
    return int(probabilities.argmax())


def digit(seed: int) -> np.ndarray:
    image = np.zeros((28, 28), dtype=np.float32)
    rng = np.random.default_rng(seed)
    image[4:24, 9:19] = rng.random((20, 10)) > 0.5
    return image


def test_multipart_batch_keeps_order(client: TestClient, models_dir: Path) -> None:
    images = [digit(s) for s in range(3)]
    files = [("file", (f"{i}.png", png_of(im), "image/png")) for i, im in enumerate(images)]
    response = client.post("/v1/models/linear-test/classify?top_k=3", files=files)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model_name"] == "linear-test" and answer["model_version"] == "1"
    assert len(answer["predictions"]) == 3
    for image, row in zip(images, answer["predictions"], strict=True):
        assert len(row) == 3
        assert row[0]["index"] == expected_top1(models_dir, image)
        assert row[0]["label"] == str(row[0]["index"])
        probabilities = [p["probability"] for p in row]
        assert probabilities == sorted(probabilities, reverse=True)
    assert set(answer["timing"]) == {"preprocess_ms", "inference_ms", "total_ms"}


def test_json_base64_data_url_and_pixels_agree(client: TestClient) -> None:
    image = digit(7)
    encoded = base64.b64encode(png_of(image)).decode()
    by_image = client.post("/v1/models/linear-test/classify", json={"image": encoded}).json()
    by_url = client.post(
        "/v1/models/linear-test/classify", json={"images": ["data:image/png;base64," + encoded]}
    ).json()
    by_pixels = client.post(
        "/v1/models/linear-test/classify",
        json={"pixels": (np.round(image * 255)).astype(int).tolist()},
    ).json()
    assert by_image["predictions"] == by_url["predictions"] == by_pixels["predictions"]


def test_pixel_batch(client: TestClient) -> None:
    batch = [digit(1).tolist(), digit(2).tolist()]
    answer = client.post("/v1/models/linear-test/classify?top_k=1", json={"pixels": batch}).json()
    assert [len(row) for row in answer["predictions"]] == [1, 1]


def test_models_listing_and_card(client: TestClient) -> None:
    listing = client.get("/v1/models").json()
    assert listing["object"] == "list"
    (entry,) = listing["data"]
    assert entry["id"] == "linear-test"
    assert entry["task"] == "classification"
    assert entry["ready"] is True
    assert entry["versions"] == ["1"]
    assert entry["metrics"] == {"test_accuracy": 0.1}
    detail = client.get("/v1/models/linear-test").json()
    assert detail["config"]["labels"][3] == "3"
    assert detail["cards"]["1"]["metrics"]["test_accuracy"] == 0.1


def test_metrics_exposition(client: TestClient) -> None:
    client.post("/v1/models/linear-test/classify", json={"pixels": digit(0).tolist()})
    client.get("/v2/health/ready")
    text = client.get("/metrics").text
    assert (
        'seedserve_http_requests_total{method="POST",route="/v1/models/{model_name}/classify",status="200"} 1.0'
        in text
    )
    assert "/v2/health/ready" not in text  # health and metrics are not counted
    assert 'route="/metrics"' not in text
    assert (
        'seedserve_model_ready{model="linear-test",provider="CPUExecutionProvider",version="1"} 1.0'
        in text
    )
    assert "seedserve_models_loaded 1.0" in text
    assert (
        'seedserve_inference_compute_duration_seconds_count{model="linear-test",version="1"} 1.0'
        in text
    )
    assert (
        'seedserve_inference_batch_size_bucket{le="1.0",model="linear-test",version="1"} 1.0'
        in text
    )


def test_request_id_is_echoed_or_made(client: TestClient) -> None:
    assert (
        client.get("/v2", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    )
    assert len(client.get("/v2").headers["x-request-id"]) == 32
