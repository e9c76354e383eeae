"""`python -m training <command> ...`: one entry point for every family.

    python -m training train cnn --dataset mnist [--epochs 3 --lr 1e-3 ...]
    python -m training evaluate cnn --dataset mnist   # re-measure the shipped ONNX file
    python -m training train-all [--models-dir DIR]   # reproduce every shipped model
    python -m training quantize mlp-mnist [...]       # int8 file beside model.onnx, if accurate
    python -m training ood [cnn-mnist ...]            # fit and measure the out-of-distribution flag

Each family module exposes `main(command, family, argv) -> int` and `train_all(models_dir)`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

# family -> module implementing it
MODULES = {
    "logreg": "training.classify",
    "mlp": "training.classify",
    "cnn": "training.classify",
    "vit": "training.classify",
    "gnn": "training.classify",
    "rnn": "training.lm",
    "lstm": "training.lm",
    "gru": "training.lm",
    "transformer": "training.lm",
    "mamba": "training.lm",
    "ngram": "training.lm",
    "vae": "training.generate",
    "gan": "training.generate",
    "diffusion": "training.generate",
    "latent-diffusion": "training.generate",
}
# train-all order: the classifiers first, since the generators are scored with them
SHIPPING_ORDER = ("training.classify", "training.lm", "training.generate")
# modules and families whose training runs under torchrun with DDP (training/distributed.py);
# the others (the n-gram baseline) refuse several ranks rather than do the same work twice
DISTRIBUTED = {"training.classify", *("rnn", "lstm", "gru", "transformer", "mamba")}
DISTRIBUTED |= {"vae", "gan", "diffusion", "latent-diffusion"}


def train_all(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m training train-all")
    parser.add_argument("--models-dir", type=Path, default=None, help="default: the repo's models/")
    args = parser.parse_args(argv)
    for name in SHIPPING_ORDER:
        status = int(importlib.import_module(name).train_all(args.models_dir) or 0)
        if status:
            return status
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["train-all"]:
        return train_all(argv[1:])
    if argv[:1] == ["quantize"]:
        return int(importlib.import_module("training.quantize").main(argv[1:]))
    if argv[:1] == ["ood"]:
        return int(importlib.import_module("training.ood").main(argv[1:]))
    if len(argv) < 2 or argv[0] not in {"train", "evaluate"}:
        print(__doc__)
        return 2
    command, family, rest = argv[0], argv[1], argv[2:]
    if family not in MODULES:
        print(f"unknown family {family!r}; known: {', '.join(sorted(MODULES))}", file=sys.stderr)
        return 2
    several_ranks = int(os.environ.get("WORLD_SIZE", "1")) > 1
    distributed = MODULES[family] in DISTRIBUTED or family in DISTRIBUTED
    if command == "train" and several_ranks and not distributed:
        print(f"{family}: trains on one process; start it without torchrun", file=sys.stderr)
        return 2
    module = importlib.import_module(MODULES[family])
    return int(module.main(command, family, rest) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
