"""Tiny image generators as real ONNX graphs built with onnx.helper (no torch), with config.json
`generation` sections written by the training code's own writer
(training/generators/generation_config.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from training.generators.generation_config import (
    decoder_generation,
    latent_diffusion_generation,
    pixel_diffusion_generation,
    schedule_parameters,
)

CLASSES = 10
LATENT = 4


def finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def decoder_onnx(seed: int = 0) -> onnx.ModelProto:
    """(latent (B, 4), label (B,)) -> image (B, 1, 28, 28) = sigmoid(latent @ W + table[label])."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(0, 1, (LATENT, 784)).astype(np.float32)
    table = rng.normal(0, 1, (CLASSES, 784)).astype(np.float32)
    shape = np.array([-1, 1, 28, 28], dtype=np.int64)
    nodes = [
        helper.make_node("MatMul", ["latent", "weight"], ["projected"]),
        helper.make_node("Gather", ["table", "label"], ["per_class"], axis=0),
        helper.make_node("Add", ["projected", "per_class"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["flat"]),
        helper.make_node("Reshape", ["flat", "shape"], ["image"]),
    ]
    graph = helper.make_graph(
        nodes,
        "decoder",
        [
            helper.make_tensor_value_info("latent", TensorProto.FLOAT, ["batch", LATENT]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [
            numpy_helper.from_array(a, n)
            for a, n in ((weight, "weight"), (table, "table"), (shape, "shape"))
        ],
    )
    return finish(graph)


def encoder_onnx(seed: int = 0) -> onnx.ModelProto:
    """(image (B, 1, 28, 28), label (B,)) -> mean = flat @ W + table[label], log_variance = -1."""
    rng = np.random.default_rng(seed + 1)
    weight = rng.normal(0, 0.05, (784, LATENT)).astype(np.float32)
    table = rng.normal(0, 1, (CLASSES, LATENT)).astype(np.float32)
    nodes = [
        helper.make_node("Flatten", ["image"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "weight"], ["projected"]),
        helper.make_node("Gather", ["table", "label"], ["per_class"], axis=0),
        helper.make_node("Add", ["projected", "per_class"], ["mean"]),
        helper.make_node("Mul", ["mean", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "minus_one"], ["log_variance"]),
    ]
    constants = {
        "weight": weight,
        "table": table,
        "zero": np.array(0.0, dtype=np.float32),
        "minus_one": np.array(-1.0, dtype=np.float32),
    }
    graph = helper.make_graph(
        nodes,
        "encoder",
        [
            helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 28, 28]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        [
            helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["batch", LATENT]),
            helper.make_tensor_value_info("log_variance", TensorProto.FLOAT, ["batch", LATENT]),
        ],
        [numpy_helper.from_array(a, n) for n, a in constants.items()],
    )
    return finish(graph)


def denoiser_onnx(sample_shape: tuple[int, ...]) -> onnx.ModelProto:
    """(x_t, t, label) -> noise = 0.5 x_t + 0.01 label + 1e-4 t: cheap, and it depends on every input."""
    expand = np.array([-1] + [1] * len(sample_shape), dtype=np.int64)
    nodes = [
        helper.make_node("Cast", ["label"], ["label_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["t"], ["t_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["label_f", "label_scale"], ["label_term"]),
        helper.make_node("Mul", ["t_f", "t_scale"], ["t_term"]),
        helper.make_node("Add", ["label_term", "t_term"], ["shift"]),
        helper.make_node("Reshape", ["shift", "expand"], ["shift_b"]),
        helper.make_node("Mul", ["x_t", "half"], ["scaled"]),
        helper.make_node("Add", ["scaled", "shift_b"], ["noise"]),
    ]
    constants: dict[str, np.ndarray] = {
        "label_scale": np.array(0.01, dtype=np.float32),
        "t_scale": np.array(1e-4, dtype=np.float32),
        "half": np.array(0.5, dtype=np.float32),
        "expand": expand,
    }
    dims: list[str | int] = ["batch", *sample_shape]
    graph = helper.make_graph(
        nodes,
        "denoiser",
        [
            helper.make_tensor_value_info("x_t", TensorProto.FLOAT, dims),
            helper.make_tensor_value_info("t", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        [helper.make_tensor_value_info("noise", TensorProto.FLOAT, dims)],
        [numpy_helper.from_array(a, n) for n, a in constants.items()],
    )
    return finish(graph)


def prior_onnx(seed: int = 2) -> onnx.ModelProto:
    """(noise (B, 4), label (B,)) -> latent (B, 4) = means[label] + 0.5 noise: a class prior."""
    means = np.random.default_rng(seed).normal(0, 3, (CLASSES, LATENT)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["means", "label"], ["centre"], axis=0),
        helper.make_node("Mul", ["noise", "half"], ["spread"]),
        helper.make_node("Add", ["centre", "spread"], ["latent"]),
    ]
    graph = helper.make_graph(
        nodes,
        "prior",
        [
            helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["batch", LATENT]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        [helper.make_tensor_value_info("latent", TensorProto.FLOAT, ["batch", LATENT])],
        [
            numpy_helper.from_array(means, "means"),
            numpy_helper.from_array(np.float32(0.5), "half"),
        ],
    )
    return finish(graph)


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def denoise(timesteps: int = 100) -> dict[str, Any]:
    return {"schedule": schedule_parameters("cosine", timesteps), "steps": 10, "guidance": 2.0}


def vae_config() -> dict[str, Any]:
    return {
        "name": "vae-test",
        "graphs": {"decoder": "decoder.onnx", "encoder": "encoder.onnx"},
        "generation": decoder_generation(LATENT, CLASSES, encoder=True),
    }


def diffusion_config() -> dict[str, Any]:
    return {
        "name": "diffusion-test",
        "graphs": {},
        "generation": pixel_diffusion_generation(CLASSES, **denoise()),
    }


def latent_diffusion_config() -> dict[str, Any]:
    vae = vae_config()["generation"]
    section = latent_diffusion_generation(
        LATENT, CLASSES, vae=vae, clip_sample=None, latent_scale=1.5, **denoise()
    )
    return {
        "name": "latent-diffusion-test",
        "graphs": {"decoder": "decoder.onnx"},
        "generation": section,
    }


def vae_sessions() -> dict[str, ort.InferenceSession]:
    decoder = session(decoder_onnx())
    return {"model": decoder, "decoder": decoder, "encoder": session(encoder_onnx())}


def diffusion_sessions() -> dict[str, ort.InferenceSession]:
    return {"model": session(denoiser_onnx((1, 28, 28)))}


def latent_diffusion_sessions() -> dict[str, ort.InferenceSession]:
    return {"model": session(denoiser_onnx((LATENT,))), "decoder": session(decoder_onnx())}


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data))
