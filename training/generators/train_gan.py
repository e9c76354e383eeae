"""Train a class-conditional DCGAN on 28x28 images; ship the generator as model.onnx.

    python -m training train gan --dataset mnist [--iterations 4000 --batch-size 64 ...]

Generator and discriminator take turns, each with the other frozen: the discriminator learns to
tell real (image, label) pairs from generated ones, then the generator learns to fool it
(non-saturating loss). Stabilisers: spectral norm and a projection head in the discriminator,
one-sided label smoothing (real targets 0.9), Adam with beta1 = 0.5 (DCGAN's setting). Against
mode collapse (one picture per class whatever z is, seen without them on MNIST):
a minibatch standard deviation channel in the discriminator and the mode-seeking term below.
The exported generator is the exponential moving average of its weights. With --monitor-every N
the EMA generator is scored every N iterations (FCD against training images, by cnn-<dataset>)
and checkpointed, so a run stopped early still leaves its latest weights to export.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from service.tasks.imagegen import to_uint8
from training.data.images import ImageData
from training.distributed import Distributed
from training.generators.common import (
    EMA,
    Clock,
    History,
    RunConfig,
    base_config,
    check_batch,
    decoder_family_options,
    export_decoder_family,
    first,
    load_checkpoint,
    model_name,
    parameter_count,
    plot_curves,
    publish_release,
    random_batches,
    ranks_mean,
    save_checkpoint,
    tensor_spec,
    train_decoder_family,
    training_summary,
)
from training.generators.generation_config import decoder_generation
from training.generators.generator_eval import (
    ClassifierProbe,
    class_consistency,
    frechet_distance,
)
from training.models.gan import Discriminator, GANConfig, Generator
from training.publish import Graph, latest_version


@dataclass
class GANTrainConfig:
    iterations: int = 4000  # discriminator + generator updates; at batch 64 about 4 epochs
    batch_size: int = 64
    learning_rate: float = 2e-4  # both networks (DCGAN)
    beta1: float = 0.5  # Adam's first-moment decay (DCGAN)
    real_target: float = 0.9  # one-sided label smoothing: the discriminator never gets sure
    ema_decay: float = 0.999  # the exported generator is this average of its weights
    mode_seeking_weight: float = 0.1  # weight of 1 / diversity in G's loss (0 = off); 1.0 drew
    # varied digits of the wrong class (class consistency 0.74 against 0.97 at 0.1)
    lr_decay: bool = False  # cosine decay of both learning rates to 10% over the budget (Clock)
    monitor_every: int = 0  # every N iterations (0 = never): FCD of the EMA generator against
    # training images (never the test set, which the card scores) logged, checkpoint saved
    resume: Path | None = None  # a checkpoint of this script (runs/gan-<dataset>/ckpt.pt) to go
    # on from: its EMA generator and its discriminator, fresh optimisers and a new budget; the
    # card counts the iterations and seconds of both runs
    log_every: int = 10


def set_frozen(module: nn.Module, frozen: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(not frozen)


def mode_seeking_ratio(fake: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """How far apart the images of the batch's two halves are, per unit of distance between their
    latents (same labels in both halves): mode-seeking GAN (Mao et al. 2019). The generator
    minimises its inverse, so it cannot draw the same picture for every z of a class."""
    image_a, image_b = fake.chunk(2)  # (B/2, 1, 28, 28) each
    latent_a, latent_b = latent.chunk(2)  # (B/2, latent_dim) each
    images = (image_a - image_b).abs().mean(dim=(1, 2, 3))
    return (images / (latent_a - latent_b).abs().mean(dim=1)).mean()


class Monitor:
    """FCD of a generator's samples against training images, scored by cnn-<dataset>: a progress
    signal while training that leaves the test set to the card."""

    SAMPLES = 2000  # generated images per reading
    REFERENCE = 10000  # training images in the reference

    def __init__(self, run: RunConfig, data: ImageData) -> None:
        classifier = run.classifier or latest_version(run.models_dir / f"cnn-{data.name}")
        self.probe = ClassifierProbe(classifier, run.threads)
        order = np.random.default_rng(run.seed).permutation(len(data.train_images))
        self.reference, _ = self.probe(data.train_images[order[: self.REFERENCE]])
        self.num_classes = len(data.labels)
        self.seed = run.seed

    @torch.no_grad()
    def __call__(self, generator: Generator) -> tuple[float, float]:
        """(FCD against the training images, class consistency) of SAMPLES balanced samples."""
        rng = torch.Generator().manual_seed(self.seed + 1)
        labels = torch.arange(self.SAMPLES) % self.num_classes
        latent = torch.randn(self.SAMPLES, generator.config.latent_dim, generator=rng)
        images = to_uint8(generator(latent, labels).numpy(), (0.0, 1.0))  # as the service does
        features, logits = self.probe(images)
        fcd = frechet_distance(features, self.reference)
        return fcd, class_consistency(logits, labels.numpy())


def continued(earlier: dict[str, Any] | None, key: str) -> History:
    """The series of the checkpoint resumed (empty without one), for this run to extend."""
    if earlier is None or not earlier.get(key):
        return History()
    series = {k: list(v) for k, v in earlier[key].items() if k != "iterations"}
    return History(list(earlier[key]["iterations"]), series)


def averaged_generator(ema_generator: nn.Module, seed: int) -> Generator:
    """A CPU copy of the EMA generator with its own batchnorm statistics: what is exported."""
    averaged = copy.deepcopy(ema_generator).cpu()
    assert isinstance(averaged, Generator), "the EMA of a Generator"
    standing_statistics(averaged, batches=20, batch_size=256, seed=seed)
    return averaged


@torch.no_grad()
def standing_statistics(generator: nn.Module, batches: int, batch_size: int, seed: int) -> None:
    """Re-estimate the batchnorm statistics of (averaged) weights from their own outputs.

    The EMA copies the running statistics of the live generator, which belong to other weights;
    an equal-weight average over fresh batches matches the weights that are exported (BigGAN's
    "standing statistics").
    """
    rng = torch.Generator().manual_seed(seed)
    norms = [m for m in generator.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    generator.train()
    config = generator.config
    assert isinstance(config, GANConfig), "a Generator of training/models/gan.py"
    for _ in range(batches):
        labels = torch.randint(0, config.num_classes, (batch_size,), generator=rng)
        generator(torch.randn(batch_size, config.latent_dim, generator=rng), labels)
    for norm in norms:
        norm.momentum = 0.1
    generator.eval()


class Adversaries:
    """The generator and the discriminator, their DDP wrappers and optimisers: the two steps of
    one iteration. Every random draw is of the global batch, then each rank takes its share."""

    def __init__(
        self,
        generator: Generator,
        discriminator: Discriminator,
        config: GANTrainConfig,
        model_config: GANConfig,
        context: Distributed,
    ) -> None:
        self.generator, self.discriminator = generator, discriminator
        self.trained_g, self.trained_d = context.wrap(generator), context.wrap(discriminator)
        betas = (config.beta1, 0.999)
        self.g_optimizer = torch.optim.Adam(
            generator.parameters(), lr=config.learning_rate, betas=betas
        )
        self.d_optimizer = torch.optim.Adam(
            discriminator.parameters(), lr=config.learning_rate, betas=betas
        )
        self.config, self.model_config, self.context = config, model_config, context

    def set_learning_rate(self, rate: float) -> None:
        for group in [*self.g_optimizer.param_groups, *self.d_optimizer.param_groups]:
            group["lr"] = rate

    def draw(self, labels: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents for `labels` (the global batch's), both cut to this rank's share."""
        latent = torch.randn(len(labels), self.model_config.latent_dim, generator=rng)
        device = self.context.device
        return self.context.shard(labels).to(device), self.context.shard(latent).to(device)

    def discriminator_step(
        self, real: torch.Tensor, real_labels: torch.Tensor, batch: int, rng: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Real images against the generator's (detached): the discriminator learns."""
        set_frozen(self.discriminator, False)
        fake_labels = torch.randint(0, self.model_config.num_classes, (batch,), generator=rng)
        fake_labels, latent = self.draw(fake_labels, rng)
        with torch.no_grad():
            fake = self.generator(latent, fake_labels)
        real_logits = self.trained_d(real, real_labels)
        fake_logits = self.trained_d(fake, fake_labels)
        d_loss = F.binary_cross_entropy_with_logits(
            real_logits, torch.full_like(real_logits, self.config.real_target)
        ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        self.d_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_optimizer.step()
        return {
            "discriminator_loss": d_loss.detach(),
            "d_real": torch.sigmoid(real_logits).mean().detach(),
            "d_fake": torch.sigmoid(fake_logits).mean().detach(),
        }

    def generator_step(self, batch: int, rng: torch.Generator) -> dict[str, torch.Tensor]:
        """The discriminator frozen, the generator learns to fool it; the two halves of the batch
        share their labels, so the mode-seeking term compares two latents of one class."""
        set_frozen(self.discriminator, True)
        half = torch.randint(0, self.model_config.num_classes, (batch // 2,), generator=rng)
        fake_labels, latent = self.draw(half.repeat(2), rng)
        fake = self.trained_g(latent, fake_labels)
        g_logits = self.discriminator(fake, fake_labels)
        g_loss = F.binary_cross_entropy_with_logits(g_logits, torch.ones_like(g_logits))
        diversity = mode_seeking_ratio(fake, latent)
        self.g_optimizer.zero_grad(set_to_none=True)
        (g_loss + self.config.mode_seeking_weight / (diversity + 1e-5)).backward()
        self.g_optimizer.step()
        return {"generator_loss": g_loss.detach(), "diversity": diversity.detach()}


def train_model(
    run: RunConfig,
    config: GANTrainConfig,
    model_config: GANConfig,
    data: ImageData,
    context: Distributed | None = None,
) -> Path | None:
    """The loop; the checkpoint's path on rank 0, None on the other ranks.

    Under torchrun both networks are DDP-wrapped: every rank draws the same global batch, labels
    and latents (one seeded generator) and works on its share; the generator step runs the
    frozen discriminator unwrapped, so only the generator's gradients are averaged there.
    """
    context = context or Distributed()
    check_batch(config.batch_size, context)
    device = context.device
    x, y = data.train_tensors()
    generator = Generator(model_config).to(device)
    discriminator = Discriminator(model_config).to(device)
    if context.is_main:
        print(
            f"GAN: generator {parameter_count(generator):,}, discriminator "
            f"{parameter_count(discriminator):,} parameters; {len(x):,} training images"
        )
    pair = Adversaries(generator, discriminator, config, model_config, context)
    earlier = load_checkpoint(config.resume) if config.resume else None
    if earlier is not None:
        generator.load_state_dict(earlier["state_dict"])
        discriminator.load_state_dict(earlier["discriminator_state_dict"])
    ema = EMA(generator, config.ema_decay)  # smooths the oscillation adversarial training has
    monitor = Monitor(run, data) if config.monitor_every and context.is_main else None
    clock = Clock(config.iterations, run.max_minutes, context)
    history = continued(earlier, "history")  # losses, and the monitor's readings
    monitored = continued(earlier, "monitor")
    done = earlier["iterations"] if earlier else 0  # by the run resumed
    seconds, wall_seconds = (earlier["seconds"], earlier["wall_seconds"]) if earlier else (0.0, 0.0)

    def save(averaged: Generator, iteration: int) -> Path:
        return save_checkpoint(
            run.runs_dir / model_name("gan", data.name) / "ckpt.pt",
            model_config=asdict(model_config),
            state_dict=averaged.state_dict(),
            discriminator_state_dict=discriminator.state_dict(),
            discriminator_parameters=parameter_count(discriminator),
            train_config={**asdict(config), "resume": config.resume and str(config.resume)},
            history={"iterations": history.iterations, **history.series},
            monitor={"iterations": monitored.iterations, **monitored.series},
            iterations=done + iteration,
            seconds=seconds + clock.elapsed(),
            wall_seconds=wall_seconds + clock.wall(),
            resumed_from=str(config.resume) if config.resume else None,
        )

    rng = torch.Generator().manual_seed(run.seed)
    batches = random_batches(len(x), config.batch_size, rng)
    iteration = 0
    bar = tqdm(total=config.iterations, desc="gan", mininterval=5, disable=not context.is_main)
    while iteration < config.iterations and clock.progress(iteration) < 1.0:
        if config.lr_decay:
            pair.set_learning_rate(clock.learning_rate(iteration, config.learning_rate, warmup=0))
        index = next(batches)  # the global batch; every random draw below is global too
        b = len(index)
        index = context.shard(index)  # then each rank takes its share
        step = pair.discriminator_step(x[index].to(device), y[index].to(device), b, rng)
        step |= pair.generator_step(b, rng)
        ema.update(generator, iteration)
        iteration += 1
        if iteration % config.log_every == 0 or iteration == 1:
            values = {name: tensor.item() for name, tensor in step.items()}
            history.log(done + iteration, **ranks_mean(context, **values))
            bar.set_postfix(
                d=f"{history.last_mean('discriminator_loss'):.3f}",
                g=f"{history.last_mean('generator_loss'):.3f}",
            )
        if monitor is not None and iteration % config.monitor_every == 0:
            averaged = averaged_generator(ema.model, run.seed)
            fcd, consistency = monitor(averaged)
            monitored.log(done + iteration, fcd_train=fcd, class_consistency=consistency)
            bar.write(
                f"iteration {done + iteration}: EMA generator FCD against training images {fcd:.2f}, "
                f"class consistency {consistency:.4f}"
            )
            save(averaged, iteration)  # what a stop at the deadline still leaves to export
        bar.update(1)
    bar.close()
    if not context.is_main:
        return None
    return save(averaged_generator(ema.model, run.seed), iteration)


def export_version(run: RunConfig, data: ImageData, checkpoint: Path) -> Path:
    saved = load_checkpoint(checkpoint)
    fields = saved["model_config"]
    model_config = GANConfig(
        **{
            **fields,
            "generator_channels": tuple(fields["generator_channels"]),
            "discriminator_channels": tuple(fields["discriminator_channels"]),
        }
    )
    generator = Generator(model_config)
    generator.load_state_dict(saved["state_dict"])
    generator.eval()
    name = f"gan-{data.name}"
    check = {
        "latent": torch.randn(64, model_config.latent_dim),
        "label": torch.arange(64) % model_config.num_classes,
    }
    graph = Graph("model.onnx", generator, first(check, 2), ["image"], check)
    history = History(
        saved["history"]["iterations"],
        {k: v for k, v in saved["history"].items() if k != "iterations"},
    )

    def write_files(staging: Path) -> None:
        plot_curves(
            history,
            staging / "curves.png",
            f"{name}: adversarial losses",
            [["discriminator_loss", "generator_loss"], ["d_real", "d_fake"], ["diversity"]],
        )

    config = base_config(
        "gan",
        data,
        [
            tensor_spec("latent", "FP32", [model_config.latent_dim]),
            tensor_spec("label", "INT64", []),
        ],
        [tensor_spec("image", "FP32", [1, 28, 28])],
    )
    latent, classes = model_config.latent_dim, model_config.num_classes
    config["generation"] = decoder_generation(latent, classes, encoder=False)
    card = {
        "description": "Class-conditional DCGAN generator: z ~ N(0, I) and a label -> image in "
        "[0, 1]; the exponential moving average of the generator's weights. Trained against a "
        "spectrally normalised projection discriminator (not shipped).",
        "training": {
            **training_summary(saved, saved["train_config"], generator),
            "discriminator_parameters": saved["discriminator_parameters"],
            "final_losses": {
                "discriminator": history.last_mean("discriminator_loss"),
                "generator": history.last_mean("generator_loss"),
            },
            # FCD against 10,000 training images and class consistency of 2,000 samples of the
            # EMA generator while it trained (the monitor; empty when monitor_every was 0)
            "monitor": saved.get("monitor", {}),
            "resumed_from": saved.get("resumed_from"),  # counted in iterations and seconds
        },
    }
    verified = "64 random latents"
    return publish_release(run, "gan", data, [graph], config, card, None, write_files, verified)


def parse(argv: list[str]) -> tuple[RunConfig, GANTrainConfig, GANConfig]:
    return decoder_family_options(argv, GANTrainConfig(), GANConfig())


def train(family: str, argv: list[str]) -> Path | None:
    """Train, export and publish; None on the ranks other than 0 under torchrun."""
    return train_decoder_family(argv, parse, train_model, export_version)


def export(family: str, argv: list[str]) -> Path:
    """Re-export, re-measure and publish the last checkpoint without training again."""
    return export_decoder_family("gan", argv, parse, export_version)
