"""Generative families: `python -m training train|evaluate vae|gan|diffusion|latent-diffusion`.

    python -m training train vae --dataset mnist            # then gan, diffusion
    python -m training train latent-diffusion --dataset mnist   # needs the shipped VAE
    python -m training evaluate diffusion --dataset mnist   # re-measure the latest version
    python -m training export diffusion --dataset mnist  # re-ship the last checkpoint
    python -m training train-all        # every shipped model; the generators come last

Each family trains, writes a checkpoint under runs/, exports ONNX (verified against torch),
measures the version with the service's own sampler and publishes it into models/.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from training.families import FAMILIES, of_group, shipped_runs
from training.generators.common import RunConfig
from training.generators.generator_eval import evaluate_shipped
from training.overrides import OptionError, apply_overrides, train_each

GENERATORS = of_group("generator")


def main(command: str, family: str, argv: list[str]) -> int:
    if family not in GENERATORS:
        print(
            f"unknown generator family {family!r}; known: {', '.join(GENERATORS)}", file=sys.stderr
        )
        return 2
    module = importlib.import_module(FAMILIES[family].module)
    try:
        if command == "train":
            module.train(family, argv)  # None on the ranks other than 0 under torchrun
        elif command == "export":
            module.export(family, argv)
        elif command == "evaluate":
            (run,) = apply_overrides(argv, RunConfig())
            print(json.dumps(evaluate_shipped(family, run), indent=2))
        else:
            print(f"unknown command {command!r} (train, export, evaluate)", file=sys.stderr)
            return 2
    except OptionError as error:
        print(error, file=sys.stderr)
        return 2
    return 0


def train_all(models_dir: Path | None = None) -> int:
    """Train and publish the shipped generators one after the other (each scored by
    cnn-<dataset>)."""
    return train_each(main, shipped_runs("generator"), models_dir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3:]) if len(sys.argv) >= 3 else 2)
