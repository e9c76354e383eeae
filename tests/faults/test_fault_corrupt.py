"""Corrupt and incompatible model files, at start-up and at reload.

What must happen: the service starts anyway and serves every healthy model; a broken model is
reported not ready with the reason (readiness, index, model list, and the 503 of a request to
it); a broken new version is refused with a clear error while the version already loaded keeps
serving, answer for answer; and a repaired model can be loaded without a restart.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from fault_tools import (
    ADMIN,
    ADMIN_HEADERS,
    PICTURE,
    failing_classifier_onnx,
    probabilities,
    traffic,
    truncate,
    v2_body,
)
from helpers.live_server import live_server
from helpers.onnx_builders import write_classifier
from helpers.scrape import metric

from service.app import create_app
from service.settings import Settings


def expected(model_file: Path) -> np.ndarray:
    return ort.InferenceSession(str(model_file)).run(["probabilities"], {"image": PICTURE})[0]


def _edit_config(model_dir: Path, change: Callable[[dict], None]) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    change(config)
    (model_dir / "config.json").write_text(json.dumps(config))


def test_broken_models_at_start_up(tmp_path: Path) -> None:
    write_classifier(tmp_path, "healthy")
    truncate(write_classifier(tmp_path, "truncated") / "1" / "model.onnx")
    (write_classifier(tmp_path, "empty") / "1" / "model.onnx").write_bytes(b"")
    (write_classifier(tmp_path, "bad-config") / "config.json").write_text('{"name": "bad-co')
    _edit_config(
        write_classifier(tmp_path, "mismatch"),
        lambda c: c["inputs"][0].update(name="pixels"),
    )
    (write_classifier(tmp_path, "fails-warm-up") / "1" / "model.onnx").write_bytes(
        failing_classifier_onnx().SerializeToString()
    )
    reasons = {
        "truncated": "model.onnx",
        "empty": "model.onnx",
        "bad-config": "not valid JSON",
        "mismatch": "'pixels' is not in the graph",
    }
    env = {"SEEDSERVE_ADMIN_API_KEY": ADMIN}
    with live_server(tmp_path, env=env) as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/v2/health/ready").status_code == 200  # the healthy one serves
        answer = probabilities(client.post("/v2/models/healthy/infer", json=v2_body()))
        np.testing.assert_allclose(answer, expected(tmp_path / "healthy/1/model.onnx"), rtol=1e-5)
        index = {
            e["name"]: e for e in client.post("/v2/repository/index", headers=ADMIN_HEADERS).json()
        }
        listing = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert index["healthy"]["state"] == "READY" and listing["healthy"]["ready"]
        for name, words in reasons.items():
            ready = client.get(f"/v2/models/{name}/ready")
            assert ready.status_code == 503 and words in ready.json()["error"], (name, ready.text)
            infer = client.post(f"/v2/models/{name}/infer", json=v2_body())
            assert infer.status_code == 503 and words in infer.json()["error"], (name, infer.text)
            assert index[name]["state"] == "UNAVAILABLE" and words in index[name]["reason"]
            assert not listing[name]["ready"] and words in listing[name]["reason"]
        # automatic warm-up only warns at a first load (zeros are no test of a valid model): the
        # model serves, and a request it cannot run is a clear 500, not a crash
        assert client.get("/v2/models/fails-warm-up/ready").status_code == 200
        infer = client.post("/v2/models/fails-warm-up/infer", json=v2_body())
        assert infer.status_code == 500 and "onnxruntime could not run" in infer.json()["error"]
        # repaired on disk, loaded on request, no restart
        write_classifier(tmp_path, "truncated", version=2, seed=3)
        assert (
            client.post("/v2/repository/models/truncated/load", headers=ADMIN_HEADERS).status_code
            == 200
        )
        answer = probabilities(client.post("/v2/models/truncated/infer", json=v2_body()))
        np.testing.assert_allclose(answer, expected(tmp_path / "truncated/2/model.onnx"), rtol=1e-5)
        assert (
            metric(
                client.get("/metrics").text, "seedserve_model_ready", model="truncated", version="2"
            )
            == 1.0
        )
    assert server.returncode == 0


def _graph_outside_repository(model_dir: Path) -> None:
    outside = model_dir.parent.parent / "elsewhere.onnx"
    onnx.save(onnx.load(str(model_dir / "1" / "model.onnx")), str(outside))
    os.symlink(outside, model_dir / "2" / "model.onnx")


def _new_version(model_dir: Path) -> None:
    write_classifier(model_dir.parent, model_dir.name, version=2, seed=9)


# name: (breakage of version 2 or of the shared config, words the refusal must contain)
BAD_VERSIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated graph": (lambda d: truncate(d / "2" / "model.onnx"), "model.onnx"),
    "empty graph": (lambda d: (d / "2" / "model.onnx").write_bytes(b""), "model.onnx"),
    "not an ONNX file": (
        lambda d: (d / "2" / "model.onnx").write_bytes(b"\x80\x04\x95 pickle?"),
        "model.onnx",
    ),
    "graph missing": (lambda d: (d / "2" / "model.onnx").unlink(), "has no model.onnx"),
    "graph outside the repository": (
        lambda d: ((d / "2" / "model.onnx").unlink(), _graph_outside_repository(d)),
        "inside the version folder",
    ),
    "fails its warm-up": (
        lambda d: (d / "2" / "model.onnx").write_bytes(
            failing_classifier_onnx().SerializeToString()
        ),
        "warm-up failed",
    ),
    "input renamed in config": (
        lambda d: _edit_config(d, lambda c: c["inputs"][0].update(name="pixels")),
        "'pixels' is not in the graph",
    ),
    "datatype changed in config": (
        lambda d: _edit_config(d, lambda c: c["inputs"][0].update(datatype="FP64")),
        "the config says FP64",
    ),
    "config not JSON": (
        lambda d: (d / "config.json").write_text('{"name": '),
        "not valid JSON",
    ),
    "config nested too deep": (
        lambda d: _edit_config(d, lambda c: c.update(extra=json.loads("[" * 100 + "]" * 100))),
        "nested deeper",
    ),
    "config names a graph elsewhere": (
        lambda d: _edit_config(d, lambda c: c.update(graphs={"encoder": "../../x.onnx"})),
        "graphs must map",
    ),
}


@pytest.mark.parametrize("breakage", sorted(BAD_VERSIONS))
def test_bad_new_version_is_refused_and_the_old_one_serves(
    served: TestClient, models_dir: Path, breakage: str
) -> None:
    model_dir = models_dir / "linear-test"
    before = probabilities(served.post("/v2/models/linear-test/infer", json=v2_body()))
    _new_version(model_dir)
    break_it, words = BAD_VERSIONS[breakage]
    break_it(model_dir)
    response = served.post("/v2/repository/models/linear-test/load", headers=ADMIN_HEADERS)
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]
    after = served.post("/v2/models/linear-test/infer", json=v2_body())
    np.testing.assert_array_equal(probabilities(after), before)  # the same session answers
    assert after.json()["model_version"] == "1"
    assert served.get("/v2/models/linear-test/ready").status_code == 200
    index = served.post("/v2/repository/index", headers=ADMIN_HEADERS).json()
    assert index == [{"name": "linear-test", "version": "1", "state": "READY", "reason": None}]
    text = served.get("/metrics").text
    assert metric(text, "seedserve_model_ready", model="linear-test", version="1") == 1.0


def test_no_request_fails_while_bad_versions_are_refused(
    served: TestClient, models_dir: Path
) -> None:
    model_dir = models_dir / "linear-test"
    with traffic(lambda: served.post("/v2/models/linear-test/infer", json=v2_body())) as record:
        for breakage in ("truncated graph", "fails its warm-up", "input renamed in config"):
            _new_version(model_dir)
            BAD_VERSIONS[breakage][0](model_dir)
            load = served.post("/v2/repository/models/linear-test/load", headers=ADMIN_HEADERS)
            assert load.status_code == 400
            record.wait_for(5)
    assert record.errors == [] and set(record.statuses) == {200}
    answers = {probabilities(r).tobytes() for r in record.bodies}
    assert len(answers) == 1  # every answer came from the one version that kept serving


def test_serving_file_corrupted_in_place(served: TestClient, models_dir: Path) -> None:
    """The file under a loaded session is overwritten: the session in memory keeps answering; a
    reload from the corrupt file is refused."""
    graph = models_dir / "linear-test" / "1" / "model.onnx"
    before = probabilities(served.post("/v2/models/linear-test/infer", json=v2_body()))
    truncate(graph)
    again = probabilities(served.post("/v2/models/linear-test/infer", json=v2_body()))
    np.testing.assert_array_equal(again, before)
    response = served.post("/v2/repository/models/linear-test/load", headers=ADMIN_HEADERS)
    assert response.status_code == 400 and "model.onnx" in response.json()["error"]
    again = probabilities(served.post("/v2/models/linear-test/infer", json=v2_body()))
    np.testing.assert_array_equal(again, before)


def test_odd_entries_in_the_repository_are_ignored(models_dir: Path) -> None:
    """Folders and files that are not models or versions do not stop a model from loading."""
    model_dir = models_dir / "linear-test"
    (model_dir / "\u00b2").mkdir()  # a digit to str.isdigit, not to int()
    (model_dir / "\u0661").mkdir()  # ARABIC-INDIC DIGIT ONE
    (model_dir / "3").write_text("a file, not a version folder")
    (models_dir / ".git").mkdir()
    (models_dir / "not a model name!").mkdir()
    (models_dir / "stray.onnx").write_bytes(b"")
    with TestClient(create_app(Settings(models_dir=models_dir, access_log=False))) as client:
        answer = client.post("/v2/models/linear-test/infer", json=v2_body())
        assert answer.status_code == 200 and answer.json()["model_version"] == "1"
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["linear-test"]
