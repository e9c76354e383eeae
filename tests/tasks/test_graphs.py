"""Pictures -> graphs (service/tasks/graphs.py): deterministic, as documented, and the checks that
keep bad graphs away from onnxruntime."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from service.errors import InvalidInput, PayloadTooLarge
from service.settings import Settings
from service.tasks.graphs import (
    GraphSpec,
    batch_graphs,
    check_inputs,
    graphs_from_json,
    image_to_graph,
    knn_edges,
)

SPEC = GraphSpec()


def stroke_picture() -> np.ndarray:
    """An L-shaped stroke: a vertical bar and a horizontal foot, light on black."""
    picture = np.zeros((28, 28), np.float32)
    picture[4:22, 8:12] = 1.0
    picture[18:22, 8:20] = 0.6
    return picture


def digest(*arrays: np.ndarray) -> str:
    return hashlib.sha256(b"".join(a.tobytes() for a in arrays)).hexdigest()[:16]


def test_conversion_is_deterministic_and_stable() -> None:
    first = image_to_graph(stroke_picture(), SPEC)
    again = image_to_graph(stroke_picture().copy(), SPEC)
    assert digest(first.x, first.edge_index) == digest(again.x, again.edge_index)
    # 2x2 squares: the bar covers rows 2..10 x columns 4..5 of the 14x14 grid, the foot adds
    # columns 6..9 of rows 9..10; row-major order; k = 8 in-edges each
    assert first.x.shape == (9 * 2 + 2 * 4, 3) and first.edge_index.shape == (2, 26 * 8)
    assert first.x.dtype == np.float32 and first.edge_index.dtype == np.int64
    rows, cols = np.rint((first.x[:, 1:] + 1) * 6.5).astype(int).T
    assert (rows[0], cols[0]) == (2, 4) and (rows[-1], cols[-1]) == (10, 9)
    assert list(rows) == sorted(rows), "nodes come in row-major order"
    assert np.all((first.x[:, 0] == 1.0) | (np.isclose(first.x[:, 0], 0.6)))


def test_features_are_intensity_and_position_in_minus_one_to_one() -> None:
    picture = np.zeros((28, 28), np.float32)
    picture[0:2, 0:2] = 1.0  # top-left square
    picture[26:28, 26:28] = 0.5  # bottom-right square
    graph = image_to_graph(picture, SPEC)
    np.testing.assert_allclose(graph.x, [[1.0, -1.0, -1.0], [0.5, 1.0, 1.0]])
    assert graph.edge_index.tolist() == [[1, 0], [0, 1]], "each node's one neighbour"


def test_blank_picture_gives_one_node_with_a_self_edge() -> None:
    graph = image_to_graph(np.zeros((28, 28), np.float32), SPEC)
    assert graph.x.shape == (1, 3) and graph.edge_index.tolist() == [[0], [0]]


def test_max_nodes_keeps_the_brightest() -> None:
    picture = np.full((28, 28), 0.3, np.float32)
    picture[10:12, 10:12] = 0.9
    graph = image_to_graph(picture, GraphSpec(max_nodes=5))
    assert len(graph.x) == 5 and graph.x[:, 0].max() == pytest.approx(0.9)
    assert graph.edge_index.shape == (2, 5 * 4), "k is capped at nodes - 1"


def test_knn_breaks_ties_by_node_order() -> None:
    positions = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [5.0, 5.0]])
    edges = knn_edges(positions, 2)
    incoming = {t: sorted(edges[0, edges[1] == t].tolist()) for t in range(4)}
    assert incoming == {0: [1, 2], 1: [0, 2], 2: [0, 1], 3: [1, 2]}


def test_spec_round_trips_through_config() -> None:
    spec = GraphSpec(cell=4, threshold=0.1, k=4, max_nodes=20)
    assert GraphSpec.from_config(spec.to_config()) == spec
    with pytest.raises(ValueError, match="unknown"):
        GraphSpec.from_config({"radius": 3})
    with pytest.raises(ValueError, match="inconsistent"):
        GraphSpec.from_config({"cell": 5})


def test_batching_offsets_edges_and_numbers_graphs() -> None:
    graphs = [image_to_graph(p, SPEC) for p in (stroke_picture(), np.zeros((28, 28), np.float32))]
    inputs = batch_graphs(graphs)
    n0 = len(graphs[0].x)
    assert inputs["x"].shape == (n0 + 1, 3)
    assert inputs["batch"].tolist() == [0] * n0 + [1]
    assert inputs["edge_index"][:, -1].tolist() == [n0, n0]
    check_inputs(inputs, Settings())


def json_graph(nodes: list[list[float]], edges: list[list[int]]) -> dict[str, object]:
    return {"graph": {"nodes": nodes, "edges": edges}}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"graph": {"nodes": [[0.5, 0, 0]], "edges": [[0, 1]]}}, "graph.edges"),
        ({"graphs": [{"nodes": [[0.5, 0, 0]], "edges": [[0, -1]]}]}, "graphs[0].edges"),
        ({"graph": {"nodes": [[0.5, 0]], "edges": [[0, 0]]}}, "graph.nodes"),
        ({"graph": {"nodes": [], "edges": [[0, 0]]}}, "graph.nodes"),
        ({"graph": {"nodes": [[0.5, 0, 0]], "edges": []}}, "graph.edges"),
        ({"graph": {"nodes": [[0.5, 0, 0]], "edges": [[0.5, 0]]}}, "graph.edges"),
        ({"graph": {"nodes": [["a", 0, 0]], "edges": [[0, 0]]}}, "graph.nodes"),
        ({"graph": {"nodes": [[float("nan"), 0, 0]], "edges": [[0, 0]]}}, "graph.nodes"),
        ({"graph": {"nodes": [[0.5, 0, 0]]}}, "graph"),
        ({"graph": {"nodes": [[0.5, 0, 0]], "edges": [[0, 0]], "y": 1}}, "graph"),
        ({"graphs": []}, "graphs"),
        ({"graph": {}, "graphs": []}, "graph"),
        ({"graphs": [{"nodes": [[0, 0, 0]], "edges": [[0, 0]]}], "top": 1}, "top"),
    ],
)
def test_bad_json_graphs_name_the_field(body: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidInput) as error:
        graphs_from_json(body, SPEC, max_graphs=4)
    assert error.value.param == param, error.value.message


def test_too_many_graphs_nodes_or_edges() -> None:
    one = {"nodes": [[0.5, 0, 0]], "edges": [[0, 0]]}
    with pytest.raises(InvalidInput, match="at most 2 graphs"):
        graphs_from_json({"graphs": [one] * 3}, SPEC, max_graphs=2)
    inputs = graphs_from_json({"graphs": [one] * 3}, SPEC, max_graphs=3)
    with pytest.raises(PayloadTooLarge, match="nodes"):
        check_inputs(inputs, Settings(max_graph_nodes=2))
    with pytest.raises(PayloadTooLarge, match="edges"):
        check_inputs(inputs, Settings(max_graph_edges=2))


@pytest.mark.parametrize(
    ("batch", "edges", "message"),
    [
        ([1, 1], [[0, 1], [1, 0]], "0, 1, 2"),
        ([0, 2], [[0, 1], [0, 1]], "0, 1, 2"),
        ([1, 0], [[0, 1], [0, 1]], "0, 1, 2"),
        ([0, 1], [[0, 1], [1, 0]], "different graphs"),
        ([0], [[0], [0]], "one entry per node"),
    ],
)
def test_tensor_checks(batch: list[int], edges: list[list[int]], message: str) -> None:
    inputs = {
        "x": np.zeros((2, 3), np.float32),
        "edge_index": np.array(edges, np.int64),
        "batch": np.array(batch, np.int64),
    }
    with pytest.raises(InvalidInput, match=message):
        check_inputs(inputs, Settings())
