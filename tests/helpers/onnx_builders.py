"""Small real ONNX models built with onnx.helper (no torch), for tests of the service."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DIGIT_LABELS = [str(i) for i in range(10)]


def linear_classifier_onnx(seed: int = 0, classes: int = 10, pixels: int = 784) -> onnx.ModelProto:
    """image (N,1,28,28) -> Flatten -> MatMul -> Add -> logits, Softmax -> probabilities."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(0, 0.05, (pixels, classes)).astype(np.float32)
    bias = rng.normal(0, 0.05, (classes,)).astype(np.float32)
    nodes = [
        helper.make_node("Flatten", ["image"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "weight"], ["scores"]),
        helper.make_node("Add", ["scores", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes]),
        ],
        [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def classifier_config(name: str, max_batch_size: int = 64) -> dict:
    return {
        "name": name,
        "task": "classification",
        "family": "linear",
        "dataset": "test",
        "platform": "onnxruntime_onnx",
        "max_batch_size": max_batch_size,
        "inputs": [{"name": "image", "datatype": "FP32", "dims": [1, 28, 28]}],
        "outputs": [
            {"name": "logits", "datatype": "FP32", "dims": [10]},
            {"name": "probabilities", "datatype": "FP32", "dims": [10]},
        ],
        "labels": DIGIT_LABELS,
        "preprocessing": {
            "type": "image",
            "height": 28,
            "width": 28,
            "channels": 1,
            "mean": 0.1307,
            "std": 0.3081,
            "background": "dark",
            "center": "mass",
        },
        "graphs": {},
        "batching": {"max_queue_delay_ms": 0, "preferred_batch_sizes": []},
    }


def write_classifier(
    root: Path, name: str = "linear-test", version: int = 1, seed: int = 0
) -> Path:
    model_dir = root / name
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(classifier_config(name)))
    onnx.save(linear_classifier_onnx(seed), str(model_dir / str(version) / "model.onnx"))
    card = {"name": name, "version": version, "metrics": {"test_accuracy": 0.1}}
    (model_dir / str(version) / "card.json").write_text(json.dumps(card))
    return model_dir


def _save(
    model_dir: Path, config: dict, graphs: dict[str, onnx.ModelProto], version: int = 1
) -> Path:
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(config))
    for filename, graph in graphs.items():
        onnx.checker.check_model(graph)
        onnx.save(graph, str(model_dir / str(version) / filename))
    return model_dir


def _model(
    nodes: list, name: str, inputs: list, outputs: list, initializers: list
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def decoder_onnx(latent_dim: int = 8, classes: int = 10, seed: int = 0) -> onnx.ModelProto:
    """(latent (N, D), label (N,)) -> image (N, 1, 28, 28) in [0, 1]: a linear map plus a
    per-class pattern, through a sigmoid. Deterministic, cheap, and its class is recoverable."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(0, 0.3, (latent_dim, 784)).astype(np.float32)
    patterns = rng.normal(0, 2.0, (classes + 1, 784)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["latent", "weight"], ["mixed"]),
        helper.make_node("Gather", ["patterns", "label"], ["pattern"], axis=0),
        helper.make_node("Add", ["mixed", "pattern"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["flat"]),
        helper.make_node("Reshape", ["flat", "shape"], ["image"]),
    ]
    return _model(
        nodes,
        "decoder",
        [
            helper.make_tensor_value_info("latent", TensorProto.FLOAT, ["batch", latent_dim]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [
            numpy_helper.from_array(weight, "weight"),
            numpy_helper.from_array(patterns, "patterns"),
            numpy_helper.from_array(np.array([-1, 1, 28, 28], dtype=np.int64), "shape"),
        ],
    )


def denoiser_onnx(classes: int = 10, seed: int = 0) -> onnx.ModelProto:
    """(x (N,1,28,28), t (N,), label (N,)) -> eps: 0.5 x + a per-class pattern scaled by t."""
    rng = np.random.default_rng(seed)
    patterns = rng.normal(0, 0.1, (classes + 1, 1, 28, 28)).astype(np.float32)
    nodes = [
        helper.make_node("Mul", ["x", "half"], ["scaled"]),
        helper.make_node("Gather", ["patterns", "label"], ["pattern"], axis=0),
        helper.make_node("Cast", ["t"], ["t_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["t_float", "per_step"], ["t_scaled"]),
        helper.make_node("Reshape", ["t_scaled", "column"], ["t_column"]),
        helper.make_node("Mul", ["pattern", "t_column"], ["shift"]),
        helper.make_node("Add", ["scaled", "shift"], ["eps"]),
    ]
    return _model(
        nodes,
        "denoiser",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 28, 28]),
            helper.make_tensor_value_info("t", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        [helper.make_tensor_value_info("eps", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [
            numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half"),
            numpy_helper.from_array(np.array(0.001, dtype=np.float32), "per_step"),
            numpy_helper.from_array(np.array([-1, 1, 1, 1], dtype=np.int64), "column"),
            numpy_helper.from_array(patterns, "patterns"),
        ],
    )


def _generator_config(
    name: str, generation: dict, inputs: list, outputs: list, graphs: dict
) -> dict:
    return {
        "name": name,
        "task": "image-generation",
        "family": name.split("-")[0],
        "dataset": "test",
        "platform": "onnxruntime_onnx",
        "max_batch_size": 512,
        "inputs": inputs,
        "outputs": outputs,
        "labels": DIGIT_LABELS,
        "graphs": graphs,
        "generation": generation,
    }


def write_decoder_generator(root: Path, name: str = "gan-test", with_encoder: bool = False) -> Path:
    generation: dict = {
        "kind": "decoder",
        "image_shape": [1, 28, 28],
        "latent_shape": [8],
        "output_range": [0.0, 1.0],
        "num_classes": 10,
        "decoder": {
            "graph": "model",
            "latent_input": "latent",
            "label_input": "label",
            "output": "image",
        },
    }
    graphs = {"model.onnx": decoder_onnx()}
    extra: dict[str, str] = {}
    if with_encoder:
        generation["encoder"] = {
            "graph": "encoder",
            "image_input": "pixels",
            "label_input": "label",
            "mean_output": "mean",
            "log_variance_output": "log_variance",
        }
        graphs["encoder.onnx"] = encoder_onnx()
        extra = {"encoder": "encoder.onnx"}
    config = _generator_config(
        name,
        generation,
        [
            {"name": "latent", "datatype": "FP32", "dims": [8]},
            {"name": "label", "datatype": "INT64", "dims": []},
        ],
        [{"name": "image", "datatype": "FP32", "dims": [1, 28, 28]}],
        extra,
    )
    return _save(root / name, config, graphs)


def encoder_onnx(latent_dim: int = 8, seed: int = 1) -> onnx.ModelProto:
    """(pixels (N,1,28,28), label (N,)) -> mean, log_variance (N, D): a linear projection."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(0, 0.05, (784, latent_dim)).astype(np.float32)
    nodes = [
        helper.make_node("Flatten", ["pixels"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "weight"], ["mean"]),
        helper.make_node("Mul", ["mean", "zero"], ["log_variance"]),
    ]
    return _model(
        nodes,
        "encoder",
        [
            helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 1, 28, 28]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        [
            helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["batch", latent_dim]),
            helper.make_tensor_value_info("log_variance", TensorProto.FLOAT, ["batch", latent_dim]),
        ],
        [
            numpy_helper.from_array(weight, "weight"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ],
    )


def write_diffusion_generator(root: Path, name: str = "diffusion-test") -> Path:
    generation = {
        "kind": "diffusion",
        "image_shape": [1, 28, 28],
        "latent_shape": [1, 28, 28],
        "output_range": [-1.0, 1.0],
        "num_classes": 10,
        "denoiser": {
            "graph": "model",
            "sample_input": "x",
            "timestep_input": "t",
            "label_input": "label",
            "output": "eps",
        },
        "prediction": "epsilon",
        "schedule": {"type": "linear", "timesteps": 100, "beta_start": 0.0001, "beta_end": 0.02},
        "null_label": 10,
        "clip_sample": 1.0,
        "samplers": ["ddim", "ddpm"],
        "defaults": {"sampler": "ddim", "steps": 10, "guidance": 2.0},
    }
    config = _generator_config(
        name,
        generation,
        [
            {"name": "x", "datatype": "FP32", "dims": [1, 28, 28]},
            {"name": "t", "datatype": "INT64", "dims": []},
            {"name": "label", "datatype": "INT64", "dims": []},
        ],
        [{"name": "eps", "datatype": "FP32", "dims": [1, 28, 28]}],
        {},
    )
    return _save(root / name, config, {"model.onnx": denoiser_onnx()})


# -- language models --------------------------------------------------------------------------------
# A word-level bigram model laid out as training/language_models/lm_graphs.py publishes one (model.onnx, step.onnx,
# vocab.json, config.json with "step" and "tokenizer"). After each word, the word in LM_CHAIN is
# likely (greedy decoding follows the chain) and every other word possible, so sampling varies.
LM_WORDS = ["<unk>", "\n", "the", "cat", "sat", "on", "mat", ".", "a", "dog", "ran", "home", ","]
LM_CHAIN = {"the": "cat", "cat": "sat", "sat": "on", "on": "the", "a": "dog", "dog": "ran",
            "ran": "home", "home": ".", ".": "\n", "\n": "the", "mat": ".", ",": "a"}  # fmt: skip
LM_HIDDEN = 4


def bigram_table() -> np.ndarray:
    """Logits (V, V): row = the previous word."""
    vocab = len(LM_WORDS)
    table = np.ones((vocab, vocab), dtype=np.float32)
    for word, following in LM_CHAIN.items():
        table[LM_WORDS.index(word), LM_WORDS.index(following)] = 3.0
    table[:, 0] = 4.0  # <unk> would often win: the decoder must never write it
    return table


def lm_full_onnx() -> onnx.ModelProto:
    """model.onnx: input_ids (B, T) -> logits (B, T, V)."""
    vocab = len(LM_WORDS)
    return _model(
        [helper.make_node("Gather", ["table", "input_ids"], ["logits"], axis=0)],
        "bigram_full",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "time"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "time", vocab])],
        [numpy_helper.from_array(bigram_table(), "table")],
    )


def lm_step_onnx(cache: bool) -> onnx.ModelProto:
    """step.onnx: (input_ids (B, T), state) -> (logits (B, T, V), next state). The state is a
    hidden vector passed through (recurrent families) or, with `cache`, a growing (B, past, 1)
    cache of the ids read (the shape of a Transformer's key/value cache)."""
    vocab = len(LM_WORDS)
    logits = helper.make_node("Gather", ["table", "input_ids"], ["logits"], axis=0)
    initializers = [numpy_helper.from_array(bigram_table(), "table")]
    if cache:
        nodes = [
            logits,
            helper.make_node("Cast", ["input_ids"], ["ids_float"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["ids_float", "last_axis"], ["new"]),
            helper.make_node("Concat", ["past", "new"], ["present"], axis=1),
        ]
        initializers.append(numpy_helper.from_array(np.array([2], dtype=np.int64), "last_axis"))
        state_in = helper.make_tensor_value_info("past", TensorProto.FLOAT, ["batch", "past", 1])
        state_out = helper.make_tensor_value_info(
            "present", TensorProto.FLOAT, ["batch", "total", 1]
        )
    else:
        nodes = [logits, helper.make_node("Identity", ["h"], ["h_out"])]
        state_in = helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", LM_HIDDEN])
        state_out = helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["batch", LM_HIDDEN])
    return _model(
        nodes,
        "bigram_step",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "new"]), state_in],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "new", vocab]),
            state_out,
        ],
        initializers,
    )


def lm_state(cache: bool) -> dict:
    if cache:
        return {"input": "past", "output": "present", "datatype": "FP32", "initial": "zeros",
                "dims": ["batch", "past", 1], "batch_axis": 0, "length_axis": 1}  # fmt: skip
    return {"input": "h", "output": "h_out", "datatype": "FP32", "initial": "zeros",
            "dims": ["batch", LM_HIDDEN], "batch_axis": 0, "length_axis": None}  # fmt: skip


def write_language_model(
    root: Path, name: str = "lm-test", cache: bool = False, max_length: int | None = None
) -> Path:
    vocab = len(LM_WORDS)
    config = {
        "name": name,
        "task": "language-model",
        "family": "transformer" if cache else "rnn",
        "dataset": "test",
        "platform": "onnxruntime_onnx",
        "max_batch_size": 8,
        "inputs": [{"name": "input_ids", "datatype": "INT64", "dims": [-1]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "dims": [-1, vocab]}],
        "max_length": max_length,
        "graphs": {"step": "step.onnx"},
        "tokenizer": {
            "vocab": "vocab.json",
            "type": "word",
            "lowercase": False,
            "unk_id": 0,
            "bos_id": 1,
            "vocab_size": vocab,
        },
        "step": {
            "graph": "step.onnx",
            "input_ids": "input_ids",
            "logits": "logits",
            "max_new_tokens": None,
            "state": [lm_state(cache)],
        },
        "batching": {"max_queue_delay_ms": 0.0, "preferred_batch_sizes": []},
    }
    model_dir = _save(
        root / name, config, {"model.onnx": lm_full_onnx(), "step.onnx": lm_step_onnx(cache)}
    )
    words = {"type": "word", "lowercase": False, "unk": "<unk>", "paragraph": "\n", "bos_id": 1,
             "words": LM_WORDS}  # fmt: skip
    (model_dir / "1" / "vocab.json").write_text(json.dumps(words))
    card = {"name": name, "version": 1, "metrics": {"test_perplexity": 9.5}}
    (model_dir / "1" / "card.json").write_text(json.dumps(card))
    return model_dir
