"""Generative families: `python -m training train|evaluate vae|gan|diffusion|latent-diffusion`.

    python -m training train vae --dataset mnist            # then gan, diffusion
    python -m training train latent-diffusion --dataset mnist   # needs the shipped VAE
    python -m training evaluate diffusion --dataset mnist   # re-measure the latest version
    python -m training.generate export diffusion --dataset mnist  # re-ship the last checkpoint
    python -m training train-all        # every shipped model; the generators come last

Each family trains, writes a checkpoint under runs/, exports ONNX (verified against torch),
measures the version with the service's own sampler and publishes it into models/.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from training.overrides import OptionError, apply_overrides, train_each

FAMILIES = {
    "vae": "training.train_vae",
    "gan": "training.train_gan",
    "diffusion": "training.train_diffusion",
    "latent-diffusion": "training.train_diffusion",
}
FASHION = ["--dataset", "fashion-mnist"]
FASHION_GAN = [*FASHION, "--lr-decay", "true", "--monitor-every", "500", "--iterations", "30000"]
# what train-all reproduces, in order: latent diffusion encodes with the VAE trained just before
SHIPPED_RUNS: list[tuple[str, list[str]]] = [
    ("vae", ["--dataset", "mnist"]),
    ("gan", ["--dataset", "mnist"]),
    ("diffusion", ["--dataset", "mnist"]),
    ("latent-diffusion", ["--dataset", "mnist"]),
    # Fashion-MNIST, budgets cut to fit a shared machine on 2026-12-03 (see their cards)
    ("vae", [*FASHION, "--iterations", "4000", "--max-minutes", "5"]),
    # the GAN in four runs, each going on from the checkpoint of the one before (each publishes
    # a version of its own, superseded by the next)
    ("gan", [*FASHION_GAN, "--max-minutes", "6"]),
    *(
        ("gan", [*FASHION_GAN, *budget, "--resume", "runs/gan-fashion-mnist/ckpt.pt"])
        for budget in (
            ["--max-minutes", "17"],
            ["--max-minutes", "7"],
            ["--max-minutes", "5", "--learning-rate", "1e-4"],
        )
    ),
    ("latent-diffusion", FASHION),
]


def main(command: str, family: str, argv: list[str]) -> int:
    if family not in FAMILIES:
        print(f"unknown generator family {family!r}; known: {', '.join(FAMILIES)}", file=sys.stderr)
        return 2
    module = importlib.import_module(FAMILIES[family])
    try:
        if command == "train":
            published = module.train(family, argv)
            if published is not None:  # None: a rank other than 0 under torchrun
                print(f"published {published}")
        elif command == "export":
            print(f"published {module.export(family, argv)}")
        elif command == "evaluate":
            from training.evaluate_generation import evaluate_shipped
            from training.generative import RunConfig

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
    return train_each(main, SHIPPED_RUNS, models_dir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3:]) if len(sys.argv) >= 3 else 2)
