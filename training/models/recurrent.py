"""Recurrent word language models: vanilla RNN (tanh), LSTM and GRU, one class for the three.

    ids (B, T) -> embedding (B, T, E) -> `n_layer` recurrent layers (B, T, H)
               -> projection to E (when H != E) -> logits with the embedding matrix (tied)

Training runs torch's fused nn.RNN/LSTM/GRU. Export swaps each layer for a custom op that
translates to the native ONNX RNN/LSTM/GRU operator: a dynamo export of nn.RNN unrolls the
time loop and freezes the sequence length, and nn.LSTM/GRU break when exported twice in one
process (shared ONNX notes). The native ops take any length, so the step graph handles a whole
prompt in one call and each later token in another, with state (h, or h and c) in and out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from onnxscript import INT64
from onnxscript import opset18 as op
from torch import nn

from training.models.lm_common import StateSpec, TiedHead

CELLS = ("rnn", "lstm", "gru")


@dataclass
class RecurrentConfig:
    cell: str = "lstm"  # rnn (tanh), lstm or gru
    vocab_size: int = 10000  # set from the tokenizer
    n_embd: int = 128  # embedding size E, also the tied output embedding
    hidden: int = 512  # recurrent state size H
    n_layer: int = 1  # stacked recurrent layers
    dropout: float = 0.2  # on embeddings, between layers and before the output
    tie_embeddings: bool = True  # output layer reuses the input embedding matrix
    adaptive_cutoffs: tuple[int, ...] = (2000, 5000)  # adaptive softmax clusters; () = full


class RecurrentLM(nn.Module):
    def __init__(self, config: RecurrentConfig) -> None:
        super().__init__()
        assert config.cell in CELLS, f"cell must be one of {CELLS}, got {config.cell!r}"
        assert 0 <= config.dropout < 1, f"dropout must be in [0, 1), got {config.dropout}"
        self.config = config
        rnn_class = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[config.cell]
        self.embedding = nn.Embedding(config.vocab_size, config.n_embd)
        self.rnn = rnn_class(
            config.n_embd,
            config.hidden,
            num_layers=config.n_layer,
            dropout=config.dropout if config.n_layer > 1 else 0.0,
            batch_first=True,
        )
        self.drop = nn.Dropout(config.dropout)
        self.project = (
            nn.Linear(config.hidden, config.n_embd) if config.hidden != config.n_embd else None
        )
        nn.init.normal_(self.embedding.weight, std=0.05)
        output = self.embedding.weight
        if not config.tie_embeddings:
            output = nn.Parameter(torch.randn(config.vocab_size, config.n_embd) * 0.05)
        self.head = TiedHead(output, config.adaptive_cutoffs)

    @property
    def state_count(self) -> int:
        return 2 if self.config.cell == "lstm" else 1

    def state_specs(self) -> list[StateSpec]:
        """h (and c for the LSTM): (layers, batch, hidden), zeros at the start."""
        c = self.config
        names = ["h", "c"][: self.state_count]
        return [
            StateSpec(f"{n}_in", f"{n}_out", [c.n_layer, "batch", c.hidden], batch_axis=1)
            for n in names
        ]

    def initial_state(self, batch: int) -> list[torch.Tensor]:
        shape = (self.config.n_layer, batch, self.config.hidden)
        device = self.embedding.weight.device
        return [torch.zeros(shape, device=device) for _ in range(self.state_count)]

    def output_features(self, y: torch.Tensor) -> torch.Tensor:
        y = self.drop(y)  # (B, T, H)
        return y if self.project is None else self.project(y)  # (B, T, E)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Training: (None, loss) with targets. Evaluation: (logits (B, T, V), None).

        Zero initial state; torch's fused recurrent kernels.
        """
        x = self.drop(self.embedding(idx))  # (B, T, E)
        y, _ = self.rnn(x)  # (B, T, H)
        h = self.output_features(y)
        if targets is None:
            return self.head.logits(h), None
        return None, self.head.loss(h, targets)

    def step(self, idx: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Export path: (ids (B, T), h[, c]) -> (logits (B, T, V), h'[, c']) with native ONNX ops."""
        assert not self.training, "the export path has no dropout: call .eval() first"
        x = self.embedding(idx).transpose(0, 1)  # (T, B, E): ONNX recurrent ops are time-major
        new_state: list[list[torch.Tensor]] = [[] for _ in state]
        for layer in range(self.config.n_layer):
            weights = [getattr(self.rnn, f"{w}_l{layer}") for w in RNN_WEIGHTS]
            layer_state = [s[layer] for s in state]  # each (B, H)
            op_fn = {"rnn": rnn_tanh_layer, "lstm": lstm_layer, "gru": gru_layer}[self.config.cell]
            x, *last = op_fn(x, *layer_state, *weights)  # (T, B, H)
            for kept, s in zip(new_state, last, strict=True):
                kept.append(s)
        logits = self.head.logits(self.output_features(x.transpose(0, 1)))  # (B, T, V)
        return (logits, *(torch.stack(s) for s in new_state))  # states (L, B, H)

    def full(self, idx: torch.Tensor) -> torch.Tensor:
        """Export path for model.onnx: logits (B, T, V) from zero state."""
        return self.step(idx, *self.initial_state_like(idx))[0]

    def initial_state_like(self, idx: torch.Tensor) -> list[torch.Tensor]:
        # built from idx's batch size inside the graph, so model.onnx keeps a dynamic batch
        zeros = self.embedding.weight.new_zeros(self.config.n_layer, 1, self.config.hidden)
        batch_zeros = zeros.expand(-1, idx.shape[0], -1)
        return [batch_zeros for _ in range(self.state_count)]


RNN_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")

# ---------------------------------------------------------------------------------------------
# One recurrent layer as a custom op: eager = torch's fused kernel, ONNX = the native operator.
# x (T, B, I), h0/c0 (B, H), weights as nn.RNN/LSTM/GRU store them (gates stacked on rows).


def _vf_layer(name: str, x: torch.Tensor, hx: Any, weights: list[torch.Tensor]) -> Any:
    fn = getattr(torch._VF, name)
    # args: input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first
    return fn(x, hx, weights, True, 1, 0.0, False, False, False)


@torch.library.custom_op("seedlm::rnn_tanh_layer", mutates_args=())
def rnn_tanh_layer(
    x: torch.Tensor,
    h0: torch.Tensor,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b_ih: torch.Tensor,
    b_hh: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    y, h = _vf_layer("rnn_tanh", x, h0.unsqueeze(0), [w_ih, w_hh, b_ih, b_hh])
    return y, h.squeeze(0)


@torch.library.custom_op("seedlm::gru_layer", mutates_args=())
def gru_layer(
    x: torch.Tensor,
    h0: torch.Tensor,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b_ih: torch.Tensor,
    b_hh: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    y, h = _vf_layer("gru", x, h0.unsqueeze(0), [w_ih, w_hh, b_ih, b_hh])
    return y, h.squeeze(0)


@torch.library.custom_op("seedlm::lstm_layer", mutates_args=())
def lstm_layer(
    x: torch.Tensor,
    h0: torch.Tensor,
    c0: torch.Tensor,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b_ih: torch.Tensor,
    b_hh: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    y, h, c = _vf_layer("lstm", x, (h0.unsqueeze(0), c0.unsqueeze(0)), [w_ih, w_hh, b_ih, b_hh])
    return y, h.squeeze(0), c.squeeze(0)


def _fake_layer(x: torch.Tensor, *state_and_weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
    h0 = state_and_weights[0]
    n_state = len(state_and_weights) - 4
    y = x.new_empty(x.shape[0], x.shape[1], h0.shape[-1])
    return (y, *(s.new_empty(s.shape) for s in state_and_weights[:n_state]))


rnn_tanh_layer.register_fake(_fake_layer)
gru_layer.register_fake(_fake_layer)
lstm_layer.register_fake(_fake_layer)


# ONNX translations. ONNX stacks gates in a different order than torch: LSTM i,o,f,c (torch
# i,f,g,o) and GRU z,r,h (torch r,z,n); torch's GRU applies the reset gate after the hidden
# matmul, which is ONNX's linear_before_reset=1.
def ints(*values: int) -> INT64:
    """A constant INT64 vector (axes, starts, ends) for the ONNX ops below."""
    return cast(INT64, op.Constant(value_ints=list(values)))  # Constant's type is a union


def _reorder(w: Any, hidden: int, order: tuple[int, ...]) -> Any:
    chunks = [op.Slice(w, ints(k * hidden), ints((k + 1) * hidden), ints(0)) for k in order]
    return op.Concat(*chunks, axis=0)


def _onnx_weights(
    w_ih: Any, w_hh: Any, b_ih: Any, b_hh: Any, hidden: int, order: tuple[int, ...]
) -> tuple[Any, Any, Any]:
    w = op.Unsqueeze(_reorder(w_ih, hidden, order), ints(0))  # (1, G*H, I)
    r = op.Unsqueeze(_reorder(w_hh, hidden, order), ints(0))  # (1, G*H, H)
    b = op.Concat(_reorder(b_ih, hidden, order), _reorder(b_hh, hidden, order), axis=0)
    return w, r, op.Unsqueeze(b, ints(0))  # (1, 2*G*H)


def rnn_tanh_layer_onnx(x: Any, h0: Any, w_ih: Any, w_hh: Any, b_ih: Any, b_hh: Any) -> Any:
    hidden = w_hh.shape[1]
    w, r, b = _onnx_weights(w_ih, w_hh, b_ih, b_hh, hidden, (0,))
    y, h = op.RNN(x, w, r, b, None, op.Unsqueeze(h0, ints(0)), hidden_size=hidden)
    return op.Squeeze(y, ints(1)), op.Squeeze(h, ints(0))  # Y is (T, directions, B, H)


def gru_layer_onnx(x: Any, h0: Any, w_ih: Any, w_hh: Any, b_ih: Any, b_hh: Any) -> Any:
    hidden = w_hh.shape[1]
    w, r, b = _onnx_weights(w_ih, w_hh, b_ih, b_hh, hidden, (1, 0, 2))
    y, h = op.GRU(
        x, w, r, b, None, op.Unsqueeze(h0, ints(0)), hidden_size=hidden, linear_before_reset=1
    )
    return op.Squeeze(y, ints(1)), op.Squeeze(h, ints(0))


def lstm_layer_onnx(x: Any, h0: Any, c0: Any, w_ih: Any, w_hh: Any, b_ih: Any, b_hh: Any) -> Any:
    hidden = w_hh.shape[1]
    w, r, b = _onnx_weights(w_ih, w_hh, b_ih, b_hh, hidden, (0, 3, 1, 2))
    y, h, c = op.LSTM(
        x, w, r, b, None, op.Unsqueeze(h0, ints(0)), op.Unsqueeze(c0, ints(0)), hidden_size=hidden
    )
    return op.Squeeze(y, ints(1)), op.Squeeze(h, ints(0)), op.Squeeze(c, ints(0))


ONNX_TRANSLATIONS: dict[Any, Any] = {
    torch.ops.seedlm.rnn_tanh_layer.default: rnn_tanh_layer_onnx,
    torch.ops.seedlm.gru_layer.default: gru_layer_onnx,
    torch.ops.seedlm.lstm_layer.default: lstm_layer_onnx,
}
