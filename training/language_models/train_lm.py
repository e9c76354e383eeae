"""Train a word-level language model on Jane Austen (or any text), export it, publish it.

    python -m training train lstm --dataset austen [--max-minutes 6 --hidden 384 ...]
    python -m training train transformer --text my_book.txt --vocab-size 5000
    python -m training train gru --text my_texts/ --dataset letters   # a folder of .txt files
    python -m training train ngram          # the Kneser-Ney baseline: metrics only, no ONNX
    python -m training evaluate lstm        # re-measure the shipped lstm-austen on the test split
    torchrun --nproc_per_node 2 -m training train lstm ...  # DDP: see training/distributed.py

Families: rnn, lstm, gru (training/models/recurrent.py), transformer, mamba. `train` reads top to
bottom: config, data and vocabulary, model, the loop (random windows of the training stream,
AdamW, warmup + cosine learning rate, gradient clipping, validation every `eval_interval` steps,
best weights kept), then the checkpoint, which `training.language_models.lm_graphs` turns into model.onnx,
step.onnx, vocab.json, the card and the curves, published as the next version.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from service.tasks.tokenizer import WordTokenizer
from training.data.corpus import Corpus, load_corpus
from training.distributed import Distributed, run_on_ranks
from training.families import build_model, default_model_config, of_group, shipped_runs
from training.language_models.lm_eval import evaluate_stream, torch_logits_fn
from training.language_models.lm_graphs import Checkpoint, evaluate_shipped, release
from training.language_models.ngram import ngram_baseline
from training.overrides import OptionError, apply_overrides, train_each
from training.publish import DEFAULT_MODELS_DIR, publish

NEURAL = tuple(family for family in of_group("language-model") if family != "ngram")


@dataclass
class TrainConfig:
    text: Path | None = None  # a .txt file or folder of them; None = Jane Austen's six novels
    dataset: str = ""  # name in the model name <family>-<dataset>; "" = austen or the file's stem
    models_dir: Path = DEFAULT_MODELS_DIR  # the repository the version is published into
    version: int = 0  # version number to publish as; 0 = the next free one
    checkpoint_dir: Path = DEFAULT_MODELS_DIR.parent / "runs"  # <name>.pt before export (ignored)
    vocab_size: int = 8000  # most frequent training tokens kept, the rest read as <unk>
    lowercase: bool = False  # fold case in the vocabulary (the user's words are still echoed)
    block_size: int = 128  # tokens per training window, and the evaluation window
    batch_size: int = 32  # windows per step
    max_iters: int = 5000  # optimizer steps (the time budget usually ends the run first)
    max_minutes: float = 6.0  # wall-time budget: the LR decays by it too, the run stops at it
    learning_rate: float = 3e-3  # peak, after warmup
    min_lr: float = 3e-4  # end of the cosine decay
    warmup_iters: int = 100
    weight_decay: float = 0.1  # AdamW, on matrices only (not biases, norms or embeddings)
    grad_clip: float = 1.0  # max global gradient norm; 0 = off
    eval_interval: int = 150  # steps between validation measurements
    eval_tokens: int = 12000  # validation tokens measured each time (all at the end)
    seed: int = 1337
    threads: int = 1  # torch intra-op threads; the machine's 2 cores are shared by 3 trainers
    tolerance: float = 1e-4  # largest |onnxruntime - torch| allowed on the logits
    # bfloat16 autocast for the training matmuls: ~1.5x faster on this CPU (avx512_bf16);
    # weights, optimizer, evaluation and export stay float32
    bf16: bool = True


def as_json(config: Any) -> dict[str, Any]:
    """A config dataclass as JSON values (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()}


def learning_rate(step: int, cfg: TrainConfig, elapsed: float = 0.0) -> float:
    """Linear warmup to the peak, then cosine decay to min_lr.

    The decay follows whichever runs out first, steps or wall time: on a shared machine the
    time budget may end the run before max_iters, and it should still end at min_lr.
    """
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / cfg.warmup_iters
    progress = (step - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters)
    if cfg.max_minutes > 0:
        progress = max(progress, elapsed / (cfg.max_minutes * 60))
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.min_lr + cosine * (cfg.learning_rate - cfg.min_lr)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """Weight decay on matrices only: biases, norm gains and the (tied) embedding are exempt."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    params = dict(model.named_parameters())  # shared (tied) weights appear once
    decay = [p for p in params.values() if p.dim() >= 2 and id(p) not in embeddings]
    other = [p for p in params.values() if p.dim() < 2 or id(p) in embeddings]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": other, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.99))


def get_batch(
    ids: np.ndarray, cfg: TrainConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of the stream: inputs (B, T) and the same shifted by one as targets."""
    starts = rng.integers(0, len(ids) - cfg.block_size - 1, size=cfg.batch_size)
    x = np.stack([ids[s : s + cfg.block_size] for s in starts])
    y = np.stack([ids[s + 1 : s + 1 + cfg.block_size] for s in starts])
    return torch.from_numpy(x), torch.from_numpy(y)


@dataclass
class TrainResult:
    model: nn.Module  # with the best validation weights loaded
    history: list[dict[str, float]]  # one entry per validation: step, train/val loss, lr
    best_step: int
    iters_run: int
    seconds: float
    stopped_early: bool  # the wall-time budget ran out before max_iters


def fit(
    model: nn.Module,
    train_ids: np.ndarray,
    valid_ids: np.ndarray,
    cfg: TrainConfig,
    context: Distributed | None = None,
) -> TrainResult:
    """The loop; under torchrun every rank draws the same global batch (same seed) and trains on
    its share, DDP averages the gradients, rank 0's clock decides the learning rate and the stop,
    and rank 0 alone validates (the other ranks' result keeps the last weights)."""
    context = context or Distributed()
    assert cfg.batch_size % context.world_size == 0, (
        f"--batch-size {cfg.batch_size} must split evenly over {context.world_size} ranks"
    )
    device = context.device
    trained = context.wrap(model)
    rng = np.random.default_rng(cfg.seed)
    optimizer = make_optimizer(model, cfg)
    valid = valid_ids[: cfg.eval_tokens]
    history: list[dict[str, float]] = []
    best_loss, best_step, best_state = math.inf, 0, copy.deepcopy(model.state_dict())
    recent: list[float] = []
    started = time.perf_counter()
    step, stopped_early = 0, False
    progress = tqdm(
        range(cfg.max_iters),
        desc="train",
        mininterval=10,
        file=sys.stdout,
        disable=not context.is_main,
    )
    for step in progress:
        lr = learning_rate(step, cfg, context.agree(time.perf_counter() - started))
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        x, y = get_batch(train_ids, cfg, rng)  # the global batch: (B, T) each
        x, y = context.shard(x).to(device), context.shard(y).to(device)  # (B / ranks, T)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            _, loss = trained(x, y)
        assert loss is not None
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        recent.append(loss.item())

        elapsed = context.agree(time.perf_counter() - started)
        out_of_time = cfg.max_minutes > 0 and elapsed > cfg.max_minutes * 60
        last = step == cfg.max_iters - 1 or out_of_time
        if (step + 1) % cfg.eval_interval == 0 or last:
            loss_sum, losses = context.sum([float(np.sum(recent)), float(len(recent))])
            recent = []
            if context.is_main:  # the others wait for it at the next all-reduce
                val = evaluate_stream(torch_logits_fn(model), valid, cfg.block_size)
                history.append(
                    {
                        "step": step + 1,
                        "train_loss": loss_sum / losses,
                        "val_loss": val["loss"],
                        "val_perplexity": val["perplexity"],
                        "lr": lr,
                        "seconds": round(elapsed, 1),
                    }
                )
                progress.set_postfix(val_ppl=f"{val['perplexity']:.1f}", lr=f"{lr:.1e}")
                print(f"step {step + 1}: {history[-1]}", flush=True)
                if val["loss"] < best_loss:
                    best_loss, best_step = val["loss"], step + 1
                    best_state = copy.deepcopy(model.state_dict())
        if out_of_time:
            stopped_early = True
            break
    progress.close()
    seconds = time.perf_counter() - started
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, history, best_step, step + 1, seconds, stopped_early)


def prepare_data(cfg: TrainConfig) -> tuple[Corpus, WordTokenizer, dict[str, np.ndarray]]:
    corpus = load_corpus(cfg.text)
    tokenizer = WordTokenizer.train(corpus.splits["train"], cfg.vocab_size, lowercase=cfg.lowercase)
    ids = {split: corpus.encode(tokenizer, split) for split in corpus.splits}
    return corpus, tokenizer, ids


def train(family: str, cfg: TrainConfig, model_cfg: Any) -> Path | None:
    """Train, then export, verify, measure and publish; returns the new version's folder
    (None on the ranks other than 0 under torchrun)."""
    return run_on_ranks(lambda context: train_on(family, cfg, model_cfg, context))


def train_on(family: str, cfg: TrainConfig, model_cfg: Any, context: Distributed) -> Path | None:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)  # initial weights and dropout
    corpus, tokenizer, ids = prepare_data(cfg)
    model_cfg = dataclasses.replace(model_cfg, vocab_size=len(tokenizer))
    if hasattr(model_cfg, "block_size"):
        model_cfg = dataclasses.replace(model_cfg, block_size=cfg.block_size)
    model = build_model(family, model_cfg).to(context.device)
    if context.enabled:
        torch.manual_seed(cfg.seed + context.rank)  # different dropout on each rank
    parameters = sum(p.numel() for p in model.parameters())
    tokens = {split: len(a) for split, a in ids.items()}
    if context.is_main:
        print(
            f"{family}: {parameters:,} parameters, vocabulary {len(tokenizer)}, tokens {tokens}"
            + (f", {context.world_size} ranks on {context.device}" if context.enabled else ""),
            flush=True,
        )

    result = fit(model, ids["train"], ids["validation"], cfg, context)
    if not context.is_main:
        return None  # rank 0 checkpoints, exports and publishes
    result.model.cpu()
    print(f"{family}: trained {result.iters_run} steps in {result.seconds:.0f} s", flush=True)
    checkpoint = Checkpoint(
        family=family,
        model_config=dataclasses.asdict(model_cfg),
        train_config=as_json(cfg) | {"ranks": context.world_size},  # DDP processes
        state_dict=result.model.state_dict(),
        vocab=tokenizer.to_json(),
        history=result.history,
        best_step=result.best_step,
        iters_run=result.iters_run,
        seconds=result.seconds,
        stopped_early=result.stopped_early,
        parameters=parameters,
    )
    name = f"{family}-{cfg.dataset or corpus.name}"
    cfg.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    checkpoint.save(cfg.checkpoint_dir / f"{name}.pt")
    return publish(release(checkpoint), cfg.models_dir, cfg.version or None)


@dataclass
class EvaluateConfig:
    models_dir: Path = DEFAULT_MODELS_DIR
    dataset: str = "austen"
    version: int = 0  # 0 = the highest
    text: Path | None = None  # must be the text the model was trained on (for the test split)


def evaluate(family: str, cfg: EvaluateConfig) -> int:
    """Re-measure a shipped version on the test split through onnxruntime; 1 if the card disagrees."""
    metrics, card = evaluate_shipped(
        cfg.models_dir / f"{family}-{cfg.dataset}", cfg.version, cfg.text
    )
    recorded = card["metrics"]["test_perplexity"]
    print(
        f"{family}-{cfg.dataset} version {card['version']}: test perplexity {metrics['perplexity']:.3f} "
        f"(card {recorded:.3f}), top-1 {metrics['top1']:.4f}, top-5 {metrics['top5']:.4f}"
    )
    return 0 if abs(metrics["perplexity"] - recorded) <= 1e-3 * recorded else 1


def check_dataset(cfg: TrainConfig) -> None:
    """--dataset names a built-in corpus, or (with --text) the user's text in the model name."""
    if cfg.text is None and cfg.dataset not in ("", "austen"):
        raise OptionError(
            f"--dataset {cfg.dataset}: the built-in corpus is austen; "
            "for your own text pass --text FILE_OR_FOLDER (and --dataset to name it)"
        )
    if cfg.text is not None and not cfg.text.exists():
        raise OptionError(f"--text {cfg.text}: no such file or folder")


def train_ngram(argv: list[str]) -> int:
    """The baseline alone: fit Kneser-Ney on the training split, print test metrics."""
    try:
        (cfg,) = apply_overrides(argv, TrainConfig())
        check_dataset(cfg)
    except OptionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _, tokenizer, ids = prepare_data(cfg)
    for order in (2, 3):
        print(f"kneser-ney order {order}: {ngram_baseline(tokenizer, ids, order)}")
    return 0


def usage(family: str) -> str:
    configs = [TrainConfig()] + ([default_model_config(family)] if family in NEURAL else [])
    options = [
        f"  --{k.replace('_', '-')} (default {v})"
        for config in configs
        for k, v in as_json(config).items()
        if k not in ("cell", "vocab_size") or isinstance(config, TrainConfig)
    ]
    return f"python -m training train {family} [options]\n" + "\n".join(options)


def main(command: str, family: str, argv: list[str]) -> int:
    if command == "train-all":
        return train_all()
    if family not in NEURAL and family != "ngram":
        print(f"{family}: not a language model; known: {', '.join(NEURAL)}, ngram", file=sys.stderr)
        return 2
    if "--help" in argv or "-h" in argv:
        print(usage(family))
        return 0
    if family == "ngram":
        return train_ngram(argv)
    try:
        if command == "evaluate":
            (evaluate_cfg,) = apply_overrides(argv, EvaluateConfig())
            return evaluate(family, evaluate_cfg)
        cfg, model_cfg = apply_overrides(
            argv, TrainConfig(), default_model_config(family), fixed=("cell",)
        )
        check_dataset(cfg)
    except OptionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    train(family, cfg, model_cfg)
    return 0


def train_all(models_dir: Path | None = None) -> int:
    """Train and publish the five shipped language models one after the other."""
    return train_each(main, shipped_runs("language-model"), models_dir)
