"""Triton configs that cannot serve are refused with a reason while the other models serve;
explicit warm-up fails a load, automatic warm-up never does; idle sequences free their state;
a no-config folder is picked up by the poller."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import model_zoo as zoo
from helpers.onnx_builders import write_classifier

from service.app import create_app
from service.settings import Settings

ACCUMULATOR = """
max_batch_size: 8
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
sequence_batching {
  max_sequence_idle_microseconds: 200000
  state [ { input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
}
"""


def app_for(root: Path, **settings: object) -> TestClient:
    return TestClient(create_app(Settings(models_dir=root, access_log=False, **settings)))


@pytest.mark.parametrize(
    ("pbtxt", "reason"),
    [
        (
            "max_batch_size: 8\noptimization { execution_accelerators { cpu_execution_accelerator"
            ' { name: "openvino" } } }',
            "optimization.execution_accelerators is not supported",
        ),
        ("max_batch_size: 8\nmodel_transaction_policy { decoupled: true }", "decoupled"),
        (
            'max_batch_size: 8\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 8 ]'
            " reshape: { shape: [ 3, 3 ] } } ]",
            "reshape",
        ),
        ('max_batch_size: 8\ninput [ { name: "x" data_type: TYPE_INT64 dims: [ -1 ] } ]', "FP32"),
        ("max_batch_size: 8\nbogus_field: 1", "line 2"),
        ('name: "someone-else"', "someone-else"),
    ],
)
def test_an_unservable_config_pbtxt_says_why_and_others_serve(
    tmp_path: Path, pbtxt: str, reason: str
) -> None:
    (zoo.pad_needs_real_shape(tmp_path, "broken") / "config.pbtxt").write_text(pbtxt)
    write_classifier(tmp_path, "good")
    with app_for(tmp_path) as client:
        answer = client.get("/v2/models/broken/ready")
        assert answer.status_code == 503 and reason in answer.json()["error"], answer.text
        assert client.get("/v2/models/good/ready").status_code == 200


def test_both_config_files_is_ambiguous(tmp_path: Path) -> None:
    folder = write_classifier(tmp_path, "both")
    (folder / "config.pbtxt").write_text("max_batch_size: 8")
    with app_for(tmp_path) as client:
        answer = client.get("/v2/models/both/ready")
        assert answer.status_code == 503 and "keep one" in answer.json()["error"]


def test_explicit_warm_up_fails_the_load_and_automatic_never_does(tmp_path: Path) -> None:
    warm = 'max_batch_size: 4\nmodel_warmup [ {{ name: "w" batch_size: 2 inputs {{ key: "x" value: {{ data_type: TYPE_FP32 dims: [ {t} ] zero_data: true }} }} }} ]'
    (zoo.pad_needs_real_shape(tmp_path, "warm-bad") / "config.pbtxt").write_text(warm.format(t=1))
    (zoo.pad_needs_real_shape(tmp_path, "warm-good") / "config.pbtxt").write_text(warm.format(t=8))
    zoo.pad_needs_real_shape(tmp_path, "no-config")  # T dynamic: no automatic warm-up
    with app_for(tmp_path) as client:
        bad = client.get("/v2/models/warm-bad/ready")
        assert bad.status_code == 503 and "warm-up 'w' failed" in bad.json()["error"]
        for name in ("warm-good", "no-config"):
            assert client.get(f"/v2/models/{name}/ready").status_code == 200
            body = {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32",
                                "data": list(range(8))}]}  # fmt: skip
            answer = client.post(f"/v2/models/{name}/infer", json=body)
            assert answer.json()["outputs"][0]["data"] == [6.0, 22.0]


def step(client: TestClient, sequence: object, value: float, **flags: bool) -> dict:
    body = {
        "inputs": [{"name": "INPUT", "shape": [1, 4], "datatype": "FP32", "data": [value] * 4}],
        "parameters": {"sequence_id": sequence, **flags},
    }
    return client.post("/v2/models/accumulator/infer", json=body).json()


def test_idle_sequences_free_their_state(tmp_path: Path) -> None:
    (zoo.stateful_accumulator(tmp_path) / "config.pbtxt").write_text(ACCUMULATOR)
    with app_for(tmp_path) as client:
        registry = client.app.state.registry  # type: ignore[attr-defined]
        store, key = registry.serving.sequences, registry.get("accumulator").key
        assert step(client, 7, 1.0, sequence_start=True)["outputs"][0]["data"] == [1.0] * 4
        assert step(client, 7, 2.0)["outputs"][0]["data"] == [3.0] * 4
        assert step(client, "other", 5.0, sequence_start=True)["outputs"][0]["data"] == [5.0] * 4
        assert store.live(key) == 2
        assert store.state_bytes(key) == 2 * 4 * 4  # two [1, 4] FP32 states
        metrics = client.get("/metrics").text
        assert 'seedserve_sequences_live{model="accumulator",version="1"} 2.0' in metrics
        time.sleep(0.4)  # past max_sequence_idle_microseconds
        client.portal.call(store.sweep)  # type: ignore[union-attr]
        assert store.live(key) == 0 and store.state_bytes(key) == 0
        refused = step(client, 7, 1.0)
        assert "not live" in refused["error"] and "idled out" in refused["error"]


def test_the_poller_serves_a_new_folder_without_a_config(tmp_path: Path) -> None:
    write_classifier(tmp_path, "first")
    with app_for(tmp_path, poll_interval_s=0.1) as client:
        assert client.get("/v2/models/later/ready").status_code == 404
        staging = tmp_path.parent / "staging"
        zoo.scalar_input(staging, "later").rename(tmp_path / "later")
        deadline = time.monotonic() + 20
        while client.get("/v2/models/later/ready").status_code != 200:
            assert time.monotonic() < deadline, "the poller did not load the new folder"
            time.sleep(0.1)
        body = {"inputs": [{"name": "scale", "shape": [1], "datatype": "FP32", "data": [2]},
                           {"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 5]}]}  # fmt: skip
        answer = client.post("/v2/models/later/infer", json=body)
        assert answer.json()["outputs"][0]["data"] == [2.0, 10.0]
        assert np.isclose(answer.json()["outputs"][0]["data"][1], 10.0)


CONTROLLED = """
max_batch_size: 4
sequence_batching {
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END fp32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }
  ]
  state [ { input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
}
"""


def test_control_inputs_are_fed_as_the_config_declares(tmp_path: Path) -> None:
    (zoo.controlled_accumulator(tmp_path) / "config.pbtxt").write_text(CONTROLLED)
    with app_for(tmp_path) as client:
        config = client.get("/v2/models/controlled/config").json()
        assert [i["name"] for i in config["input"]] == ["INPUT"]  # the batcher feeds the rest

        def send(value: float, **flags: bool) -> dict[str, list[float]]:
            body = {
                "inputs": [{"name": "INPUT", "shape": [1, 1], "datatype": "FP32", "data": [value]}],
                "parameters": {"sequence_id": 77, **flags},
            }
            answer = client.post("/v2/models/controlled/infer", json=body)
            assert answer.status_code == 200, answer.text
            return {o["name"]: o["data"] for o in answer.json()["outputs"]}

        assert send(5.0, sequence_start=True) == {"SUM": [5.0], "FLAGS": [1.0, 0.0], "CORR": [77.0]}
        assert send(2.0)["SUM"] == [7.0]
        assert send(1.0, sequence_end=True) == {"SUM": [8.0], "FLAGS": [1.0, 1.0], "CORR": [77.0]}
        assert send(4.0, sequence_start=True)["SUM"] == [4.0]  # START reset the sum
        body = {
            "inputs": [{"name": "INPUT", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}],
            "parameters": {"sequence_id": "words", "sequence_start": True},
        }
        refused = client.post("/v2/models/controlled/infer", json=body)
        assert refused.status_code == 400 and "integer sequence ids" in refused.json()["error"]
