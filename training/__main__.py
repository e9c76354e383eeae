"""`python -m training <command> ...`: one entry point for every family.

    python -m training train cnn --dataset mnist [--epochs 3 --lr 1e-3 ...]
    python -m training evaluate cnn --dataset mnist   # re-measure the shipped ONNX file
    python -m training export gan --dataset mnist     # re-ship a generator's last checkpoint
    python -m training train-all [--models-dir DIR]   # reproduce every shipped model
    python -m training quantize mlp-mnist [...]       # int8 file beside model.onnx, if accurate
    python -m training ood [cnn-mnist ...]            # fit and measure the out-of-distribution flag

Every family is a row of training/families.py; each group's script exposes
`main(command, family, argv) -> int` and `train_all(models_dir)`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from training.families import FAMILIES, GROUP_SCRIPTS

# train-all order: the classifiers first, since the generators are scored with them
SHIPPING_ORDER = ("classifier", "language-model", "generator")


def train_all(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m training train-all")
    parser.add_argument("--models-dir", type=Path, default=None, help="default: the repo's models/")
    args = parser.parse_args(argv)
    for group in SHIPPING_ORDER:
        script = importlib.import_module(GROUP_SCRIPTS[group])
        status = int(script.train_all(args.models_dir) or 0)
        if status:
            return status
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["train-all"]:
        return train_all(argv[1:])
    if argv[:1] == ["quantize"]:
        return int(importlib.import_module("training.classifiers.quantize").main(argv[1:]))
    if argv[:1] == ["ood"]:
        return int(importlib.import_module("training.classifiers.ood").main(argv[1:]))
    if len(argv) < 2 or argv[0] not in {"train", "evaluate", "export"}:
        print(__doc__)
        return 2
    command, family, rest = argv[0], argv[1], argv[2:]
    if family not in FAMILIES:
        print(f"unknown family {family!r}; known: {', '.join(sorted(FAMILIES))}", file=sys.stderr)
        return 2
    if command == "export" and FAMILIES[family].group != "generator":
        print(f"{family}: export re-ships a generator's last checkpoint", file=sys.stderr)
        return 2
    several_ranks = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if command == "train" and several_ranks and not FAMILIES[family].distributed:
        print(f"{family}: trains on one process; start it without torchrun", file=sys.stderr)
        return 2
    module = importlib.import_module(FAMILIES[family].script)
    return int(module.main(command, family, rest) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
