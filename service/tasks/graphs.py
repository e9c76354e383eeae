"""Images as graphs for the graph classifier (gnn-*), and graphs as the model's input tensors.

The conversion, used by training and by the service alike (pure numpy, no torch):

1. The (28, 28) picture, light strokes on a dark background with intensities in [0, 1], is cut
   into a regular grid of `cell` x `cell` pixel squares (superpixels of a fixed shape; 2 gives a
   14 x 14 grid) and each square's mean intensity is taken.
2. Every square brighter than `threshold` becomes a node, in row-major order. When more than
   `max_nodes` qualify, the brightest are kept (ties: row-major order), still listed row-major.
   A blank picture gives one node: its brightest square (the first one when all are equal).
3. Node features, in this order: the mean intensity, then the row and the column of the square's
   centre scaled to [-1, 1] (-1 = top / left edge of the grid, +1 = bottom / right).
4. Each node receives an edge from each of its `k` spatially nearest nodes (Euclidean distance on
   the grid, ties broken by node order; fewer when the graph has fewer nodes). A one-node graph
   has the edge 0 -> 0, so no graph is without edges.

Several graphs go into one model call as a disjoint union in PyTorch Geometric's layout:
`x` (N, F) FP32 node features, `edge_index` (2, E) INT64 rows (source, target), `batch` (N,)
INT64 naming each node's graph, 0..G-1 in order. The model answers one row per graph.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from service.errors import InvalidInput, PayloadTooLarge
from service.settings import Settings

FEATURES = ("intensity", "row", "column")


@dataclass(frozen=True)
class GraphSpec:
    """The `graph` section of a graph classifier's config.json: how pictures become graphs."""

    cell: int = 2  # side of the square of pixels that one node stands for
    threshold: float = 0.2  # squares with a mean intensity above this become nodes
    k: int = 8  # incoming edges per node, from its nearest neighbours
    max_nodes: int = 96  # brightest squares kept per picture
    image_size: int = 28  # the picture the grid is laid on (after the usual preprocessing)

    @property
    def features(self) -> int:
        return len(FEATURES)

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> GraphSpec:
        known = set(cls.__dataclass_fields__)
        unknown = set(section) - known - {"features", "layout"}
        if unknown:
            raise ValueError(f"graph section: unknown keys {sorted(unknown)}")
        spec = cls(**{k: type(getattr(cls(), k))(v) for k, v in section.items() if k in known})
        if spec.image_size % spec.cell or spec.cell < 1 or spec.k < 1 or spec.max_nodes < 1:
            raise ValueError(f"graph section: inconsistent values {asdict(spec)}")
        return spec

    def to_config(self) -> dict[str, Any]:
        return {**asdict(self), "features": list(FEATURES), "layout": "x, edge_index, batch"}


@dataclass(frozen=True)
class GraphSample:
    x: np.ndarray  # (N, F) float32 node features
    edge_index: np.ndarray  # (2, E) int64: sources, targets


def image_to_graph(gray: np.ndarray, spec: GraphSpec) -> GraphSample:
    """A (image_size, image_size) picture in [0, 1] -> its graph (see the module docstring)."""
    size, cell = spec.image_size, spec.cell
    assert gray.shape == (size, size), f"expected ({size}, {size}), got {gray.shape}"
    side = size // cell
    cells = gray.astype(np.float32).reshape(side, cell, side, cell).mean(axis=(1, 3))  # (S, S)
    flat = cells.reshape(-1)
    nodes = np.flatnonzero(flat > spec.threshold)
    if len(nodes) > spec.max_nodes:
        brightest = np.argsort(-flat[nodes], kind="stable")[: spec.max_nodes]
        nodes = np.sort(nodes[brightest])
    if len(nodes) == 0:
        nodes = np.array([int(np.argmax(flat))])
    rows, cols = np.divmod(nodes, side)
    scale = (side - 1) / 2 if side > 1 else 1.0
    x = np.stack([flat[nodes], rows / scale - 1.0, cols / scale - 1.0], axis=1).astype(np.float32)
    return GraphSample(x, knn_edges(np.stack([rows, cols], axis=1).astype(np.float64), spec.k))


def knn_edges(positions: np.ndarray, k: int) -> np.ndarray:
    """(2, E) edges j -> i from each node's k nearest others (ties by index); 0 -> 0 for one node."""
    n = len(positions)
    if n == 1:
        return np.zeros((2, 1), dtype=np.int64)
    k = min(k, n - 1)
    distance = ((positions[:, None, :] - positions[None, :, :]) ** 2).sum(-1)  # (N, N)
    np.fill_diagonal(distance, np.inf)
    neighbours = np.argsort(distance, axis=1, kind="stable")[:, :k]  # (N, k)
    targets = np.repeat(np.arange(n), k)
    return np.stack([neighbours.reshape(-1), targets]).astype(np.int64)


def batch_graphs(graphs: Sequence[GraphSample]) -> dict[str, np.ndarray]:
    """Graphs -> the model's inputs (x, edge_index, batch) for their disjoint union."""
    offsets = np.cumsum([0] + [len(g.x) for g in graphs])
    return {
        "x": np.concatenate([g.x for g in graphs]).astype(np.float32),
        "edge_index": np.concatenate(
            [
                g.edge_index.astype(np.int64) + offset
                for g, offset in zip(graphs, offsets[:-1], strict=True)
            ],
            axis=1,
        ),
        "batch": np.repeat(np.arange(len(graphs)), np.diff(offsets)).astype(np.int64),
    }


def images_to_inputs(images: Sequence[np.ndarray], spec: GraphSpec) -> dict[str, np.ndarray]:
    """Preprocessed pictures (each (1, H, W) or (H, W), intensities in [0, 1]) -> model inputs."""
    return batch_graphs([image_to_graph(np.asarray(i).reshape(i.shape[-2:]), spec) for i in images])


# ---------------------------------------------------------------------------------------------
# Graphs from clients: JSON `{"nodes": [[...], ...], "edges": [[source, target], ...]}`, or the
# three tensors through the Open Inference Protocol. Checked here so that nothing onnxruntime
# would index out of range ever reaches it.


def table(value: Any, columns: int, where: str, rows_of: str) -> np.ndarray:
    """A JSON list of `columns`-number rows (at least one) as float64, or a 400 naming `where`."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        array = np.zeros((0,))
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] != columns:
        raise InvalidInput(
            f"{where} must be a non-empty list of {rows_of} rows of numbers", param=where
        )
    if not np.isfinite(array).all():
        raise InvalidInput(f"{where} contains NaN or infinity", param=where)
    return array


def graph_from_json(obj: Any, spec: GraphSpec, where: str) -> GraphSample:
    if not isinstance(obj, dict):
        raise InvalidInput(f"{where} must be an object with nodes and edges", param=where)
    unknown = set(obj) - {"nodes", "edges"}
    if unknown:
        raise InvalidInput(f"{where}: unknown fields {sorted(unknown)}", param=where)
    if "nodes" not in obj or "edges" not in obj:
        raise InvalidInput(f"{where} needs nodes and edges", param=where)
    x = table(obj["nodes"], spec.features, f"{where}.nodes", f"[{', '.join(FEATURES)}]")
    edges = table(obj["edges"], 2, f"{where}.edges", "[source, target]")
    if not np.all(edges == np.round(edges)):
        raise InvalidInput(f"{where}.edges must be integers", param=f"{where}.edges")
    if edges.min() < 0 or edges.max() >= len(x):
        raise InvalidInput(
            f"{where}.edges refers to a node outside 0..{len(x) - 1}", param=f"{where}.edges"
        )
    return GraphSample(x.astype(np.float32), edges.T.astype(np.int64))


def graphs_from_json(
    obj: Mapping[str, Any], spec: GraphSpec, max_graphs: int
) -> dict[str, np.ndarray]:
    """A classify body `{"graph": {...}}` or `{"graphs": [{...}, ...]}` -> model inputs."""
    unknown = set(obj) - {"graph", "graphs"}
    if unknown:
        raise InvalidInput(f"unknown fields {sorted(unknown)}", param=sorted(unknown)[0])
    if ("graph" in obj) == ("graphs" in obj):
        raise InvalidInput("give exactly one of graph or graphs", param="graph")
    items = [obj["graph"]] if "graph" in obj else obj["graphs"]
    field = "graph" if "graph" in obj else "graphs"
    if not isinstance(items, list) or not items:
        raise InvalidInput("graphs must be a non-empty list", param="graphs")
    if len(items) > max_graphs:
        raise InvalidInput(
            f"at most {max_graphs} graphs per request, got {len(items)}", param=field
        )
    where = [field] if field == "graph" else [f"graphs[{i}]" for i in range(len(items))]
    return batch_graphs([graph_from_json(g, spec, w) for g, w in zip(items, where, strict=True)])


def check_graph(x: np.ndarray, edge_index: np.ndarray, batch: np.ndarray, where: str = "") -> None:
    """Refuse graph tensors the model cannot answer: bad shapes, NaN, indices out of range, graph
    ids that are not 0..G-1 in order, edges between different graphs."""
    prefix = f"{where}." if where else ""
    n = x.shape[0] if x.ndim == 2 else -1
    if x.ndim != 2 or n < 1:
        raise InvalidInput(f"{prefix}x must be (nodes, features)", param=f"{prefix}x")
    if not np.isfinite(x).all():
        raise InvalidInput(f"{prefix}x contains NaN or infinity", param=f"{prefix}x")
    if edge_index.ndim != 2 or edge_index.shape[0] != 2 or edge_index.shape[1] < 1:
        raise InvalidInput(
            f"{prefix}edge_index must be (2, edges) with at least one edge",
            param=f"{prefix}edge_index",
        )
    if edge_index.min() < 0 or edge_index.max() >= n:
        raise InvalidInput(
            f"{prefix}edge_index refers to a node outside 0..{n - 1}", param=f"{prefix}edge_index"
        )
    if batch.shape != (n,):
        raise InvalidInput(f"{prefix}batch must have one entry per node ({n})", param="batch")
    if batch[0] != 0 or np.any(np.diff(batch) < 0) or np.any(np.diff(batch) > 1):
        raise InvalidInput(
            "batch must number the graphs 0, 1, 2, ... in node order (nodes of a graph together)",
            param="batch",
        )
    if np.any(batch[edge_index[0]] != batch[edge_index[1]]):
        raise InvalidInput(
            f"{prefix}edge_index joins nodes of different graphs", param="edge_index"
        )


def check_inputs(inputs: Mapping[str, np.ndarray], settings: Settings) -> None:
    """The tensors of one request (classify JSON, uploaded pictures or /v2 infer), with limits.
    Runs after the data plane's shape and datatype checks."""
    x, edge_index, batch = inputs["x"], inputs["edge_index"], inputs["batch"]
    if x.shape[0] > settings.max_graph_nodes:
        raise PayloadTooLarge(
            f"{x.shape[0]} nodes in one request; the limit is {settings.max_graph_nodes}",
            param="x",
        )
    if edge_index.ndim == 2 and edge_index.shape[1] > settings.max_graph_edges:
        raise PayloadTooLarge(
            f"{edge_index.shape[1]} edges in one request; the limit is {settings.max_graph_edges}",
            param="edge_index",
        )
    check_graph(x, edge_index, batch)


GRAPH_INPUTS = ("x", "edge_index", "batch")
