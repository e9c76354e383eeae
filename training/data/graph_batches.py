"""Image datasets as graphs for the graph classifier, converted by the service's own code.

The images come normalised from training.data.images; the conversion wants intensities in [0, 1]
exactly as the service computes them (uint8 / 255 in float32), so the uint8 values are recovered
first (rounding makes this exact) and divided again.
"""

from __future__ import annotations

import numpy as np
import torch

from service.tasks.graphs import GraphSample, GraphSpec, batch_graphs, image_to_graph


def unit_intensities(images: torch.Tensor, mean: float, std: float) -> np.ndarray:
    """Normalised (N, 1, H, W) -> (N, H, W) float32 in [0, 1], bit-identical to uint8 / 255."""
    raw = np.rint((images[:, 0].double() * std + mean).numpy() * 255).clip(0, 255)
    return raw.astype(np.uint8).astype(np.float32) / np.float32(255)


def images_to_graphs(
    images: torch.Tensor, mean: float, std: float, spec: GraphSpec
) -> list[GraphSample]:
    return [image_to_graph(image, spec) for image in unit_intensities(images, mean, std)]


def graph_batch(graphs: list[GraphSample]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, edge_index, batch) tensors for the disjoint union of `graphs`."""
    inputs = batch_graphs(graphs)
    return tuple(torch.from_numpy(inputs[k]) for k in ("x", "edge_index", "batch"))  # type: ignore[return-value]
