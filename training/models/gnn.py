"""Graph classifier: GraphSAGE layers (mean over in-neighbours) and a mean + max readout.

A batch is the disjoint union of its graphs (PyTorch Geometric's layout): node features
x (N, F), edges edge_index (2, E) as (source, target) rows, and batch (N,) naming each node's graph
0..G-1 in order. Messages are gathered with plain indexing and summed with `index_add`, which the
dynamo exporter turns into ScatterND (add): correct and fast in onnxruntime, with the number of
nodes, edges and graphs all dynamic (see /work/shared/ONNX_NOTES.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn


@dataclass
class GNNConfig:
    in_features: int = 3  # node features (service/tasks/graphs.py: intensity, row, column)
    num_classes: int = 10
    hidden: int = 96  # width of every node embedding
    layers: int = 4  # message-passing rounds
    dropout: float = 0.1  # in the head; 0 turns it off


def mean_over_in_neighbours(h: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    """For each node, the mean of its in-neighbours' h (0 for a node with none). (N, D)."""
    source, target = edge_index[0], edge_index[1]
    total = torch.zeros_like(h).index_add(0, target, h[source])  # (N, D)
    ones = torch.ones_like(target, dtype=h.dtype).unsqueeze(1)  # (E, 1)
    degree = torch.zeros(h.shape[0], 1, dtype=h.dtype).index_add(0, target, ones)  # (N, 1)
    return total / degree.clamp(min=1.0)


class SAGELayer(nn.Module):
    """h_i <- h_i + ReLU(BN(W_self h_i + W_neighbours mean_{j -> i} h_j)): residual GraphSAGE."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.self_weight = nn.Linear(width, width)
        self.neighbour_weight = nn.Linear(width, width, bias=False)
        self.norm = nn.BatchNorm1d(width)

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        messages = mean_over_in_neighbours(h, edge_index)  # (N, D)
        return h + torch.relu(self.norm(self.self_weight(h) + self.neighbour_weight(messages)))


def readout(h: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """Per graph, the mean and the max of its nodes' h: (G, 2D). Graphs are numbered 0..G-1 in
    node order, so G is the last node's graph + 1."""
    n, width = h.shape
    graphs = cast(int, batch[-1].item()) + 1  # no int(): it would freeze G at export
    torch._check(graphs >= 1)
    torch._check(graphs <= n)  # every graph has a node: the service checks batch before calling
    ones = torch.ones(n, 1, dtype=h.dtype)
    total = torch.zeros(n, width, dtype=h.dtype).index_add(0, batch, h)[:graphs]  # (G, D)
    count = torch.zeros(n, 1, dtype=h.dtype).index_add(0, batch, ones)[:graphs]  # (G, 1)
    index = batch.unsqueeze(1).expand(n, width)
    largest = torch.zeros(n, width, dtype=h.dtype).scatter_reduce(
        0, index, h, "amax", include_self=False
    )[:graphs]  # (G, D)
    return torch.cat([total / count.clamp(min=1.0), largest], dim=1)


class GNN(nn.Module):
    def __init__(self, config: GNNConfig) -> None:
        super().__init__()
        assert config.layers >= 1, "a GNN needs at least one message-passing layer"
        assert 0 <= config.dropout < 1, f"dropout must be in [0, 1), got {config.dropout}"
        self.config = config
        self.embed = nn.Sequential(
            nn.Linear(config.in_features, config.hidden), nn.BatchNorm1d(config.hidden), nn.ReLU()
        )
        self.layers = nn.ModuleList(SAGELayer(config.hidden) for _ in range(config.layers))
        self.head = nn.Sequential(
            nn.Linear(2 * config.hidden, config.hidden),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.num_classes),
        )

    def forward(
        self, x: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor
    ) -> torch.Tensor:
        h = self.embed(x)  # (N, F) -> (N, D)
        for layer in self.layers:
            h = layer(h, edge_index)  # (N, D)
        return self.head(readout(h, batch))  # (G, 2D) -> (G, classes) logits
