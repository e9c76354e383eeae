"""Train an image classifier, export it to ONNX, check it, and publish it into the repository.

    python -m training train cnn --dataset mnist [--epochs 12 --lr 2e-3 --batch-size 128 ...]
    python -m training evaluate cnn --dataset mnist [--models-dir models]

`train` reads top to bottom: config, data, model, the loop (validation every epoch, early stopping
that keeps the best weights), test metrics, the ONNX export checked against torch on real test
images, the test split re-measured through onnxruntime (the card's numbers), then the new version
published into models/<family>-<dataset>/<N>/. Every config field is an option (`--help` lists).
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from training.data.images import IMAGE_SIZE, ImageDataset, load_dataset
from training.evaluation import evaluate_onnx, evaluate_shipped
from training.models.cnn import CNN, CNNConfig
from training.models.logreg import LogisticRegression, LogRegConfig
from training.models.mlp import MLP, MLPConfig
from training.onnx_export import OPSET, export_onnx, verify
from training.overrides import OptionError, apply_overrides
from training.report import classifier_card_markdown, plot_curves
from training.repository import DEFAULT_MODELS_DIR, next_version, publish_version, sha256_of

# family -> (model config, model class)
FAMILIES: dict[str, tuple[type[Any], type[nn.Module]]] = {
    "logreg": (LogRegConfig, LogisticRegression),
    "mlp": (MLPConfig, MLP),
    "cnn": (CNNConfig, CNN),
}
DATA_FIELDS = ("image_size", "channels", "num_classes")  # model fields that follow from the data


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


# The six shipped classifiers: `make train` (python -m training train-all) reproduces them.
SHIPPED_RUNS: list[tuple[str, list[str]]] = [
    ("cnn", ["--dataset", "mnist", "--epochs", "12", "--lr", "2e-3", "--shift", "2"]),
    ("cnn", ["--dataset", "fashion-mnist", "--epochs", "15", "--lr", "2e-3", "--shift", "2"]),
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


@torch.no_grad()
def loss_and_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    total_loss, correct = 0.0, 0
    for i in range(0, len(y), 1000):
        logits = model(x[i : i + 1000])
        total_loss += F.cross_entropy(logits, y[i : i + 1000], reduction="sum").item()
        correct += int((logits.argmax(1) == y[i : i + 1000]).sum())
    return total_loss / len(y), correct / len(y)


def fit(
    model: nn.Module, data: ImageDataset, cfg: TrainConfig
) -> tuple[list[dict[str, float]], int]:
    """The training loop. Leaves the model holding the weights of its best validation epoch.

    Returns the per-epoch history and that best epoch.
    """
    n, batch = len(data.train_y), min(cfg.batch_size, len(data.train_y))
    # Drop the last partial batch: a tiny one gives noisy batchnorm statistics; the data is
    # reshuffled every epoch so nothing is skipped for good.
    steps_per_epoch = n // batch
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
    interactive = sys.stderr.isatty()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        started, order = time.perf_counter(), torch.randperm(n, generator=generator)
        total_loss, correct, seen = 0.0, 0, 0
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch}/{cfg.epochs}",
            mininterval=0.5 if interactive else 30,
            leave=interactive,
        )
        for step in bar:
            index = order[step * batch : (step + 1) * batch]
            x, y = data.train_x[index], data.train_y[index]  # (B, 1, 28, 28), (B,)
            if cfg.shift:
                x = random_shift(x, cfg.shift, background, generator)
            logits = model(x)  # (B, classes)
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
        val_loss, val_accuracy = loss_and_accuracy(model, data.val_x, data.val_y)
        history.append(
            {
                "epoch": epoch,
                "train_loss": total_loss / seen,
                "train_accuracy": correct / seen,
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
        print(
            f"epoch {epoch}: train loss {total_loss / seen:.4f} acc {correct / seen:.4f} | "
            f"val loss {val_loss:.4f} acc {val_accuracy:.4f}{' *' if improved else ''} | "
            f"{history[-1]['seconds']:.0f}s",
            flush=True,
        )
        if waited >= cfg.patience:
            print(
                f"early stop: no better validation accuracy for {cfg.patience} epochs", flush=True
            )
            break
    model.load_state_dict(best_state)
    return history, best_epoch


def classifier_config(family: str, data: ImageDataset) -> dict[str, Any]:
    """config.json of the model (publish_version adds the name)."""
    classes = len(data.labels)
    return {
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


def as_json(config: Any) -> dict[str, Any]:
    """A config dataclass as JSON values (paths as strings, tuples as lists)."""
    return {
        k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
        for k, v in dataclasses.asdict(config).items()
    }


def train(family: str, cfg: TrainConfig, model_cfg: Any) -> Path:
    """Train, export, verify, measure and publish; returns the new version's folder."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)  # initial weights and dropout
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.image_folder)
    if cfg.max_train:
        data.train_x, data.train_y = data.train_x[: cfg.max_train], data.train_y[: cfg.max_train]
    model_cfg = dataclasses.replace(
        model_cfg, image_size=IMAGE_SIZE, channels=1, num_classes=len(data.labels)
    )
    model = FAMILIES[family][1](model_cfg)
    parameters = sum(p.numel() for p in model.parameters())
    name = f"{family}-{cfg.dataset}"
    print(f"{name}: {parameters:,} parameters, splits {data.splits()}", flush=True)

    started = time.perf_counter()
    history, best_epoch = fit(model, data, cfg)
    seconds = time.perf_counter() - started
    torch_loss, torch_accuracy = loss_and_accuracy(model, data.test_x, data.test_y)

    cfg.models_dir.mkdir(parents=True, exist_ok=True)
    # Staged inside the repository so publishing is a rename on the same file system.
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{name}-", dir=cfg.models_dir))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the version from a service run as another user
    try:
        exported = WithProbabilities(model).eval()
        onnx_path = staging / "model.onnx"
        # A batch of 2 as the example: with 1 the exporter may specialise the batch axis.
        export_onnx(
            exported,
            (data.test_x[:2],),
            onnx_path,
            input_names=["image"],
            output_names=["logits", "probabilities"],
            dynamic_shapes=({0: "batch"},),
            opset=cfg.opset,
        )
        verified = data.test_x[: cfg.verify_images]
        max_abs_diff = verify(exported, onnx_path, {"image": verified}, cfg.tolerance)
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
                "verified_on": f"{len(verified)} test images",
            },
        }
        version = next_version(cfg.models_dir / name)
        markdown = classifier_card_markdown(name, version, card, data.labels, sha256_of(onnx_path))
        (staging / "card.md").write_text(markdown)
        config = classifier_config(family, data)
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
    return 0 if abs(metrics["accuracy"] - recorded) <= 1e-6 else 1


def usage(family: str) -> str:
    model_cfg = FAMILIES[family][0]()
    options = [
        f"  --{k.replace('_', '-')} (default {v})"
        for config in (TrainConfig(), model_cfg)
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
        cfg, model_cfg = apply_overrides(
            argv, TrainConfig(), FAMILIES[family][0](), fixed=DATA_FIELDS
        )
    except OptionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    train(family, cfg, model_cfg)
    return 0


def train_all(models_dir: Path | None = None) -> int:
    """Train and publish every shipped classifier, one after the other (cnn-mnist first)."""
    extra = ["--models-dir", str(models_dir)] if models_dir else []
    for family, argv in SHIPPED_RUNS:
        code = main("train", family, argv + extra)
        if code:
            return code
    return 0
