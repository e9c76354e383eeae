"""Train an image classifier, export it to ONNX, check it, and publish it into the repository.

    python -m training train cnn --dataset mnist [--epochs 12 --lr 2e-3 --batch-size 128 ...]
    python -m training train vit --dataset fashion-mnist   # vision transformer
    python -m training train gnn --dataset mnist           # graph network on the pictures as graphs
    python -m training evaluate cnn --dataset mnist [--models-dir models]
    torchrun --nproc_per_node 2 -m training train cnn ...  # DDP: see training/distributed.py

`train` reads top to bottom: config, data, model, the loop (validation every epoch, early stopping
that keeps the best weights), test metrics, the ONNX export checked against torch on real test
images, the test split re-measured through onnxruntime (the card's numbers), then the new version
published into models/<family>-<dataset>/<N>/. Every config field is an option (`--help` lists).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from service.tasks.graphs import GraphSample, GraphSpec
from training.classifiers.classifier_card import classifier_card_markdown, plot_curves
from training.classifiers.classifier_eval import (
    evaluate_onnx,
    evaluate_onnx_graphs,
    evaluate_shipped,
    interleaved_latency_ms,
)
from training.data.graph_batches import graph_batch, images_to_graphs
from training.data.images import IMAGE_SIZE, ImageDataset, load_dataset
from training.distributed import Distributed, run_on_ranks
from training.families import build_model, default_model_config, of_group, shipped_runs
from training.files import write_json
from training.onnx_export import OPSET
from training.overrides import OptionError, apply_overrides, train_each
from training.publish import DEFAULT_MODELS_DIR, Graph, Release, latest_version, publish

CLASSIFIERS = of_group("classifier")
GRAPH_FAMILIES = {"gnn"}  # trained and served on the pictures turned into graphs
# model (and graph) fields that follow from the data
DATA_FIELDS = ("image_size", "channels", "num_classes", "in_features")
GRAPH_INPUTS = ("x", "edge_index", "batch")
LATENCY_BATCHES = (1, 64)  # batch sizes of the onnxruntime latency in the card


@dataclass
class TrainConfig:
    dataset: str = "mnist"  # mnist, fashion-mnist, digits, or a name for --data-dir/--image-folder
    data_dir: Path | None = None  # a folder with the four IDX files (plain or .gz)
    image_folder: Path | None = None  # one sub-folder of pictures per class, instead of IDX
    models_dir: Path = DEFAULT_MODELS_DIR  # the repository the version is published into
    epochs: int = 10  # at most; early stopping may end sooner
    batch_size: int = 128
    lr: float = 1e-3  # peak learning rate of the one-cycle schedule (Adam)
    weight_decay: float = 0.0  # Adam's L2 penalty
    warmup: float = 0.15  # fraction of the steps spent warming the learning rate up
    patience: int = 3  # epochs without a better validation accuracy before stopping
    shift: int = 0  # augmentation: random translation by up to this many pixels; 0 = off
    label_smoothing: float = 0.0
    seed: int = 0
    threads: int = 1  # torch intra-op threads; the machine's cores are shared by several trainers
    max_train: int = 0  # train on the first N training images only (smoke runs); 0 = all
    verify_images: int = 1000  # test images on which onnxruntime must match torch
    tolerance: float = 1e-4  # largest |onnxruntime - torch| allowed on any output
    opset: int = OPSET


@dataclass
class EvaluateConfig:
    dataset: str = "mnist"
    models_dir: Path = DEFAULT_MODELS_DIR
    data_dir: Path | None = None
    image_folder: Path | None = None
    # vit/gnn: time the version again beside the CNN and rewrite its card's comparison section
    retime: bool = False


class WithProbabilities(nn.Module):
    """The exported graph: the classifier's logits plus their softmax, both (B, classes)."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.classifier(image)  # (B, 1, 28, 28) -> (B, classes)
        return logits, torch.softmax(logits, dim=-1)


class GraphWithProbabilities(WithProbabilities):
    """The same for a graph classifier: (x, edge_index, batch) in, one row per graph out."""

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.classifier(x, edge_index, batch)  # (G, classes)
        return logits, torch.softmax(logits, dim=-1)


@dataclass
class Split:
    """One split as the model takes it: images (N, 1, 28, 28) or graphs, and labels (N,)."""

    labels: torch.Tensor
    images: torch.Tensor | None = None
    graphs: list[GraphSample] | None = None

    def inputs(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.graphs is not None:
            return graph_batch([self.graphs[i] for i in index.tolist()])
        assert self.images is not None, "a split holds images or graphs"
        return (self.images[index],)


def make_splits(data: ImageDataset, spec: GraphSpec | None) -> dict[str, Split]:
    """train / val / test as images, or (with a graph spec) as graphs made by the service's code."""
    pairs = {
        "train": (data.train_x, data.train_y),
        "val": (data.val_x, data.val_y),
        "test": (data.test_x, data.test_y),
    }
    if spec is None:
        return {k: Split(y, images=x) for k, (x, y) in pairs.items()}
    return {
        k: Split(y, graphs=images_to_graphs(x, data.mean, data.std, spec))
        for k, (x, y) in pairs.items()
    }


def random_shift(
    x: torch.Tensor, max_shift: int, fill: float, generator: torch.Generator
) -> torch.Tensor:
    """Translate each image by its own random (dy, dx) in [-max_shift, max_shift], filling with
    the background value: cheap augmentation that makes the CNN robust to off-centre pictures."""
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=fill)  # (B, C, H + 2s, W + 2s)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
    shifted = padded[torch.arange(b)[:, None, None], :, rows, cols]  # (B, H, W, C)
    return shifted.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)


def to_device(inputs: tuple[torch.Tensor, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(device) for t in inputs)


@torch.no_grad()
def loss_and_accuracy(
    model: nn.Module, split: Split, context: Distributed | None = None
) -> tuple[float, float]:
    """Mean loss and accuracy over the split; with several ranks each takes a share and the sums
    are all-reduced, so every rank gets the same numbers."""
    context = context or Distributed()
    model.eval()
    share = context.shard(torch.arange(len(split.labels)))
    total_loss, correct = 0.0, 0
    for i in range(0, len(share), 1000):
        index = share[i : i + 1000]
        y = split.labels[index].to(context.device)
        logits = model(*to_device(split.inputs(index), context.device))
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
    total_loss, correct_total = context.sum([total_loss, float(correct)])
    return total_loss / len(split.labels), correct_total / len(split.labels)


def fit(
    model: nn.Module,
    data: ImageDataset,
    cfg: TrainConfig,
    spec: GraphSpec | None = None,
    context: Distributed | None = None,
    splits: dict[str, Split] | None = None,
) -> tuple[list[dict[str, float]], int]:
    """The training loop. Leaves the model holding the weights of its best validation epoch.

    Returns the per-epoch history and that best epoch. With several ranks (torchrun) each step's
    global batch is shared out and DDP averages the gradients; the numbers are all-reduced.
    """
    context = context or Distributed()
    splits = splits or make_splits(data, spec)
    train_split, val_split = splits["train"], splits["val"]
    n = len(train_split.labels)
    # The global batch, a multiple of the ranks so that each rank's share has the same size.
    batch = min(cfg.batch_size, n) // context.world_size * context.world_size
    assert batch > 0, f"batch size {cfg.batch_size} is smaller than {context.world_size} ranks"
    # Drop the last partial batch: a tiny one gives noisy batchnorm statistics; the data is
    # reshuffled every epoch so nothing is skipped for good.
    steps_per_epoch = n // batch
    trained = context.wrap(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # One cycle: warm up, then cosine-anneal to ~0. Converges in few epochs, and the low-LR tail
    # settles the weights before early stopping picks the best epoch.
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=cfg.warmup
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    background = (0.0 - data.mean) / data.std  # a black pixel after normalisation
    history: list[dict[str, float]] = []
    best = BestEpoch(model)
    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        desc = f"epoch {epoch}/{cfg.epochs}"
        batches = Batches(train_split, batch, steps_per_epoch, cfg.shift, background, generator)
        train_loss, train_accuracy = train_epoch(
            trained, batches, optimizer, schedule, cfg, context, desc
        )
        val_loss, val_accuracy = loss_and_accuracy(model, val_split, context)
        history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_accuracy": train_accuracy,
                "val_loss": val_loss,
                "val_accuracy": val_accuracy,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - started,
            }
        )
        improved = best.offer(epoch, val_accuracy, val_loss, model)
        say(
            context,
            f"epoch {epoch}: train loss {train_loss:.4f} acc {train_accuracy:.4f} | "
            f"val loss {val_loss:.4f} acc {val_accuracy:.4f}{' *' if improved else ''} | "
            f"{history[-1]['seconds']:.0f}s",
        )
        if best.waited >= cfg.patience:  # the same decision on every rank: numbers are reduced
            say(context, f"early stop: no better validation accuracy for {cfg.patience} epochs")
            break
    model.load_state_dict(best.state)
    return history, best.epoch


class BestEpoch:
    """Early stopping's memory: the best (validation accuracy, -loss) so far, its weights, and
    how many epochs have passed without beating it."""

    def __init__(self, model: nn.Module) -> None:
        self.score, self.epoch, self.waited = (-1.0, 0.0), 0, 0
        self.state = copy.deepcopy(model.state_dict())

    def offer(self, epoch: int, accuracy: float, loss: float, model: nn.Module) -> bool:
        if (accuracy, -loss) <= self.score:
            self.waited += 1
            return False
        self.score, self.epoch, self.waited = (accuracy, -loss), epoch, 0
        self.state = copy.deepcopy(model.state_dict())
        return True


@dataclass
class Batches:
    """One epoch's global batches of the training split, in a fresh order, each shifted (when
    `shift`) as one batch so that the random shifts do not depend on the number of ranks."""

    split: Split
    size: int
    steps: int
    shift: int
    background: float
    generator: torch.Generator

    def __iter__(self) -> Iterator[torch.Tensor]:
        """The indices of each global batch, before each rank takes its share."""
        # the same permutation on every rank: each knows every global batch and takes its share
        order = torch.randperm(len(self.split.labels), generator=self.generator)
        for step in range(self.steps):
            yield order[step * self.size : (step + 1) * self.size]


def train_epoch(
    model: nn.Module,
    batches: Batches,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    cfg: TrainConfig,
    context: Distributed,
    desc: str,
) -> tuple[float, float]:
    """One pass over the training split; the mean loss and accuracy over every rank."""
    model.train()
    split, total_loss, correct, seen = batches.split, 0.0, 0, 0
    interactive = sys.stderr.isatty() and context.is_main
    bar = tqdm(
        batches,
        total=batches.steps,
        desc=desc,
        mininterval=0.5 if interactive else 30,
        leave=interactive,
        disable=not context.is_main,
    )
    for step, index in enumerate(bar):
        if cfg.shift and split.images is not None:
            x = random_shift(split.images[index], cfg.shift, batches.background, batches.generator)
            inputs: tuple[torch.Tensor, ...] = (context.shard(x),)  # (B / ranks, 1, 28, 28)
        else:
            inputs = split.inputs(context.shard(index))
        y = split.labels[context.shard(index)].to(context.device)  # (B / ranks,)
        logits = model(*to_device(inputs, context.device))  # (B / ranks, classes)
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        total_loss += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        if step % 50 == 0:
            bar.set_postfix(
                loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}", refresh=False
            )
    total_loss, correct_total, seen_total = context.sum([total_loss, float(correct), seen])
    return total_loss / seen_total, correct_total / seen_total


def say(context: Distributed, message: str) -> None:
    if context.is_main:
        print(message, flush=True)


def classifier_config(
    family: str, data: ImageDataset, spec: GraphSpec | None = None
) -> dict[str, Any]:
    """config.json of the model (publish_version adds the name)."""
    classes = len(data.labels)
    config = {
        "task": "classification",
        "family": family,
        "dataset": data.name,
        "platform": "onnxruntime_onnx",
        "max_batch_size": 256,
        "inputs": [{"name": "image", "datatype": "FP32", "dims": [1, IMAGE_SIZE, IMAGE_SIZE]}],
        "outputs": [
            {"name": "logits", "datatype": "FP32", "dims": [classes]},
            {"name": "probabilities", "datatype": "FP32", "dims": [classes]},
        ],
        "labels": data.labels,
        "preprocessing": data.preprocessing(),
        "graphs": {},
        "batching": {"max_queue_delay_ms": 0.0, "preferred_batch_sizes": []},
    }
    if spec is None:
        return config
    # A graph batch has no batch axis of its own (max_batch_size 0): the node, edge and graph
    # counts are all dynamic (-1). Uploaded pictures are made [0, 1] (mean 0, std 1), reframed
    # as usual, then converted as the `graph` section says (service/tasks/graphs.py).
    return {
        **config,
        "max_batch_size": 0,
        "inputs": [
            {"name": "x", "datatype": "FP32", "dims": [-1, spec.features]},
            {"name": "edge_index", "datatype": "INT64", "dims": [2, -1]},
            {"name": "batch", "datatype": "INT64", "dims": [-1]},
        ],
        "outputs": [
            {"name": "logits", "datatype": "FP32", "dims": [-1, classes]},
            {"name": "probabilities", "datatype": "FP32", "dims": [-1, classes]},
        ],
        "preprocessing": {**data.preprocessing(), "mean": 0.0, "std": 1.0},
        "graph": spec.to_config(),
        # index_add exports to ScatterND (add), which races over duplicate indices when
        # onnxruntime splits one operator over threads: the service pins this model to one
        "onnxruntime": {"intra_op_threads": 1},
    }


def as_json(config: Any) -> dict[str, Any]:
    """A config dataclass as JSON values (paths as strings, tuples as lists)."""
    return {
        k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
        for k, v in dataclasses.asdict(config).items()
    }


def with_data_fields(model_cfg: Any, data: ImageDataset, spec: GraphSpec | None) -> Any:
    """The model config with the fields that follow from the data filled in."""
    values = {
        "image_size": IMAGE_SIZE,
        "channels": 1,
        "num_classes": len(data.labels),
        "in_features": spec.features if spec else 0,
    }
    fields = {f.name for f in dataclasses.fields(model_cfg)}
    return dataclasses.replace(model_cfg, **{k: v for k, v in values.items() if k in fields})


def example_inputs(split: Split, count: int) -> dict[str, torch.Tensor]:
    """The model's named inputs for the split's first `count` examples (one batch)."""
    inputs = split.inputs(torch.arange(min(count, len(split.labels))))
    names = GRAPH_INPUTS if split.graphs is not None else ("image",)
    return dict(zip(names, inputs, strict=True))


def named_numpy(split: Split, count: int) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in example_inputs(split, count).items()}


def comparison(
    name: str,
    onnx_path: Path,
    split: Split,
    test: dict[str, Any],
    parameters: int,
    cfg: TrainConfig,
) -> dict[str, Any]:
    """This model beside the shipped CNN of its dataset: accuracy, size and onnxruntime latency
    at each of LATENCY_BATCHES, the two timed in turns (one thread each)."""
    this: dict[str, Any] = {
        "name": name,
        "test_accuracy": test["accuracy"],
        "parameters": parameters,
        "latency_ms": {},
    }
    cnn_dir = cfg.models_dir / f"cnn-{cfg.dataset}"
    cnn: dict[str, Any] | None = None
    if (cnn_dir / "config.json").is_file():
        version = latest_version(cnn_dir)
        card = json.loads((version / "card.json").read_text())
        cnn = {
            "name": cnn_dir.name,
            "version": card["version"],
            "test_accuracy": card["metrics"]["test_accuracy"],
            "parameters": card["training"]["parameters"],
            "latency_ms": {},
        }
    images = Split(split.labels, images=split.images) if split.images is not None else None
    for batch in LATENCY_BATCHES:
        runs = [(onnx_path, named_numpy(split, batch))]
        if cnn is not None and images is not None:
            runs.append((version / "model.onnx", named_numpy(images, batch)))
        for side, ms in zip([this, cnn], interleaved_latency_ms(runs), strict=False):
            assert side is not None
            side["latency_ms"][str(batch)] = round(ms, 4)
    return {
        "measured_with": "onnxruntime, 1 intra-op thread, CPU, median of 50 calls on test images, "
        "the two models timed in turns; latency in ms per call at each batch size",
        "this": this,
        "cnn": cnn,
    }


def train(
    family: str, cfg: TrainConfig, model_cfg: Any, spec: GraphSpec | None = None
) -> Path | None:
    """Train, export, verify, measure and publish; returns the new version's folder (on rank 0;
    the other ranks of a torchrun return None)."""
    return run_on_ranks(lambda context: train_on(family, cfg, model_cfg, spec, context))


def train_on(
    family: str, cfg: TrainConfig, model_cfg: Any, spec: GraphSpec | None, context: Distributed
) -> Path | None:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)  # initial weights (DDP copies rank 0's to the others anyway)
    spec = (spec or GraphSpec()) if family in GRAPH_FAMILIES else None
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.image_folder)
    if cfg.max_train:
        data.train_x, data.train_y = data.train_x[: cfg.max_train], data.train_y[: cfg.max_train]
    model_cfg = with_data_fields(model_cfg, data, spec)
    model = build_model(family, model_cfg).to(context.device)
    if context.enabled:
        torch.manual_seed(cfg.seed + context.rank)  # different dropout on each rank
    parameters = sum(p.numel() for p in model.parameters())
    splits = make_splits(data, spec)
    say(context, f"{family}-{data.name}: {parameters:,} parameters, splits {data.splits()}")
    if context.enabled:
        say(context, f"{context.world_size} ranks, device {context.device}")

    started = time.perf_counter()
    history, best_epoch = fit(model, data, cfg, spec, context, splits)
    seconds = time.perf_counter() - started
    torch_loss, torch_accuracy = loss_and_accuracy(model, splits["test"], context)
    if not context.is_main:
        return None  # rank 0 exports and publishes
    trained = Trained(model.cpu(), history, best_epoch, seconds, torch_loss, torch_accuracy)
    return publish(
        release(family, cfg, model_cfg, data, splits, spec, trained, context), cfg.models_dir
    )


@dataclass
class Trained:
    """What the loop left: the model (best validation epoch) and how it got there."""

    model: nn.Module
    history: list[dict[str, float]]
    best_epoch: int
    seconds: float
    torch_test_loss: float
    torch_test_accuracy: float

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def release(
    family: str,
    cfg: TrainConfig,
    model_cfg: Any,
    data: ImageDataset,
    splits: dict[str, Split],
    spec: GraphSpec | None,
    trained: Trained,
    context: Distributed,
) -> Release:
    """The version to publish: logits + probabilities, verified on real test inputs, measured
    on the whole test split through onnxruntime (the card's numbers)."""
    name, test_split = f"{family}-{data.name}", splits["test"]
    exported = (WithProbabilities if spec is None else GraphWithProbabilities)(trained.model)
    if spec is not None:
        nodes, edges = torch.export.Dim("nodes"), torch.export.Dim("edges")
        dynamic: Any = ({0: nodes}, {1: edges}, {0: nodes})
    else:
        dynamic = ({0: "batch"},)
    graph = Graph(
        "model.onnx",
        exported.eval(),
        # two examples: with one, the exporter may specialise the batch (or graph) axis
        example=example_inputs(test_split, 2),
        outputs=["logits", "probabilities"],
        check=example_inputs(test_split, cfg.verify_images),
        dynamic_shapes=dynamic,
    )

    def measure(staging: Path) -> dict[str, Any]:
        onnx_path = staging / "model.onnx"
        if test_split.graphs is not None:
            labels = test_split.labels.numpy()
            test = evaluate_onnx_graphs(onnx_path, test_split.graphs, labels, data.labels)
        else:
            test = evaluate_onnx(onnx_path, data.test_x.numpy(), data.test_y.numpy(), data.labels)
        print(
            f"{name}: test accuracy {test['accuracy']:.4f} with onnxruntime "
            f"({trained.torch_test_accuracy:.4f} in torch)",
            flush=True,
        )
        best = trained.history[trained.best_epoch - 1]
        measured: dict[str, Any] = {
            "metrics": {
                "test_accuracy": test["accuracy"],
                "test_loss": test["loss"],
                "per_class_accuracy": test["per_class_accuracy"],
                "validation_accuracy": best["val_accuracy"],
                "validation_loss": best["val_loss"],
                "torch_test_accuracy": trained.torch_test_accuracy,
                "torch_test_loss": trained.torch_test_loss,
                "measured_with": f"onnxruntime on model.onnx, {len(data.test_y)} test images",
            },
            "confusion_matrix": test["confusion_matrix"],
        }
        if family in {"vit", "gnn"}:
            split = Split(test_split.labels, data.test_x, test_split.graphs)
            parameters = trained.parameters
            measured["comparison"] = comparison(name, onnx_path, split, test, parameters, cfg)
        return measured

    def write_files(staging: Path) -> None:
        title = f"{name}: {trained.parameters:,} parameters"
        plot_curves(trained.history, trained.best_epoch, staging / "curves.png", title)

    return Release(
        name=name,
        config=classifier_config(family, data, spec),
        card=training_card(family, cfg, model_cfg, data, spec, trained, context),
        graphs=[graph],
        tolerance=cfg.tolerance,
        opset=cfg.opset,
        verified_on=f"{len(test_split.labels[: cfg.verify_images])} test images",
        measure=measure,
        write_files=write_files,
        describe=lambda card: classifier_card_markdown(card, data.labels),
    )


def training_card(
    family: str,
    cfg: TrainConfig,
    model_cfg: Any,
    data: ImageDataset,
    spec: GraphSpec | None,
    trained: Trained,
    context: Distributed,
) -> dict[str, Any]:
    """What the card says before measuring: the data and how the model was trained."""
    return {
        "family": family,
        "task": "classification",
        "dataset": {
            "name": data.name,
            "source": data.source,
            "sha256": data.sha256,
            "splits": data.splits(),
        },
        "training": {
            "config": {**as_json(cfg), "models_dir": None, "model": as_json(model_cfg)},
            "graph": spec.to_config() if spec else None,
            "ranks": context.world_size,
            "epochs_run": len(trained.history),
            "best_epoch": trained.best_epoch,
            "seconds": round(trained.seconds, 1),
            "parameters": trained.parameters,
            "history": trained.history,
        },
    }


def evaluate(family: str, cfg: EvaluateConfig) -> int:
    model_dir = cfg.models_dir / f"{family}-{cfg.dataset}"
    metrics, card = evaluate_shipped(model_dir, cfg.data_dir, cfg.image_folder)
    recorded = card["metrics"]["test_accuracy"]
    print(
        f"{model_dir.name} version {card['version']}: test accuracy {metrics['accuracy']:.4f} "
        f"(card says {recorded:.4f}), test loss {metrics['loss']:.4f}"
    )
    for label, accuracy in metrics["per_class_accuracy"].items():
        print(f"  {label:>12}  {accuracy:.4f}")
    if cfg.retime and "comparison" in card:
        retime(model_dir, card, cfg)
    return 0 if abs(metrics["accuracy"] - recorded) <= 1e-6 else 1


def retime(model_dir: Path, card: dict[str, Any], cfg: EvaluateConfig) -> None:
    """Measure the latest version's latency beside the CNN again (on a quieter machine, say) and
    rewrite the comparison in its card.json and card.md; accuracies are the cards' own."""
    config = json.loads((model_dir / "config.json").read_text())
    version = latest_version(model_dir)
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.image_folder)
    spec = GraphSpec.from_config(config["graph"]) if "graph" in config else None
    graphs = images_to_graphs(data.test_x, data.mean, data.std, spec) if spec else None
    split = Split(data.test_y, data.test_x, graphs)
    train_cfg = TrainConfig(dataset=cfg.dataset, models_dir=cfg.models_dir)
    test = {"accuracy": card["metrics"]["test_accuracy"]}
    parameters = card["training"]["parameters"]
    card["comparison"] = comparison(
        model_dir.name, version / "model.onnx", split, test, parameters, train_cfg
    )
    (version / "card.md").write_text(classifier_card_markdown(card, data.labels))
    write_json(version / "card.json", card)
    print(json.dumps(card["comparison"], indent=1))


def option_configs(family: str) -> list[Any]:
    """The configs whose fields are the options of `train family`: the graph conversion's too."""
    configs = [TrainConfig(), default_model_config(family)]
    return [*configs, GraphSpec()] if family in GRAPH_FAMILIES else configs


def usage(family: str) -> str:
    options = [
        f"  --{k.replace('_', '-')} (default {v})"
        for config in option_configs(family)
        for k, v in as_json(config).items()
        if k not in DATA_FIELDS
    ]
    return f"python -m training train {family} [options]\n" + "\n".join(options)


def main(command: str, family: str, argv: list[str]) -> int:
    if family not in CLASSIFIERS:
        print(
            f"{family}: not implemented; image classifiers: {', '.join(CLASSIFIERS)}",
            file=sys.stderr,
        )
        return 2
    if "--help" in argv or "-h" in argv:
        print(usage(family))
        return 0
    try:
        if command == "evaluate":
            (evaluate_cfg,) = apply_overrides(argv, EvaluateConfig())
            return evaluate(family, evaluate_cfg)
        cfg, model_cfg, *graph = apply_overrides(argv, *option_configs(family), fixed=DATA_FIELDS)
        if graph and cfg.shift:
            raise OptionError("--shift moves pictures; a graph family has no pictures to move")
    except OptionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    train(family, cfg, model_cfg, graph[0] if graph else None)
    return 0


def train_all(models_dir: Path | None = None) -> int:
    """Train and publish every shipped classifier, one after the other (cnn-mnist first)."""
    return train_each(main, shipped_runs("classifier"), models_dir)
