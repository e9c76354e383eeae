"""Serving ONNX models this project did not make: no config, Triton's config.pbtxt, every tensor
type, stateful models, the classification extension — through the official `tritonclient`,
over JSON and binary, against a real server; every answer equals in-process onnxruntime."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from helpers import model_zoo as zoo
from helpers.live_server import Server, live_server
from helpers.shipped_models import copy_models
from helpers.thirdparty import install_model, thirdparty_model
from tritonclient.utils import InferenceServerException

ADMIN = "admin-key-for-the-tests-0123456789"

ACCUMULATOR_PBTXT = """
name: "accumulator"
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
sequence_batching {
  max_sequence_idle_microseconds: 5000000
  state [
    {
      input_name: "STATE_IN"
      output_name: "STATE_OUT"
      data_type: TYPE_FP32
      dims: [ 4 ]
      initial_state: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true name: "zeros" }
    }
  ]
}
"""

SILERO_PBTXT = """
platform: "onnxruntime_onnx"
max_batch_size: 0
sequence_batching {
  max_sequence_idle_microseconds: 600000000
  state [
    {
      input_name: "state"
      output_name: "stateN"
      data_type: TYPE_FP32
      dims: [ 2, 1, 128 ]
      initial_state: { data_type: TYPE_FP32 dims: [ 2, 1, 128 ] zero_data: true name: "zeros" }
    }
  ]
}
"""

CLS_PBTXT = """
name: "ppocr-cls"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [ { name: "x" data_type: TYPE_FP32 dims: [ 3, 48, 192 ] } ]
output [
  { name: "save_infer_model/scale_0.tmp_1" data_type: TYPE_FP32 dims: [ 2 ]
    label_filename: "orientations.txt" }
]
dynamic_batching { max_queue_delay_microseconds: 500 }
instance_group [ { count: 2 kind: KIND_CPU } ]
"""


def _repository(root: Path) -> Path:
    zoo.identity_all_types(root)
    zoo.identity_bf16(root)
    zoo.scalar_input(root)
    zoo.odd_names(root)
    zoo.many_io(root)
    zoo.dynamic_hw_conv(root)
    zoo.pad_needs_real_shape(root)
    zoo.sequence_output(root)
    zoo.zipmap_classifier(root)
    zoo.sklearn_text_pipeline(root)
    (zoo.stateful_accumulator(root) / "config.pbtxt").write_text(ACCUMULATOR_PBTXT)
    install_model("ppocr-det", root)
    install_model("magika", root)
    (install_model("silero-vad", root, "silero-vad-stateless"))
    (install_model("silero-vad", root) / "config.pbtxt").write_text(SILERO_PBTXT)
    cls = install_model("ppocr-cls", root)
    (cls / "config.pbtxt").write_text(CLS_PBTXT)
    (cls / "orientations.txt").write_text("0\n180\n")
    copy_models(["mlp-mnist"], root)  # a task model beside them
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = _repository(tmp_path_factory.mktemp("any-onnx") / "models")
    env = {"SEEDSERVE_ADMIN_API_KEY": ADMIN, "SEEDSERVE_MAX_SEQUENCES": "4"}
    with live_server(root, env, timeout=120) as running:
        running.models_dir = root  # type: ignore[attr-defined]
        yield running


@pytest.fixture(scope="module")
def client(server: Server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.url.removeprefix("http://"))


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path / "1" / "model.onnx"))


def infer(
    client: httpclient.InferenceServerClient,
    model: str,
    feeds: dict[str, np.ndarray],
    datatypes: dict[str, str],
    binary: bool,
    outputs: list[str] | None = None,
    **kwargs: object,
) -> httpclient.InferResult:
    inputs = []
    for name, value in feeds.items():
        tensor = httpclient.InferInput(name, list(value.shape), datatypes[name])
        tensor.set_data_from_numpy(value, binary_data=binary)
        inputs.append(tensor)
    requested = [httpclient.InferRequestedOutput(o, binary_data=binary) for o in outputs or []]
    return client.infer(model, inputs, outputs=requested or None, **kwargs)


def test_every_model_without_a_config_is_ready_and_broken_ones_say_why(server: Server) -> None:
    index = httpx.post(
        f"{server.url}/v2/repository/index", headers={"Authorization": f"Bearer {ADMIN}"}
    ).json()
    states = {m["name"]: m for m in index}
    for name in ("all-types", "bf16", "scalar-input", "odd-names", "many-io", "dynamic-hw-conv",
                 "needs-real-shape", "text-topics", "accumulator", "ppocr-det", "magika",
                 "silero-vad", "silero-vad-stateless", "ppocr-cls", "mlp-mnist"):  # fmt: skip
        assert states[name]["state"] == "READY", states[name]
    for name, output in (("sequence-output", "seq"), ("digits-zipmap", "output_probability")):
        assert states[name]["state"] == "UNAVAILABLE"
        assert f"output {output!r}" in states[name]["reason"]
        assert "re-export" in states[name]["reason"]
    assert "zipmap" in states["digits-zipmap"]["reason"]


def test_the_completed_config_is_shown(client: httpclient.InferenceServerClient) -> None:
    conv = client.get_model_config("dynamic-hw-conv")
    assert conv["max_batch_size"] == 32  # every input and output has a dynamic leading axis
    assert "dynamic_batching" in conv
    assert conv["input"][0]["name"] == "image"
    assert conv["input"][0]["data_type"] == "TYPE_FP32"
    assert [int(d) for d in conv["input"][0]["dims"]] == [3, -1, -1]
    scalar = client.get_model_config("scalar-input")
    assert scalar.get("max_batch_size", 0) == 0  # a rank-0 input has no batch axis
    metadata = client.get_model_metadata("scalar-input")
    # Triton's form of a rank-0 tensor: dims [1], reshaped to [] for the graph
    assert {i["name"]: i["shape"] for i in metadata["inputs"]} == {"scale": [1], "x": [-1]}
    assert scalar["input"][0]["dims"] == [1] and "reshape" not in scalar["input"][0]


@pytest.mark.parametrize("binary", [True, False])
def test_every_tensor_type_round_trips(
    client: httpclient.InferenceServerClient, server: Server, binary: bool
) -> None:
    rng = np.random.default_rng(1)
    feeds, datatypes = {}, {}
    for datatype, (_, numpy_type) in zoo.IDENTITY_TYPES.items():
        if numpy_type is np.object_:
            value = np.array([[b"a", "é".encode(), b""], [b"x\x00y", b"long" * 50, b"z"]], object)
        elif numpy_type is np.bool_:
            value = rng.random((2, 3)) > 0.5
        elif np.issubdtype(numpy_type, np.integer):
            info = np.iinfo(numpy_type)
            value = np.array([[info.min, info.max, 0], [1, 2, 3]], dtype=numpy_type)
        else:
            value = rng.standard_normal((2, 3)).astype(numpy_type)
        feeds[f"in_{datatype}"] = value
        datatypes[f"in_{datatype}"] = datatype
    result = infer(client, "all-types", feeds, datatypes, binary)
    graph = session(server.models_dir / "all-types")  # type: ignore[attr-defined]
    expected = graph.run(None, feeds)
    names = [o.name for o in graph.get_outputs()]
    for name, want in zip(names, expected, strict=True):
        got = result.as_numpy(name)
        assert got.shape == want.shape, name
        if want.dtype == object:  # the identity of the UTF-8 text sent (what the graph saw)
            sent = feeds[name.replace("out_", "in_")]
            assert [_bytes(x) for x in got.reshape(-1)] == [bytes(x) for x in sent.reshape(-1)]
        else:
            assert got.dtype == want.dtype, name
            np.testing.assert_array_equal(got, want)


def _bytes(item: object) -> bytes:
    return item.encode() if isinstance(item, str) else bytes(item)  # type: ignore[call-overload]


def test_bf16_binary(client: httpclient.InferenceServerClient) -> None:
    values = np.array([[1.0, -2.5, 3.140625, 0.0], [65280.0, 1e-3, -7.0, 0.5]], ml_dtypes.bfloat16)
    result = infer(client, "bf16", {"x": values}, {"x": "BF16"}, binary=True)
    np.testing.assert_array_equal(result.as_numpy("y"), values)
    np.testing.assert_array_equal(result.as_numpy("y2"), values.astype(np.float32) * 2)


@pytest.mark.parametrize("binary", [True, False])
def test_scalar_odd_names_many_outputs_and_filtering(
    client: httpclient.InferenceServerClient, server: Server, binary: bool
) -> None:
    root: Path = server.models_dir  # type: ignore[attr-defined]
    x = np.array([1.0, -2.0, 4.5], np.float32)
    scale = np.array([3.0], np.float32)  # rank 0 in the graph, [1] on the wire as in Triton
    got = infer(
        client, "scalar-input", {"scale": scale, "x": x}, {"scale": "FP32", "x": "FP32"}, binary
    )
    np.testing.assert_array_equal(got.as_numpy("y"), x * 3)

    a = np.array([[1, 2], [3, 4]], np.float32)
    b = np.array([[10, 20], [30, 40]], np.float32)
    feeds = {"input/0:x.y": a, "a:b/c.d": b}
    got = infer(client, "odd-names", feeds, dict.fromkeys(feeds, "FP32"), binary)
    want = session(root / "odd-names").run(None, feeds)
    np.testing.assert_array_equal(got.as_numpy("out/put:0"), want[0])
    np.testing.assert_array_equal(got.as_numpy("other.out/1"), want[1])

    rng = np.random.default_rng(2)
    feeds = {
        "i0": rng.standard_normal((3, 4)).astype(np.float32),
        "i1": rng.integers(-5, 5, (3, 4)),
        "i2": np.array([[1, -2], [3, -4], [0, 7]], np.int32),
        "i3": rng.standard_normal((3, 4)),
        "i4": rng.random((3, 4)) > 0.5,
    }
    types = {"i0": "FP32", "i1": "INT64", "i2": "INT32", "i3": "FP64", "i4": "BOOL"}
    want = dict(zip([o.name for o in session(root / "many-io").get_outputs()],
                    session(root / "many-io").run(None, feeds), strict=True))  # fmt: skip
    got = infer(client, "many-io", feeds, types, binary, outputs=["o3", "o5"])
    assert {o["name"] for o in got.get_response()["outputs"]} == {"o3", "o5"}
    np.testing.assert_array_equal(got.as_numpy("o3"), want["o3"])
    np.testing.assert_array_equal(got.as_numpy("o5"), want["o5"])
    everything = infer(client, "many-io", feeds, types, binary)
    for name, value in want.items():
        np.testing.assert_array_equal(everything.as_numpy(name), value)


@pytest.mark.parametrize("binary", [True, False])
def test_a_scikit_learn_text_pipeline_takes_strings(
    client: httpclient.InferenceServerClient, binary: bool
) -> None:
    texts = ["the cat chased a dog", "interest rates and the bank", "rain and wind tomorrow"]
    feeds = {"text": np.array([[t.encode()] for t in texts], dtype=object)}
    got = infer(client, "text-topics", feeds, {"text": "BYTES"}, binary)
    pipeline = zoo.text_pipeline()
    # a rank-1 output of a batching model is [batch, 1] on the wire (Triton's form)
    np.testing.assert_array_equal(got.as_numpy("label").reshape(-1), pipeline.predict(texts))
    np.testing.assert_allclose(
        got.as_numpy("probabilities"), pipeline.predict_proba(texts), atol=1e-5
    )


def test_third_party_detector_with_any_height_and_width(
    client: httpclient.InferenceServerClient,
) -> None:
    det = ort.InferenceSession(str(thirdparty_model("ppocr-det")))
    rng = np.random.default_rng(3)
    for height, width in ((64, 96), (32, 160)):
        image = rng.uniform(-1, 1, (1, 3, height, width)).astype(np.float32)
        got = infer(client, "ppocr-det", {"x": image}, {"x": "FP32"}, binary=True)
        want = det.run(None, {"x": image})[0]
        np.testing.assert_allclose(got.as_numpy("sigmoid_0.tmp_0"), want, atol=1e-5)


def test_third_party_classifier_over_config_pbtxt_with_class_count(
    client: httpclient.InferenceServerClient,
) -> None:
    cls = ort.InferenceSession(str(thirdparty_model("ppocr-cls")))
    rng = np.random.default_rng(4)
    image = rng.uniform(-1, 1, (2, 3, 48, 192)).astype(np.float32)
    (probabilities,) = cls.run(None, {"x": image})
    x = httpclient.InferInput("x", [2, 3, 48, 192], "FP32")
    x.set_data_from_numpy(image)
    name = "save_infer_model/scale_0.tmp_1"
    for binary in (True, False):
        wanted = httpclient.InferRequestedOutput(name, binary_data=binary, class_count=2)
        got = client.infer("ppocr-cls", [x], outputs=[wanted]).as_numpy(name)
        assert got.shape == (2, 2)
        for row, probs in zip(got, probabilities, strict=True):
            best = int(np.argmax(probs))
            score, index, label = _bytes(row[0]).decode().split(":")
            assert (int(index), label) == (best, ["0", "180"][best])
            assert abs(float(score) - probs[best]) < 1e-5


def test_magika_file_type_classifier(client: httpclient.InferenceServerClient) -> None:
    magika = ort.InferenceSession(str(thirdparty_model("magika")))
    rng = np.random.default_rng(5)
    features = rng.integers(0, 257, (3, 2048)).astype(np.int32)
    got = infer(client, "magika", {"bytes": features}, {"bytes": "INT32"}, binary=True)
    np.testing.assert_allclose(
        got.as_numpy("target_label"), magika.run(None, {"bytes": features})[0], atol=1e-6
    )


def audio_chunks(count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(512) / 16000
    return [
        (0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.05 * rng.standard_normal(512))
        .astype(np.float32)
        .reshape(1, 512)
        for i in range(count)
    ]


def silero_by_hand(chunks: list[np.ndarray]) -> list[np.ndarray]:
    vad = ort.InferenceSession(str(thirdparty_model("silero-vad")))
    state = np.zeros((2, 1, 128), np.float32)
    outputs = []
    for chunk in chunks:
        output, state = vad.run(None, {"input": chunk, "state": state, "sr": np.array(16000)})
        outputs.append(output)
    return outputs


def vad_step(
    client: httpclient.InferenceServerClient, chunk: np.ndarray, sequence: int | str,
    start: bool = False, end: bool = False,
) -> np.ndarray:  # fmt: skip
    feeds = {"input": chunk, "sr": np.array([16000], np.int64)}
    result = infer(
        client, "silero-vad", feeds, {"input": "FP32", "sr": "INT64"}, True,
        sequence_id=sequence, sequence_start=start, sequence_end=end,
    )  # fmt: skip
    return result.as_numpy("output")


def test_stateful_audio_model_keeps_its_state_between_requests(
    client: httpclient.InferenceServerClient,
) -> None:
    first, second = audio_chunks(6, seed=6), audio_chunks(6, seed=7)
    want_first, want_second = silero_by_hand(first), silero_by_hand(second)
    got_first, got_second = [], []
    for i in range(6):  # two sequences, interleaved
        got_first.append(vad_step(client, first[i], 11, start=i == 0, end=i == 5))
        got_second.append(vad_step(client, second[i], "stream-b", start=i == 0, end=i == 5))
    for got, want in ((got_first, want_first), (got_second, want_second)):
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, atol=1e-6)
    assert not np.allclose(np.concatenate(want_first), np.concatenate(want_second))
    # the loop with the state passed by hand, through the same server (no config: a plain model)
    state = np.zeros((2, 1, 128), np.float32)
    for chunk, want in zip(first, want_first, strict=True):
        feeds = {"input": chunk, "state": state, "sr": np.array([16000], np.int64)}
        types = {"input": "FP32", "state": "FP32", "sr": "INT64"}
        result = infer(client, "silero-vad-stateless", feeds, types, True)
        np.testing.assert_allclose(result.as_numpy("output"), want, atol=1e-6)
        state = result.as_numpy("stateN")


def test_sequence_errors(client: httpclient.InferenceServerClient, server: Server) -> None:
    chunk = audio_chunks(1, seed=8)[0]
    with pytest.raises(InferenceServerException, match="not live"):
        vad_step(client, chunk, 999)  # never started
    vad_step(client, chunk, 21, start=True, end=True)
    with pytest.raises(InferenceServerException, match="not live"):
        vad_step(client, chunk, 21)  # ended
    with pytest.raises(InferenceServerException, match="sequence_id"):
        infer(client, "silero-vad", {"input": chunk, "sr": np.array([16000])},
              {"input": "FP32", "sr": "INT64"}, True)  # fmt: skip
    with pytest.raises(InferenceServerException, match="keeps no state"):
        infer(client, "magika", {"bytes": np.zeros((1, 2048), np.int32)}, {"bytes": "INT32"},
              True, sequence_id=5, sequence_start=True)  # fmt: skip
    for i in range(4):  # SEEDSERVE_MAX_SEQUENCES=4
        vad_step(client, chunk, 100 + i, start=True)
    with pytest.raises(InferenceServerException, match="live sequences, its limit") as refused:
        vad_step(client, chunk, 200, start=True)
    assert refused.value.status() == "503"
    for i in range(4):
        vad_step(client, chunk, 100 + i, end=True)
    vad_step(client, chunk, 200, start=True, end=True)  # room again
    # other models unaffected meanwhile
    assert httpx.get(f"{server.url}/v2/models/mlp-mnist/ready").status_code == 200


def test_the_implicit_state_example_of_triton(client: httpclient.InferenceServerClient) -> None:
    total = np.zeros((1, 4), np.float32)
    for step in range(5):
        value = np.full((1, 4), step + 1, np.float32)
        total = total + value
        result = infer(client, "accumulator", {"INPUT": value}, {"INPUT": "FP32"}, step % 2 == 0,
                       sequence_id="acc", sequence_start=step == 0, sequence_end=step == 4)  # fmt: skip
        np.testing.assert_array_equal(result.as_numpy("OUTPUT"), total)


def test_bad_input_names_the_problem(server: Server) -> None:
    url = f"{server.url}/v2/models/dynamic-hw-conv/infer"
    wrong_type = {"inputs": [{"name": "image", "shape": [1, 3, 2, 2], "datatype": "INT64",
                              "data": [0] * 12}]}  # fmt: skip
    answer = httpx.post(url, json=wrong_type)
    assert answer.status_code == 400 and "must be FP32" in answer.json()["error"]
    wrong_shape = {"inputs": [{"name": "image", "shape": [1, 2, 2, 2], "datatype": "FP32",
                               "data": [0.0] * 8}]}  # fmt: skip
    answer = httpx.post(url, json=wrong_shape)
    assert answer.status_code == 400 and "expected [-1, 3, -1, -1]" in answer.json()["error"]
    answer = httpx.post(
        f"{server.url}/v2/models/scalar-input/infer",
        json={"inputs": [{"name": "scale", "shape": [2], "datatype": "FP32", "data": [2.0, 1.0]},
                         {"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
    )  # fmt: skip
    assert answer.status_code == 400 and "'scale'" in answer.json()["error"]


def test_warm_up_never_refuses_a_valid_model(client: httpclient.InferenceServerClient) -> None:
    x = np.arange(16, dtype=np.float32).reshape(2, 8)  # a size-1 warm-up would have failed
    got = infer(client, "needs-real-shape", {"x": x}, {"x": "FP32"}, True).as_numpy("y")
    np.testing.assert_array_equal(got, x.reshape(2, -1, 4).sum(-1))


def test_hot_add_without_a_restart(
    server: Server, client: httpclient.InferenceServerClient
) -> None:
    root: Path = server.models_dir  # type: ignore[attr-defined]
    headers = {"Authorization": f"Bearer {ADMIN}"}
    zoo.scalar_input(root, "added-later")
    answer = httpx.post(f"{server.url}/v2/repository/models/added-later/load", headers=headers)
    assert answer.status_code == 200, answer.text
    got = infer(client, "added-later", {"scale": np.array([2.0], np.float32),
                                        "x": np.ones(2, np.float32)},
                {"scale": "FP32", "x": "FP32"}, True)  # fmt: skip
    np.testing.assert_array_equal(got.as_numpy("y"), [2.0, 2.0])
    pbtxt = zoo.stateful_accumulator(root, "accumulator-2")
    (pbtxt / "config.pbtxt").write_text(
        ACCUMULATOR_PBTXT.replace('"accumulator"', '"accumulator-2"')
    )
    answer = httpx.post(f"{server.url}/v2/repository/models/accumulator-2/load", headers=headers)
    assert answer.status_code == 200, answer.text
    shutil.rmtree(pbtxt)


def test_concurrent_images_of_different_sizes_batch_by_shape(server: Server) -> None:
    """The dynamic batcher stacks only requests whose non-batch dims agree: mixed widths run in
    separate calls and every answer is still its own."""
    from concurrent.futures import ThreadPoolExecutor

    conv = session(server.models_dir / "dynamic-hw-conv")  # type: ignore[attr-defined]
    rng = np.random.default_rng(9)
    images = [rng.standard_normal((1, 3, 8, 8 + 4 * (i % 3))).astype(np.float32) for i in range(24)]

    def ask(image: np.ndarray) -> np.ndarray:
        body = {"inputs": [{"name": "image", "shape": list(image.shape), "datatype": "FP32",
                            "data": image.reshape(-1).tolist()}],
                "outputs": [{"name": "pooled"}]}  # fmt: skip
        with httpx.Client(base_url=server.url, timeout=30) as http:
            answer = http.post("/v2/models/dynamic-hw-conv/infer", json=body)
        assert answer.status_code == 200, answer.text
        output = answer.json()["outputs"][0]
        return np.array(output["data"], np.float32).reshape(output["shape"])

    def calls() -> float:
        text = httpx.get(f"{server.url}/metrics").text
        line = next(
            (x for x in text.splitlines()
             if x.startswith('seedserve_inference_batch_size_count{model="dynamic-hw-conv"')),
            None,
        )  # fmt: skip
        return float(line.rsplit(" ", 1)[1]) if line else 0.0

    before = calls()
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(ask, images))
    for image, answer in zip(images, answers, strict=True):
        np.testing.assert_allclose(answer, conv.run(["pooled"], {"image": image})[0], atol=1e-5)
    assert calls() - before <= len(images)  # never more calls than requests


def test_string_inputs_must_be_utf8_text(server: Server) -> None:
    """onnxruntime's string tensors hold text: bytes that are not UTF-8 are refused by name."""
    body = {"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": ["ok"]}]}
    header = b'{"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": 5}}]}'
    answer = httpx.post(
        f"{server.url}/v2/models/text-topics/infer",
        content=header + b"\x01\x00\x00\x00\xff",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert answer.status_code == 400 and "UTF-8" in answer.json()["error"], answer.text
    assert httpx.post(f"{server.url}/v2/models/text-topics/infer", json=body).status_code == 200
