"""Perplexity and next-word accuracy of a language model on a token stream.

Every model family is scored the same way: the stream is cut into windows of `block` tokens that
overlap by half; the first window scores all its predictions, every later one only its second
half. So each token (but the first, which nothing predicts) is scored exactly once, with between
block/2 and block-1 tokens of context — the Transformer's limit, applied to all families alike.
The n-gram baseline (training/language_models/ngram.py) scores the same tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnxruntime as ort
import torch

LogitsFn = Callable[[np.ndarray], np.ndarray]  # ids (B, T) int64 -> logits (B, T, V)


def windows(n: int, block: int) -> list[tuple[int, int, int]]:
    """(start, end, first scored position inside the window) covering targets 1..n-1 once."""
    assert block >= 2, "windows need at least 2 tokens"
    stride = block // 2
    spans = [(0, min(block, n), 0)]
    start = 0
    while spans[-1][1] < n:
        start += stride
        end = min(start + block, n)
        spans.append((start, end, spans[-1][1] - 1 - start))  # resume after the last scored
    return spans


def evaluate_stream(
    logits_fn: LogitsFn, ids: np.ndarray, block: int, batch_size: int = 16
) -> dict[str, float]:
    """Perplexity, mean loss (nats) and top-1/top-5 accuracy of next-token prediction on `ids`."""
    nll, top1, top5, count = 0.0, 0, 0, 0
    spans = windows(len(ids), block)
    # group windows of equal length (only the last may be shorter) into batches
    for i in range(0, len(spans), batch_size):
        group = spans[i : i + batch_size]
        for length in sorted({e - s for s, e, _ in group}):
            same = [w for w in group if w[1] - w[0] == length]
            x = np.stack([ids[s:e] for s, e, _ in same])  # (b, T)
            logits = torch.from_numpy(np.ascontiguousarray(logits_fn(x)))  # (b, T, V)
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            targets = torch.from_numpy(x[:, 1:])  # (b, T-1)
            best = log_probs[:, :-1].topk(5, dim=-1).indices  # (b, T-1, 5)
            for row, (_, _, first) in enumerate(same):
                t = targets[row, first:]
                lp = log_probs[row, first:-1].gather(-1, t.unsqueeze(-1)).squeeze(-1)
                nll -= float(lp.double().sum())
                top1 += int((best[row, first:, 0] == t).sum())
                top5 += int((best[row, first:] == t.unsqueeze(-1)).any(-1).sum())
                count += len(t)
    assert count == len(ids) - 1, f"scored {count} tokens, expected {len(ids) - 1}"
    loss = nll / count
    return {
        "perplexity": float(np.exp(loss)),
        "loss": loss,
        "top1": top1 / count,
        "top5": top5 / count,
        "tokens": count,
    }


def torch_logits_fn(model: torch.nn.Module) -> LogitsFn:
    def run(x: np.ndarray) -> np.ndarray:
        model.eval()
        device = next(model.parameters()).device  # a GPU under torchrun with nccl
        with torch.no_grad():
            logits, _ = model(torch.from_numpy(x).to(device))
        assert logits is not None, "without targets a model returns its logits"
        return logits.cpu().numpy()

    return run


def onnx_logits_fn(session: ort.InferenceSession) -> LogitsFn:
    """model.onnx: input_ids (B, T) -> logits (B, T, V)."""

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(["logits"], {"input_ids": x})[0])

    return run
