"""The out-of-distribution flag of `classify`: config.json's `ood` section read and checked at
load, one check per picture in the answer, the shipped CNNs flagging blank pictures and photos
and passing real test pictures, and the V2 path left as it was (raw logits and probabilities)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from helpers.onnx_builders import write_classifier
from helpers.shipped_models import copy_models
from PIL import Image

from service.app import create_app
from service.settings import Settings
from service.tasks.class_scores import OodSpec, ood_scores, pixel_statistics
from training.classifiers.ood import photos
from training.data.images import DATA_DIR, IDX_FILES, KNOWN_DATASETS, idx_file, load_test_split
from training.publish import latest_version

CNNS = ("cnn-mnist", "cnn-fashion-mnist")


def png_of(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.rint(pixels * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_of(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def classify(client: TestClient, model: str, pictures: list[bytes]) -> dict:
    files = [
        ("file", (f"{i}.png", data, "application/octet-stream")) for i, data in enumerate(pictures)
    ]
    response = client.post(f"/v1/models/{model}/classify?top_k=1", files=files)
    assert response.status_code == 200, response.text
    return response.json()


# ---------------------------------------------------------------------------------------------
# The scores and the section


def test_scores_of_logits() -> None:
    logits = np.array([[10.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    energy = ood_scores(logits, "energy")
    assert np.allclose(energy, -np.log(np.exp(logits).sum(axis=1)))
    assert np.allclose(ood_scores(logits, "max-logit"), [-10.0, -1.0])
    assert np.allclose(ood_scores(logits, "max-softmax"), [-np.exp(10) / (np.exp(10) + 2), -1 / 3])
    assert energy[0] < energy[1]  # the confident row looks more in distribution
    assert np.allclose(ood_scores(logits * 2, "energy", temperature=2.0), 2 * energy)
    with pytest.raises(ValueError, match="unknown score"):
        ood_scores(logits, "entropy")


def test_pixel_statistics_of_known_pictures() -> None:
    half = np.zeros((1, 1, 4, 4))
    half[..., :, 2:] = 1.0  # the right half white
    stripes = np.zeros((1, 4, 4))
    stripes[:, :, ::2] = 1.0  # a column on, a column off
    mean, ink, variation, std = pixel_statistics(np.concatenate([half[0], stripes])).T
    assert np.allclose(mean, [0.5, 0.5]) and np.allclose(ink, [0.5, 0.5])
    assert np.allclose(std, [0.5, 0.5])
    assert np.allclose(variation, [1 / 3, 1.0])  # one edge in three column steps vs all


def test_check_flags_scores_above_the_threshold() -> None:
    spec = OodSpec.from_config({"version": 1, "score": "max-logit", "threshold": -5.0})
    checks = spec.check(np.array([[6.0, 0.0], [4.0, 0.0], [5.0, 0.0]]))
    assert [c["in_distribution"] for c in checks] == [True, False, True]  # -5 <= -5 passes
    assert [c["score"] for c in checks] == [-6.0, -4.0, -5.0]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"version": 1, "score": "entropy", "threshold": 1}, "ood.score must be one of"),
        ({"version": 1, "score": "energy"}, "ood.threshold must be a number"),
        ({"score": "energy", "threshold": 1}, "ood.version"),
        ({"version": 1, "score": "energy", "threshold": 1, "temperature": 0}, "temperature"),
        ({"version": 1, "score": "energy", "threshold": 1, "margin": 2}, "unknown fields"),
        ({"version": 1, "score": "energy", "threshold": 1, "output": "scores"}, "not an output"),
        ({"version": 1, "score": "pixel-statistics", "threshold": 1}, "ood.pixels is needed"),
    ],
)
def test_a_wrong_section_fails_the_load(tmp_path: Path, section: dict, message: str) -> None:
    root = tmp_path / "models"
    model_dir = write_classifier(root, "linear-test")
    config = json.loads((model_dir / "config.json").read_text()) | {"ood": section}
    (model_dir / "config.json").write_text(json.dumps(config))
    with serve(root) as client:
        (entry,) = client.get("/v1/models").json()["data"]
    assert not entry["ready"] and message in entry["reason"], entry


def test_a_section_for_a_generator_is_refused() -> None:
    from service.config_json import read_config_json
    from service.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="ood"):
        read_config_json({"task": "image-generation", "ood": {}}, "vae-test")


def serve(root: Path) -> TestClient:
    return TestClient(create_app(Settings(models_dir=root, access_log=False)))


def test_no_section_or_another_version_answers_null(tmp_path: Path) -> None:
    root = tmp_path / "models"
    model_dir = write_classifier(root, "linear-test")
    picture = png_of(np.zeros((28, 28)))
    with serve(root) as client:
        assert classify(client, "linear-test", [picture])["ood"] is None
    config = json.loads((model_dir / "config.json").read_text())
    fitted = {"version": 2, "score": "energy", "threshold": 0.0}  # fitted on a version not here
    (model_dir / "config.json").write_text(json.dumps(config | {"ood": fitted}))
    with serve(root) as client:
        assert classify(client, "linear-test", [picture])["ood"] is None
    (model_dir / "config.json").write_text(json.dumps(config | {"ood": fitted | {"version": 1}}))
    with serve(root) as client:
        answer = classify(client, "linear-test", [picture, picture])
    assert len(answer["ood"]) == 2
    assert set(answer["ood"][0]) == {"score", "threshold", "in_distribution"}


def test_each_version_keeps_its_own_section(tmp_path: Path) -> None:
    """config.json's section is the latest version's; an older version served beside it keeps
    the flag fitted on it from its own ood.json (training writes one into each version)."""
    root = tmp_path / "models"
    model_dir = write_classifier(root, "linear-test")
    write_classifier(root, "linear-test", version=2, seed=3)
    config = json.loads((model_dir / "config.json").read_text())
    older = {"version": 1, "score": "energy", "threshold": -100.0}  # everything flagged
    latest = {"version": 2, "score": "max-logit", "threshold": 100.0}  # nothing flagged
    policy = {"version_policy": {"all": {}}}
    (model_dir / "config.json").write_text(json.dumps(config | policy | {"ood": latest}))
    (model_dir / "1" / "ood.json").write_text(json.dumps(older))
    picture = png_of(np.zeros((28, 28)))
    with serve(root) as client:
        answers = {
            v: client.post(
                f"/v1/models/linear-test/classify?version={v}", files=[("file", ("p.png", picture))]
            ).json()
            for v in ("1", "2")
        }
    assert answers["1"]["ood"][0]["threshold"] == -100.0
    assert answers["1"]["ood"][0]["in_distribution"] is False
    assert answers["2"]["ood"][0]["threshold"] == 100.0
    assert answers["2"]["ood"][0]["in_distribution"] is True


# ---------------------------------------------------------------------------------------------
# The shipped CNNs through the real app


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_models(list(CNNS), tmp_path_factory.mktemp("ood") / "models")


@pytest.fixture(scope="module")
def shipped(root: Path) -> Iterator[TestClient]:
    with serve(root) as client:
        yield client


def blank_pictures() -> list[bytes]:
    """The issue's blank 5x5 picture, and white, black and grey ones in other sizes."""
    sizes_and_levels = [
        ((5, 5), 1.0),
        ((5, 5), 0.0),
        ((28, 28), 0.0),
        ((64, 64), 0.5),
        ((480, 640), 1.0),
    ]
    return [png_of(np.full(size, level)) for size, level in sizes_and_levels]


def flags(client: TestClient, root: Path, model: str, pictures: list[bytes]) -> list[bool]:
    answer = classify(client, model, pictures)
    threshold = json.loads((root / model / "config.json").read_text())["ood"]["threshold"]
    assert all(check["threshold"] == threshold for check in answer["ood"])
    assert all((c["score"] <= threshold) == c["in_distribution"] for c in answer["ood"])
    return [check["in_distribution"] for check in answer["ood"]]


def test_cnn_mnist_flags_blank_pictures_and_photos(shipped: TestClient, root: Path) -> None:
    pictures = blank_pictures() + [jpeg_of(photo) for photo in photos()]
    assert flags(shipped, root, "cnn-mnist", pictures) == [False] * len(pictures)


def test_cnn_fashion_mnist_flags_blank_pictures_and_photos(shipped: TestClient, root: Path) -> None:
    """Version 1's energy score passed the grey square and the photos as a confident Bag;
    version 3's nearest-neighbour feature score (its graph's `ood_score` output) flags them all."""
    pictures = blank_pictures() + [jpeg_of(photo) for photo in photos()]
    assert flags(shipped, root, "cnn-fashion-mnist", pictures) == [False] * len(pictures)


def test_the_graph_score_output_is_not_served_over_v2(shipped: TestClient) -> None:
    body = {
        "inputs": [
            {"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [0.0] * 784}
        ],
        "outputs": [{"name": "ood_score"}],
    }
    response = shipped.post("/v2/models/cnn-fashion-mnist/infer", json=body)
    assert response.status_code == 400, response.text
    assert "no output 'ood_score'" in response.json()["error"]


@pytest.mark.parametrize("model", CNNS)
def test_real_test_pictures_are_in_distribution(shipped: TestClient, model: str) -> None:
    dataset = model.split("-", 1)[1]
    folder = DATA_DIR / KNOWN_DATASETS[dataset].folder
    if not all(idx_file(folder, IDX_FILES["test", k]) for k in ("images", "labels")):
        pytest.skip(f"data/{dataset} is absent: run `make data`")
    test = load_test_split(dataset)
    pictures = [png_of(image / 255) for image in test.images[:40]]
    checks = classify(shipped, model, pictures)["ood"]
    assert checks[0]["in_distribution"], "the first test picture is flagged"
    assert sum(c["in_distribution"] for c in checks) >= 34  # the threshold passes 95%


@pytest.mark.parametrize("model", CNNS)
def test_v2_infer_still_answers_raw_logits_and_probabilities(
    shipped: TestClient, root: Path, model: str
) -> None:
    rng = np.random.default_rng(0)
    image = rng.random((2, 1, 28, 28)).astype(np.float32)
    body = {
        "inputs": [
            {
                "name": "image",
                "datatype": "FP32",
                "shape": [2, 1, 28, 28],
                "data": image.ravel().tolist(),
            }
        ]
    }
    response = shipped.post(f"/v2/models/{model}/infer", json=body)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert set(outputs) == {"logits", "probabilities"}  # no ood output beside them
    path = latest_version(root / model) / "model.onnx"
    logits, probabilities = ort.InferenceSession(str(path)).run(
        ["logits", "probabilities"], {"image": image}
    )
    assert np.allclose(np.array(outputs["logits"]["data"]).reshape(2, -1), logits, atol=1e-5)
    assert np.allclose(
        np.array(outputs["probabilities"]["data"]).reshape(2, -1), probabilities, atol=1e-6
    )
