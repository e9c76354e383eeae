"""Classification post-processing: probabilities -> top-k labelled predictions."""

from __future__ import annotations

from typing import Any

import numpy as np


def top_k(probabilities: np.ndarray, labels: tuple[str, ...], k: int) -> list[list[dict[str, Any]]]:
    """One list of the k most probable classes per row, most probable first."""
    k = min(k, probabilities.shape[1])
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [
        [
            {
                "label": labels[i] if i < len(labels) else str(i),
                "index": int(i),
                "probability": float(row[i]),
            }
            for i in idx
        ]
        for row, idx in zip(probabilities, order, strict=True)
    ]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    probabilities: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return probabilities
