"""The shipped graph classifier (gnn-mnist) served three ways: uploaded pictures converted on the
server, JSON graphs through the classification endpoint, and tensors through /v2 infer."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from helpers.pictures import png_of

from service.app import create_app
from service.settings import Settings
from service.tasks.graphs import GraphSpec, batch_graphs, image_to_graph
from training.data.images import DATA_DIR, IDX_FILES, idx_file, load_test_split

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "gnn-mnist"
URL = "/v1/models/gnn-mnist/classify"
INFER = "/v2/models/gnn-mnist/infer"


@pytest.fixture(scope="module")
def mnist_test() -> tuple[np.ndarray, np.ndarray]:
    """The first 64 official MNIST test images in [0, 1] and their labels."""
    if not all(idx_file(DATA_DIR / "mnist", IDX_FILES["test", k]) for k in ("images", "labels")):
        pytest.skip("data/mnist is absent: run `make data`")
    test = load_test_split("mnist")
    return test.images[:64].astype(np.float32) / 255, test.labels[:64]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    models = tmp_path_factory.mktemp("models")
    shutil.copytree(SHIPPED, models / "gnn-mnist")
    settings = Settings(models_dir=models, access_log=False, max_graph_nodes=5000)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    versions = sorted((p for p in SHIPPED.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    return ort.InferenceSession(str(versions[-1] / "model.onnx"))


def json_graph(pixels: np.ndarray) -> dict[str, object]:
    graph = image_to_graph(pixels, GraphSpec())
    return {"nodes": graph.x.tolist(), "edges": graph.edge_index.T.tolist()}


def test_uploaded_pictures_are_converted_and_classified(
    client: TestClient, session: ort.InferenceSession, mnist_test: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = mnist_test
    files = [("file", (f"{i}.png", png_of(im), "image/png")) for i, im in enumerate(images)]
    response = client.post(f"{URL}?top_k=2", files=files)
    assert response.status_code == 200, response.text
    rows = response.json()["predictions"]
    predicted = np.array([row[0]["index"] for row in rows])
    assert (predicted == labels).mean() >= 0.9, "gnn-mnist on the first 64 test images"
    # the same code as training: direct onnxruntime on the converted graphs agrees
    direct = session.run(
        ["probabilities"], batch_graphs([image_to_graph(i, GraphSpec()) for i in images])
    )[0]
    np.testing.assert_allclose([row[0]["probability"] for row in rows], direct.max(1), atol=1e-5)
    assert (predicted == direct.argmax(1)).all()


def test_json_graphs_give_the_same_answer_as_pictures(
    client: TestClient, mnist_test: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = mnist_test
    as_picture = client.post(URL, files=[("file", ("a.png", png_of(images[0]), "image/png"))])
    as_graph = client.post(URL, json={"graph": json_graph(images[0])})
    assert as_graph.status_code == 200, as_graph.text
    (graph_row,), (picture_row,) = as_graph.json()["predictions"], as_picture.json()["predictions"]
    assert [p["index"] for p in graph_row] == [p["index"] for p in picture_row]
    assert [p["probability"] for p in graph_row] == pytest.approx(
        [p["probability"] for p in picture_row], abs=1e-6
    )
    several = client.post(URL, json={"graphs": [json_graph(i) for i in images[:3]]})
    assert [row[0]["label"] for row in several.json()["predictions"]] == [
        str(label) for label in labels[:3]
    ]


def test_open_inference_protocol_takes_the_three_tensors(
    client: TestClient, session: ort.InferenceSession, mnist_test: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = mnist_test
    inputs = batch_graphs([image_to_graph(i, GraphSpec()) for i in images[:3]])
    body = {
        "inputs": [
            {"name": name, "datatype": dtype, "shape": list(inputs[name].shape),
             "data": inputs[name].reshape(-1).tolist()}
            for name, dtype in (("x", "FP32"), ("edge_index", "INT64"), ("batch", "INT64"))
        ],
        "outputs": [{"name": "logits"}],
    }  # fmt: skip
    response = client.post(INFER, json=body)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["name"] == "logits" and output["shape"] == [3, 10]
    logits = np.array(output["data"], np.float32).reshape(3, 10)
    np.testing.assert_allclose(logits, session.run(["logits"], inputs)[0], atol=1e-5)
    assert logits.argmax(1).tolist() == labels[:3].tolist()
    metadata = client.get("/v2/models/gnn-mnist").json()
    assert [(i["name"], i["datatype"], i["shape"]) for i in metadata["inputs"]] == [
        ("x", "FP32", [-1, 3]),
        ("edge_index", "INT64", [2, -1]),
        ("batch", "INT64", [-1]),
    ]


def v2_body(x: list[list[float]], edges: list[list[int]], batch: list[int]) -> dict[str, object]:
    return {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [len(x), 3], "data": x},
            {"name": "edge_index", "datatype": "INT64", "shape": [2, len(edges[0])], "data": edges},
            {"name": "batch", "datatype": "INT64", "shape": [len(batch)], "data": batch},
        ]
    }


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (v2_body([[1, 0, 0]], [[0], [3]], [0]), 400, "outside 0..0"),
        (v2_body([[1, 0, 0], [1, 0, 0]], [[0, 1], [1, 0]], [0, 1]), 400, "different graphs"),
        (v2_body([[1, 0, 0], [1, 0, 0]], [[0, 1], [1, 0]], [1, 1]), 400, "0, 1, 2"),
        (v2_body([[1, 0, 0]], [[0], [0]], [0, 0]), 400, "batch"),
        (v2_body([[1e39, 0, 0]], [[0], [0]], [0]), 400, "infinity"),  # over FP32's range
        (v2_body([[1, 0, 0]] * 5001, [[0], [0]], [0] * 5001), 413, "limit is 5000"),
    ],
)
def test_bad_graph_tensors_never_reach_onnxruntime(
    client: TestClient, body: dict[str, object], status: int, fragment: str
) -> None:
    response = client.post(INFER, json=body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"graph": {"nodes": [[1, 0, 0]], "edges": [[0, 2]]}}, "graph.edges"),
        ({"graph": {"nodes": [[1, 0]], "edges": [[0, 0]]}}, "graph.nodes"),
        ({"graph": {"nodes": [[1, 0, 0]], "edges": [[0, 0]]}, "image": "x"}, "unknown fields"),
        ({"images": "not a list"}, "base64"),
    ],
)
def test_bad_json_graphs_are_400(
    client: TestClient, body: dict[str, object], fragment: str
) -> None:
    response = client.post(URL, json=body)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"graph": {"cell": 5}}, "inconsistent"),
        ({"graph": {"radius": 2}}, "unknown keys"),
        ({"graph": {"image_size": 32}}, "preprocessing must give 32x32"),
        ({"max_batch_size": 8}, "plus the batch axis makes 3"),  # the signature check, first
    ],
)
def test_a_wrong_graph_section_keeps_the_model_from_loading(
    tmp_path: Path, change: dict[str, object], reason: str
) -> None:
    shutil.copytree(SHIPPED, tmp_path / "gnn-mnist")
    config_path = tmp_path / "gnn-mnist" / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **change}))
    with TestClient(create_app(Settings(models_dir=tmp_path, access_log=False))) as client:
        response = client.get("/v2/models/gnn-mnist/ready")
        assert response.status_code == 503 and reason in response.json()["error"]
