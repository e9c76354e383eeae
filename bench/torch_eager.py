"""PyTorch eager inference of a shipped classifier, rebuilt from its card with the ONNX weights.

The card holds the model config; the ONNX file holds the weights under the module's own names
(`classifier.<param>`), except that export folded each batch norm into the convolution before
it (`<conv>.weight` + `<conv>.weight_bias`): those batch norms become identities whose shift is
the folded bias. The rebuilt model is checked against onnxruntime on the benchmark's input.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from service.runtime import Graph
from service.settings import Settings
from training.families import FAMILIES


def load_classifier(
    path: Path, card: dict[str, Any], tensor: np.ndarray
) -> tuple[nn.Module, float]:
    """The eval-mode model and its largest |logit difference| from onnxruntime on `tensor`."""
    family = card["family"]
    if family not in FAMILIES or FAMILIES[family].group != "classifier":
        raise ValueError(f"no torch rebuild for family {family!r}")
    config_cls, model_cls = FAMILIES[family].config, FAMILIES[family].model
    assert config_cls is not None and model_cls is not None
    fields = {f.name for f in dataclasses.fields(config_cls)}
    saved = card["training"]["config"]["model"]
    config = config_cls(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in fields}
    )
    model = model_cls(config).eval()
    weights = {
        init.name.removeprefix("classifier."): torch.from_numpy(numpy_helper.to_array(init).copy())
        for init in onnx.load(str(path)).graph.initializer
        if init.name.startswith("classifier.")
    }
    state = model.state_dict()
    for name, value in weights.items():
        if name.endswith(".weight_bias"):  # folded batch norm: identity norm + the folded shift
            _fold_into_norm(state, name.removesuffix(".weight_bias"), value)
        else:
            state[name] = value
    model.load_state_dict(state)
    with torch.inference_mode():
        logits = model(torch.from_numpy(tensor)).numpy()
    reference = Graph(path, Settings(provider="cpu")).run({"image": tensor}, ["logits"])[0]
    return model, float(np.abs(logits - reference).max())


def _fold_into_norm(state: dict[str, torch.Tensor], conv: str, bias: torch.Tensor) -> None:
    # features.<i>.<j> is the conv; the batch norm is the next layer, features.<i>.<j + 1>
    prefix, _, index = conv.rpartition(".")
    norm = f"{prefix}.{int(index) + 1}"
    if f"{norm}.running_var" not in state:
        raise KeyError(f"no batch norm after {conv}")
    eps = 1e-5  # nn.BatchNorm2d's default
    state[f"{norm}.running_mean"] = torch.zeros_like(bias)
    state[f"{norm}.running_var"] = torch.full_like(bias, 1.0 - eps)
    state[f"{norm}.weight"] = torch.ones_like(bias)
    state[f"{norm}.bias"] = bias
