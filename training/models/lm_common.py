"""What every language-model family shares: how its step graph's state is described.

The step graph is `(input_ids, *state) -> (logits, *next_state)`. Each state tensor is described
by a `StateSpec` that goes into config.json (the "step" section), so the service can create the
initial state and feed outputs back as inputs without knowing the family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

BATCH = "batch"  # symbolic axis: the number of sequences
PAST = "past"  # symbolic axis: tokens already seen (grows by the new tokens each call)


@dataclass(frozen=True)
class StateSpec:
    input: str  # step graph input name
    output: str  # step graph output name that becomes this input on the next call
    dims: list[int | str]  # sizes, with BATCH and PAST for the symbolic axes
    batch_axis: int
    length_axis: int | None = None  # the PAST axis, for caches that grow

    def __post_init__(self) -> None:
        assert self.dims[self.batch_axis] == BATCH, f"{self.input}: batch axis mislabelled"
        if self.length_axis is not None:
            assert self.dims[self.length_axis] == PAST, f"{self.input}: past axis mislabelled"

    def shape(self, batch: int, past: int = 0) -> tuple[int, ...]:
        named = {BATCH: batch, PAST: past}
        return tuple(named[d] if isinstance(d, str) else d for d in self.dims)

    def to_json(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "output": self.output,
            "datatype": "FP32",
            "dims": list(self.dims),
            "batch_axis": self.batch_axis,
            "length_axis": self.length_axis,
            "initial": "zeros",
        }


def example_state(
    specs: list[StateSpec], batch: int, past: int, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """Random state tensors of the right shapes (for export examples and checks)."""
    return [torch.randn(s.shape(batch, past), generator=generator) * 0.5 for s in specs]


def dynamic_state_shapes(specs: list[StateSpec]) -> list[dict[int, str]]:
    """dynamo `dynamic_shapes` entries for the state inputs."""
    shapes = []
    for s in specs:
        axes = {s.batch_axis: BATCH}
        if s.length_axis is not None:
            axes[s.length_axis] = PAST
        shapes.append(axes)
    return shapes


class TiedHead(nn.Module):
    """The output layer on the input embedding matrix (tied): full or adaptive softmax.

    With `cutoffs` (say 2000, 5000) the vocabulary, which is sorted by frequency, is split into a
    head of the 2000 most frequent words plus one entry per tail cluster, and tail clusters
    2000-4999 and 5000-V (Grave et al. 2017, "Efficient softmax approximation for GPUs", with
    full-width tied tails). P(w) = P(cluster | h) P(w | cluster, h) is an exact distribution, but
    training only scores a tail for the positions whose target is in it: ~4x less work than a
    10k-word softmax, which dominates a small model's cost. `logits` returns the full
    log-probabilities (normalised logits), which is what the ONNX graphs output.
    """

    def __init__(self, weight: torch.Tensor, cutoffs: tuple[int, ...] = ()) -> None:
        super().__init__()
        vocab, dim = weight.shape
        self.weight = weight  # (V, C), the embedding's own Parameter when tied
        self.bias = nn.Parameter(torch.zeros(vocab))
        self.bounds = [0, *(c for c in cutoffs if 0 < c < vocab), vocab]
        n_tails = len(self.bounds) - 2
        self.cluster = nn.Linear(dim, n_tails) if n_tails else None

    def head_logits(self, h: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., head words + tail clusters)."""
        end = self.bounds[1]
        logits = h @ self.weight[:end].T + self.bias[:end]
        if self.cluster is not None:
            logits = torch.cat([logits, self.cluster(h)], dim=-1)
        return logits

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., V): raw logits, or log-probabilities when adaptive."""
        if self.cluster is None:
            return h @ self.weight.T + self.bias
        head = F.log_softmax(self.head_logits(h), dim=-1)
        n_head = self.bounds[1]
        parts = [head[..., :n_head]]
        for k, (lo, hi) in enumerate(zip(self.bounds[1:-1], self.bounds[2:], strict=True)):
            tail = F.log_softmax(h @ self.weight[lo:hi].T + self.bias[lo:hi], dim=-1)
            parts.append(tail + head[..., n_head + k : n_head + k + 1])
        return torch.cat(parts, dim=-1)

    def loss(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood of targets (B, T) given features h (B, T, C)."""
        h, targets = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
        if self.cluster is None:
            return F.cross_entropy(self.logits(h), targets)
        head = F.log_softmax(self.head_logits(h), dim=-1)  # (N, head + clusters)
        n_head = self.bounds[1]
        in_head = targets < n_head
        # tail targets first take their cluster's entry of the head softmax
        head_index = torch.where(in_head, targets, torch.zeros_like(targets))
        for k, lo in enumerate(self.bounds[1:-1]):
            head_index = torch.where(
                targets >= lo, torch.full_like(targets, n_head + k), head_index
            )
        nll = -head.gather(1, head_index.unsqueeze(1)).squeeze(1)  # (N,)
        for lo, hi in zip(self.bounds[1:-1], self.bounds[2:], strict=True):
            rows = ((targets >= lo) & (targets < hi)).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            tail = F.log_softmax(h[rows] @ self.weight[lo:hi].T + self.bias[lo:hi], dim=-1)
            picked = tail.gather(1, (targets[rows] - lo).unsqueeze(1)).squeeze(1)
            nll = nll.index_add(0, rows, -picked)
        return nll.mean()
