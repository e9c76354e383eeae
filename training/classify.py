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
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from service.tasks.graphs import GraphSample, GraphSpec
from training.data.graphs import graph_batch, images_to_graphs
from training.data.images import IMAGE_SIZE, ImageDataset, load_dataset
from training.distributed import Distributed, run_on_ranks
from training.evaluation import (
    evaluate_onnx,
    evaluate_onnx_graphs,
    evaluate_shipped,
    interleaved_latency_ms,
    latest_version,
)
from training.models.cnn import CNN, CNNConfig
from training.models.gnn import GNN, GNNConfig
from training.models.logreg import LogisticRegression, LogRegConfig
from training.models.mlp import MLP, MLPConfig
from training.models.vit import ViT, ViTConfig
from training.onnx_export import OPSET, export_onnx, verify
from training.overrides import OptionError, apply_overrides, train_each
from training.report import classifier_card_markdown, plot_curves
from training.repository import (
    DEFAULT_MODELS_DIR,
    next_version,
    publish_version,
    sha256_of,
    write_json,
)

# family -> (model config, model class)
FAMILIES: dict[str, tuple[type[Any], type[nn.Module]]] = {
    "logreg": (LogRegConfig, LogisticRegression),
    "mlp": (MLPConfig, MLP),
    "cnn": (CNNConfig, CNN),
    "vit": (ViTConfig, ViT),
    "gnn": (GNNConfig, GNN),
}
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


# The shipped classifiers: `make train` (python -m training train-all) reproduces them. The CNNs
# come first: the ViT and GNN cards compare against them.
SHIPPED_RUNS: list[tuple[str, list[str]]] = [
    ("cnn", ["--dataset", "mnist", "--epochs", "12", "--lr", "2e-3", "--shift", "2"]),
    ("cnn", ["--dataset", "fashion-mnist", "--epochs", "15", "--lr", "2e-3", "--shift", "2"]),
    ("vit", ["--dataset", "mnist", "--epochs", "15", "--lr", "2e-3", "--shift", "2"]),
    ("vit", ["--dataset", "fashion-mnist", "--epochs", "20", "--lr", "2e-3", "--dropout", "0.05"]),
    ("gnn", ["--dataset", "mnist", "--epochs", "10", "--lr", "2e-3"]),
    ("mlp", ["--dataset", "mnist", "--epochs", "15", "--lr", "1e-3"]),
    ("mlp", ["--dataset", "fashion-mnist", "--epochs", "20", "--lr", "1e-3"]),
    ("logreg", ["--dataset", "mnist", "--epochs", "10", "--lr", "1e-3"]),
    ("logreg", ["--dataset", "fashion-mnist", "--epochs", "10", "--lr", "1e-3"]),
]


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
    best: tuple[float, float] = (-1.0, 0.0)  # (validation accuracy, -validation loss)
    best_state, best_epoch, waited = copy.deepcopy(model.state_dict()), 0, 0
    interactive = sys.stderr.isatty() and context.is_main
    for epoch in range(1, cfg.epochs + 1):
        trained.train()
        # the same permutation on every rank: each knows every global batch and takes its share
        started, order = time.perf_counter(), torch.randperm(n, generator=generator)
        total_loss, correct, seen = 0.0, 0, 0
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch}/{cfg.epochs}",
            mininterval=0.5 if interactive else 30,
            leave=interactive,
            disable=not context.is_main,
        )
        for step in bar:
            index = order[step * batch : (step + 1) * batch]
            if cfg.shift and train_split.images is not None:
                # shifted as one global batch, so the random shifts do not depend on the ranks
                x = random_shift(train_split.images[index], cfg.shift, background, generator)
                inputs: tuple[torch.Tensor, ...] = (context.shard(x),)  # (B / ranks, 1, 28, 28)
            else:
                inputs = train_split.inputs(context.shard(index))
            y = train_split.labels[context.shard(index)].to(context.device)  # (B / ranks,)
            logits = trained(*to_device(inputs, context.device))  # (B / ranks, classes)
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
        val_loss, val_accuracy = loss_and_accuracy(model, val_split, context)
        history.append(
            {
                "epoch": epoch,
                "train_loss": total_loss / seen_total,
                "train_accuracy": correct_total / seen_total,
                "val_loss": val_loss,
                "val_accuracy": val_accuracy,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - started,
            }
        )
        improved = (val_accuracy, -val_loss) > best
        if improved:
            best, best_state, best_epoch, waited = (
                (val_accuracy, -val_loss),
                copy.deepcopy(model.state_dict()),
                epoch,
                0,
            )
        else:
            waited += 1
        say(
            context,
            f"epoch {epoch}: train loss {history[-1]['train_loss']:.4f} "
            f"acc {history[-1]['train_accuracy']:.4f} | "
            f"val loss {val_loss:.4f} acc {val_accuracy:.4f}{' *' if improved else ''} | "
            f"{history[-1]['seconds']:.0f}s",
        )
        if waited >= cfg.patience:  # the same decision on every rank: the numbers are reduced
            say(context, f"early stop: no better validation accuracy for {cfg.patience} epochs")
            break
    model.load_state_dict(best_state)
    return history, best_epoch


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
    model = FAMILIES[family][1](model_cfg).to(context.device)
    if context.enabled:
        torch.manual_seed(cfg.seed + context.rank)  # different dropout on each rank
    parameters = sum(p.numel() for p in model.parameters())
    name = f"{family}-{cfg.dataset}"
    splits = make_splits(data, spec)
    say(context, f"{name}: {parameters:,} parameters, splits {data.splits()}")
    if context.enabled:
        say(context, f"{context.world_size} ranks, device {context.device}")

    started = time.perf_counter()
    history, best_epoch = fit(model, data, cfg, spec, context, splits)
    seconds = time.perf_counter() - started
    torch_loss, torch_accuracy = loss_and_accuracy(model, splits["test"], context)
    if not context.is_main:
        return None  # rank 0 exports and publishes
    model = model.cpu()

    cfg.models_dir.mkdir(parents=True, exist_ok=True)
    # Staged inside the repository so publishing is a rename on the same file system.
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{name}-", dir=cfg.models_dir))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the version from a service run as another user
    test_split = splits["test"]
    try:
        wrapper = WithProbabilities if spec is None else GraphWithProbabilities
        exported = wrapper(model).eval()
        onnx_path = staging / "model.onnx"
        # Two examples: with one, the exporter may specialise the batch (or graph) axis.
        example = example_inputs(test_split, 2)
        if spec is not None:
            nodes, edges = torch.export.Dim("nodes"), torch.export.Dim("edges")
            dynamic: Any = ({0: nodes}, {1: edges}, {0: nodes})
        else:
            dynamic = ({0: "batch"},)
        export_onnx(
            exported,
            tuple(example.values()),
            onnx_path,
            input_names=list(example),
            output_names=["logits", "probabilities"],
            dynamic_shapes=dynamic,
            opset=cfg.opset,
        )
        verified = example_inputs(test_split, cfg.verify_images)
        max_abs_diff = verify(exported, onnx_path, verified, cfg.tolerance)
        if test_split.graphs is not None:
            test = evaluate_onnx_graphs(
                onnx_path, test_split.graphs, test_split.labels.numpy(), data.labels
            )
        else:
            test = evaluate_onnx(onnx_path, data.test_x.numpy(), data.test_y.numpy(), data.labels)
        print(
            f"{name}: test accuracy {test['accuracy']:.4f} with onnxruntime "
            f"({torch_accuracy:.4f} in torch), max |onnx - torch| {max_abs_diff:.2g}",
            flush=True,
        )
        plot_curves(
            history, best_epoch, staging / "curves.png", f"{name}: {parameters:,} parameters"
        )
        best = history[best_epoch - 1]
        card = {
            "family": family,
            "task": "classification",
            "dataset": {
                "name": data.name,
                "source": data.source,
                "sha256": data.sha256,
                "splits": data.splits(),
            },
            "metrics": {
                "test_accuracy": test["accuracy"],
                "test_loss": test["loss"],
                "per_class_accuracy": test["per_class_accuracy"],
                "validation_accuracy": best["val_accuracy"],
                "validation_loss": best["val_loss"],
                "torch_test_accuracy": torch_accuracy,
                "torch_test_loss": torch_loss,
                "measured_with": f"onnxruntime on model.onnx, {len(data.test_y)} test images",
            },
            "confusion_matrix": test["confusion_matrix"],
            "training": {
                "config": {**as_json(cfg), "models_dir": None, "model": as_json(model_cfg)},
                "graph": spec.to_config() if spec else None,
                "ranks": context.world_size,
                "epochs_run": len(history),
                "best_epoch": best_epoch,
                "seconds": round(seconds, 1),
                "parameters": parameters,
                "history": history,
            },
            "export": {
                "opset": cfg.opset,
                "max_abs_diff": max_abs_diff,
                "tolerance": cfg.tolerance,
                "verified_on": f"{len(test_split.labels[: cfg.verify_images])} test images",
            },
        }
        if family in {"vit", "gnn"}:
            split = Split(test_split.labels, data.test_x, test_split.graphs)
            card["comparison"] = comparison(name, onnx_path, split, test, parameters, cfg)
        version = next_version(cfg.models_dir / name)
        markdown = classifier_card_markdown(name, version, card, data.labels, sha256_of(onnx_path))
        (staging / "card.md").write_text(markdown)
        config = classifier_config(family, data, spec)
        target = publish_version(staging, cfg.models_dir, name, config, card, version=version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when published
    print(f"published {target}", flush=True)
    return target


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
    sha256 = card["files"]["model.onnx"]["sha256"]
    markdown = classifier_card_markdown(model_dir.name, card["version"], card, data.labels, sha256)
    (version / "card.md").write_text(markdown)
    write_json(version / "card.json", card)
    print(json.dumps(card["comparison"], indent=1))


def option_configs(family: str) -> list[Any]:
    """The configs whose fields are the options of `train family`: the graph conversion's too."""
    configs = [TrainConfig(), FAMILIES[family][0]()]
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
    if family not in FAMILIES:
        print(
            f"{family}: not implemented; image classifiers: {', '.join(FAMILIES)}", file=sys.stderr
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
    return train_each(main, SHIPPED_RUNS, models_dir)
