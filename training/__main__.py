"""`python -m training <command> ...`: one entry point for every family.

    python -m training train cnn --dataset mnist [--epochs 3 --lr 1e-3 ...]
    python -m training train-all            # reproduce every shipped model
    python -m training evaluate cnn-mnist   # re-measure a shipped model

Each family module exposes `FAMILIES` (names it trains) and `main(family, argv)`.
"""

from __future__ import annotations

import importlib
import sys

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


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in {"train", "evaluate"}:
        print(__doc__)
        return 2
    command, family, rest = argv[0], argv[1], argv[2:]
    if family not in MODULES:
        print(f"unknown family {family!r}; known: {', '.join(sorted(MODULES))}", file=sys.stderr)
        return 2
    module = importlib.import_module(MODULES[family])
    return int(module.main(command, family, rest) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
