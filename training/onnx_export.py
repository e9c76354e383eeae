"""Export a torch module to one self-contained ONNX file and check onnxruntime agrees with torch."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

OPSET = 18


class ExportMismatch(RuntimeError):
    """onnxruntime's answer differs from torch's by more than the tolerance."""


def export_onnx(
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_shapes: Any,
    opset: int = OPSET,
    translations: Mapping[Any, Any] | None = None,
) -> Path:
    """Export with the dynamo exporter (see shared ONNX notes) to one file, no external data."""
    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # torch 2.13's exporter trips over its own deprecation of LeafSpec; nothing to act on
        warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
        torch.onnx.export(
            module,
            example_inputs,
            str(path),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
            custom_translation_table=dict(translations) if translations else None,
        )
    return path


def onnx_session(path: Path | bytes, threads: int = 1) -> ort.InferenceSession:
    """The one way training opens an ONNX file: CPU, `threads` intra-op threads, one inter-op.
    Every card number and re-measurement goes through it, so they agree to the last digit."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def max_abs_difference(
    module: torch.nn.Module,
    path: Path,
    inputs: dict[str, torch.Tensor],
) -> float:
    """Largest absolute difference over every output between torch and onnxruntime on `inputs`."""
    module.eval()
    with torch.no_grad():
        expected = module(*inputs.values())
    if isinstance(expected, torch.Tensor):
        expected = (expected,)
    # One thread: onnxruntime's ScatterND (add), which index_add exports to, races over duplicate
    # indices in its thread pool (onnxruntime issues #18048, #23396): a GNN failed here now and then.
    got = onnx_session(path, threads=1).run(None, {k: v.numpy() for k, v in inputs.items()})
    assert len(got) == len(expected), f"onnx has {len(got)} outputs, torch {len(expected)}"
    for g, e in zip(got, expected, strict=True):
        # without this, broadcasting would quietly compare a (1, 10) answer with a (N, 10) one
        if g.shape != tuple(e.shape):
            raise ExportMismatch(
                f"{path.name}: onnxruntime shape {g.shape}, torch {tuple(e.shape)}"
            )
    return max(
        float(np.max(np.abs(g - e.detach().numpy()))) if g.size else 0.0
        for g, e in zip(got, expected, strict=True)
    )


def verify(
    module: torch.nn.Module, path: Path, inputs: dict[str, torch.Tensor], tolerance: float
) -> float:
    """Raise ExportMismatch when onnxruntime and torch differ by more than `tolerance`."""
    diff = max_abs_difference(module, path, inputs)
    if not diff <= tolerance:
        raise ExportMismatch(
            f"{path.name}: max |onnxruntime - torch| = {diff:.3g} > {tolerance:.3g}"
        )
    return diff
