"""What the four generator families share: the run config, image data in [0, 1], the training
clock, EMA weights, loss curves, checkpoints and shipping a version into the repository.

Under torchrun (training/distributed.py) every rank draws the same global batches (same seed)
and trains on its strided share (`rank_batches`), DDP averages the gradients, the clock and the
logged losses are agreed over the ranks, and rank 0 alone exports and publishes.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from training import distributed
from training.cards import save_figure
from training.data.images import ImageData, load_image_data
from training.files import REPO_ROOT
from training.generators.generator_eval import evaluate_version, generator_card_markdown
from training.overrides import apply_overrides
from training.publish import DEFAULT_MODELS_DIR, Graph, Release, publish

RUNS_DIR = REPO_ROOT / "runs"  # git-ignored
TrainT = TypeVar("TrainT")
ModelT = TypeVar("ModelT")


@dataclass
class RunConfig:
    """Options every generator family takes (each one a --flag)."""

    dataset: str = "mnist"  # mnist, fashion-mnist, or digits (scikit-learn's, for quick tests)
    data_dir: Path | None = None  # a folder of the four IDX files instead of data/<dataset>/
    seed: int = 0
    threads: int = 1  # torch and onnxruntime threads: 2 cores shared by several trainers
    models_dir: Path = DEFAULT_MODELS_DIR
    runs_dir: Path = RUNS_DIR  # checkpoints and staging folders
    train_subset: int = 0  # train on the first N training images only (0 = all): smoke tests
    max_minutes: float = 14.0  # training budget in CPU minutes; the learning rate decays over it
    eval_samples: int = 2000  # generated images per sampler setting in the card (0 = no metrics)
    classifier: Path | None = None  # classifier version folder; default: latest cnn-<dataset>
    tolerance: float = 1e-4  # largest |onnxruntime - torch| accepted at export


def start(run: RunConfig) -> None:
    torch.manual_seed(run.seed)
    torch.set_num_threads(run.threads)


def random_batches(n: int, batch_size: int, generator: torch.Generator) -> Any:
    """Endless index batches, a fresh permutation each epoch."""
    while True:
        order = torch.randperm(n, generator=generator)
        for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            yield order[i : i + batch_size]


def check_batch(batch_size: int, context: distributed.Distributed) -> None:
    assert batch_size % context.world_size == 0, (
        f"--batch-size {batch_size} must split evenly over {context.world_size} ranks"
    )


def train_on_ranks(
    body: Callable[[distributed.Distributed], Path | None],
) -> Path | None:
    """Run a family's train-and-export under torchrun's process group (or alone without one);
    the folder published, None on the ranks other than 0."""
    return distributed.run_on_ranks(body)


def train_decoder_family(
    argv: list[str],
    parse: Callable[[list[str]], tuple[RunConfig, Any, Any]],
    train_model: Callable[..., Path | None],
    export_version: Callable[[RunConfig, ImageData, Path], Path],
) -> Path | None:
    """The `train` entry point shared by the VAE and the GAN: parse, load the images, train on
    every rank, export on rank 0; None on the ranks other than 0 under torchrun."""
    run, config, model_config = parse(argv)
    start(run)
    data = load_image_data(run.dataset, run.data_dir, run.train_subset)
    model_config.num_classes = len(data.labels)

    def body(context: distributed.Distributed) -> Path | None:
        checkpoint = train_model(run, config, model_config, data, context)
        return None if checkpoint is None else export_version(run, data, checkpoint)

    return train_on_ranks(body)


def decoder_family_options(
    argv: list[str], train_config: TrainT, model_config: ModelT
) -> tuple[RunConfig, TrainT, ModelT]:
    """The VAE's and the GAN's options: the run's, the training's and the model's (its class
    count follows from the data)."""
    configs: list[Any] = [RunConfig(max_minutes=10.0), train_config, model_config]
    run, config, model = apply_overrides(argv, *configs, fixed=("num_classes",))
    return run, config, model


def export_decoder_family(
    family: str,
    argv: list[str],
    parse: Callable[[list[str]], tuple[RunConfig, Any, Any]],
    export_version: Callable[[RunConfig, ImageData, Path], Path],
) -> Path:
    """Re-export, re-measure and publish a family's last checkpoint without training again."""
    run, _, _ = parse(argv)
    data = load_image_data(run.dataset, run.data_dir, run.train_subset)
    return export_version(run, data, run.runs_dir / model_name(family, data.name) / "ckpt.pt")


def ranks_mean(context: distributed.Distributed, **values: float) -> dict[str, float]:
    """Each value averaged over the ranks (the same on every rank)."""
    sums = context.sum([float(v) for v in values.values()])
    return {name: total / context.world_size for name, total in zip(values, sums, strict=True)}


class Clock:
    """Training progress in [0, 1]: the larger of iterations done and time budget used.

    The budget counts this process's CPU seconds, not wall-clock seconds: on cores shared with
    other jobs a run gets the same amount of work done (and so the same model) however busy the
    machine is; with one thread and an idle machine the two agree.
    """

    def __init__(
        self,
        iterations: int,
        max_minutes: float,
        context: distributed.Distributed | None = None,
    ) -> None:
        self.iterations, self.budget_s = iterations, max_minutes * 60
        self.started_cpu, self.started_wall = time.process_time(), time.monotonic()
        # several ranks must agree on the learning rate and the stop: rank 0's reading, taken
        # once per iteration (a broadcast every rank makes)
        self.context = context or distributed.Distributed()
        self.agreed = (-1, 0.0)  # (iteration, rank 0's elapsed CPU seconds then)

    def elapsed(self) -> float:
        """CPU seconds used so far."""
        return time.process_time() - self.started_cpu

    def wall(self) -> float:
        return time.monotonic() - self.started_wall

    def progress(self, iteration: int) -> float:
        if not self.context.enabled:
            return max(iteration / self.iterations, self.elapsed() / self.budget_s)
        if self.agreed[0] != iteration:
            self.agreed = (iteration, self.context.agree(self.elapsed()))
        return max(iteration / self.iterations, self.agreed[1] / self.budget_s)

    def learning_rate(self, iteration: int, peak: float, warmup: int) -> float:
        """Linear warmup, then cosine decay to 10% of the peak over the budget."""
        if iteration < warmup:
            return peak * (iteration + 1) / warmup
        return peak * (
            0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(self.progress(iteration), 1.0)))
        )


class EMA:
    """An exponential moving average of a model's weights: smoother samples after short training."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval()
        self.decay = decay
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, iteration: int) -> None:
        decay = min(self.decay, (1 + iteration) / (10 + iteration))  # average less while young
        for averaged, current in zip(self.model.parameters(), model.parameters(), strict=True):
            averaged.lerp_(current, 1 - decay)
        for kept, latest in zip(self.model.buffers(), model.buffers(), strict=True):
            kept.copy_(latest)  # batchnorm statistics, if any, are not averaged


@dataclass
class History:
    """Named loss series, one value per logged iteration."""

    iterations: list[int] = field(default_factory=list)
    series: dict[str, list[float]] = field(default_factory=dict)

    def log(self, iteration: int, **values: float) -> None:
        self.iterations.append(iteration)
        for name, value in values.items():
            self.series.setdefault(name, []).append(float(value))

    def last_mean(self, name: str, count: int = 50) -> float:
        values = self.series[name][-count:]
        return float(np.mean(values)) if values else float("nan")


def plot_curves(history: History, path: Path, title: str, panels: Sequence[Sequence[str]]) -> None:
    """One panel per group of series, raw values faint and a moving average on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for ax, names in zip(axes[0], panels, strict=True):
        for name in names:
            values = np.asarray(history.series[name])
            window = max(1, len(values) // 50)
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            line = ax.plot(history.iterations, values, alpha=0.25)[0]
            ax.plot(history.iterations[window - 1 :], smooth, color=line.get_color(), label=name)
        ax.set_xlabel("iteration")
        ax.legend()
        ax.grid(alpha=0.3)
    save_figure(fig, title, path, dpi=90)


def parameter_count(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def training_summary(saved: Mapping[str, Any], config: Any, *modules: nn.Module) -> dict[str, Any]:
    """What every generator card's `training` section starts with: the training config, the
    model's, the iterations, CPU and wall seconds, and the parameters of `modules`."""
    return {
        "config": config,
        "model_config": saved["model_config"],
        "iterations": saved["iterations"],
        "seconds": round(saved["seconds"], 1),  # CPU seconds
        "wall_seconds": round(saved.get("wall_seconds", saved["seconds"]), 1),
        "parameters": parameter_count(*modules),
    }


# ---------------------------------------------------------------------------------------------
# Checkpoints and shipping


def model_name(family: str, dataset: str) -> str:
    return f"{family}-{dataset}"


def save_checkpoint(path: Path, **content: Any) -> Path:
    """The interface between training and export: configs as dicts plus state dicts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(content, path)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    return dict(torch.load(path, map_location="cpu", weights_only=True))


def first(inputs: Mapping[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
    """The first `count` rows of every input: a graph's trace example, smaller than its check."""
    return {name: tensor[:count] for name, tensor in inputs.items()}


def tensor_spec(name: str, datatype: str, dims: Sequence[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "dims": list(dims)}


def base_config(
    family: str, data: ImageData, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "task": "image-generation",
        "family": family,
        "dataset": data.name,
        "platform": "onnxruntime_onnx",
        "max_batch_size": 256,
        "inputs": inputs,
        "outputs": outputs,
        "labels": data.labels,
        "graphs": {},
        "batching": {"max_queue_delay_ms": 0.0, "preferred_batch_sizes": []},
    }


def release(
    run: RunConfig,
    family: str,
    data: ImageData,
    graphs: list[Graph],
    config: dict[str, Any],
    card: dict[str, Any],
    evaluation: Any,
    write_files: Callable[[Path], None],
    verified_on: str,
) -> Release:
    """A generator version: its graphs verified on `verified_on`, measured with the service's
    own sampler (every setting of `evaluation`) and scored by cnn-<dataset>."""
    name = model_name(family, data.name)

    def measure(staging: Path) -> dict[str, Any]:
        if run.eval_samples <= 0:
            return {}
        named = {"name": name, **config}
        return {"metrics": evaluate_version(staging, named, data, run, evaluation)}

    card = card | {
        "family": family,
        "task": "image-generation",
        "dataset": {
            "name": data.name,
            "source": data.source,
            "sha256": data.sha256,
            "splits": {"train": len(data.train_labels), "test": len(data.test_labels)},
        },
    }
    card["training"]["run"] = json.loads(json.dumps(asdict(run), default=str))
    return Release(
        name=name,
        config=config,
        card=card,
        graphs=graphs,
        tolerance=run.tolerance,
        describe=generator_card_markdown,
        measure=measure,
        write_files=write_files,
        verified_on=verified_on,
        one_difference=False,
    )


def publish_release(run: RunConfig, *args: Any, **kwargs: Any) -> Path:
    """`release(run, ...)` published into run.models_dir."""
    return publish(release(run, *args, **kwargs), run.models_dir)
