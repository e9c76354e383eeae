"""Train a class-conditional DDPM on 28x28 images (pixel space) or on a VAE's latents.

    python -m training train diffusion --dataset mnist [--max-minutes 14 --batch-size 128 ...]
    python -m training train latent-diffusion --dataset mnist [--vae models/vae-mnist/1]

Objective (Ho et al. 2020): pick t uniformly in [0, T), noise x_0 into
x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps and regress eps (or v, training/generators/diffusion_objective.py)
with MSE. A share of the labels is replaced by the null label so the same network also learns the
unconditional model that classifier-free guidance needs (Ho & Salimans 2022). The EMA of the
weights is exported as one denoising step that outputs eps whatever the objective; the sampling
loop itself lives in service/tasks/diffusion.py and runs on onnxruntime, in the service and in the
evaluation alike. The EMA weights are checkpointed every --checkpoint-minutes, so a long run
stopped early can still be exported (`python -m training export diffusion`).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from service.repository import version_config
from service.tasks.diffusion import alphas_cumprod
from training.data.images import ImageData, load_image_data
from training.distributed import Distributed
from training.files import sha256_of
from training.generators.common import (
    EMA,
    Clock,
    History,
    RunConfig,
    base_config,
    check_batch,
    first,
    load_checkpoint,
    model_name,
    parameter_count,
    plot_curves,
    publish_release,
    random_batches,
    ranks_mean,
    save_checkpoint,
    start,
    tensor_spec,
    train_on_ranks,
    training_summary,
)
from training.generators.diffusion_objective import noise_predictor, training_target
from training.generators.generation_config import (
    latent_diffusion_generation,
    pixel_diffusion_generation,
    schedule_parameters,
)
from training.models.latent_denoiser import LatentDenoiser, LatentDenoiserConfig
from training.models.unet import UNet, UNetConfig
from training.onnx_export import onnx_session
from training.overrides import apply_overrides
from training.publish import Graph, latest_version


@dataclass
class DiffusionConfig:
    iterations: int = 4000  # at batch 64 about 4 epochs; --max-minutes stops it earlier if slow
    batch_size: int = 64  # small batches, more updates: what a short CPU budget rewards
    learning_rate: float = 2e-3  # peak, after warmup; cosine decay to 10% over the run
    warmup: int = 100  # iterations of linear warmup
    label_dropout: float = 0.1  # share of labels replaced by the null label (guidance)
    ema_decay: float = 0.998  # ~500-iteration average of the weights, what gets exported
    schedule: str = "cosine"  # noise schedule: cosine or linear
    prediction: str = "epsilon"  # training target: epsilon or v (the graph outputs eps either way)
    bf16: bool = False  # bfloat16 autocast of the forward pass (2.2x faster on AVX512-BF16 CPUs)
    timesteps: int = 1000  # T
    default_steps: int = 25  # sampling steps the service uses when a request names none
    default_guidance: float = 3.0  # guidance scale the service uses when a request names none
    # sampler:steps[:guidance[:samples]] settings measured for the card, the first also drawn
    # in samples.png; an empty guidance is the default and an empty count is --eval-samples.
    # Guidance doubles the cost of a step, so the slowest settings get fewer samples (each row
    # of the card states its count).
    evaluate: tuple[str, ...] = (
        "ddim:25",
        "ddim:10",
        "ddim:50",
        "ddpm:100::1000",
        "ddim:25:1.0",
        "ddim:25:5.0:1000",
    )
    log_every: int = 10  # iterations between loss records
    checkpoint_minutes: float = 0.0  # wall minutes between EMA checkpoints (0 = at the end only)
    notes: str = ""  # for the card's description: what this version changes, and why
    vae: Path | None = None  # latent diffusion: VAE version folder (default: latest vae-<dataset>)


def evaluation_settings(config: DiffusionConfig, samples: int) -> list[dict[str, Any]]:
    """--evaluate entries "sampler:steps[:guidance[:samples]]" (empty guidance = the default)."""
    settings = []
    for text in config.evaluate:
        parts = [*text.split(":"), "", ""]
        assert len(parts) <= 6 and parts[1], f"{text!r} is not sampler:steps[:guidance[:samples]]"
        settings.append(
            {
                "sampler": parts[0],
                "steps": int(parts[1]),
                "guidance": float(parts[2]) if parts[2] else config.default_guidance,
                "samples": int(parts[3]) if parts[3] else samples,
            }
        )
    return settings


# called with the EMA model, the loss history, the iterations done and the clock
Checkpointer = Callable[[EMA, History, int, Clock], object]


def train_denoiser(
    model: nn.Module,
    data: torch.Tensor,
    labels: torch.Tensor,
    null_label: int,
    config: DiffusionConfig,
    run: RunConfig,
    context: Distributed | None = None,
    checkpoint: Checkpointer | None = None,
) -> tuple[EMA, History, int, Clock]:
    """The DDPM loop over `data` (N, ...) in the diffusion's own scale. Returns the EMA model,
    the loss history, the iterations run and the clock (CPU and wall seconds).

    Under torchrun every rank draws the same global batch, timesteps and noise (one seeded
    generator) and trains on its share; DDP averages the gradients. `checkpoint` (rank 0's)
    is called every config.checkpoint_minutes of wall time."""
    context = context or Distributed()
    check_batch(config.batch_size, context)
    abar = torch.tensor(alphas_cumprod(schedule_parameters(config.schedule, config.timesteps)))
    abar = abar.float()
    model.to(context.device)
    trained = context.wrap(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    ema = EMA(model, config.ema_decay)
    history, clock = History(), Clock(config.iterations, run.max_minutes, context)
    generator = torch.Generator().manual_seed(run.seed)
    batches = random_batches(len(data), config.batch_size, generator)
    expand = (-1,) + (1,) * (data.dim() - 1)  # broadcast abar_t over the sample's axes
    bar = tqdm(
        total=config.iterations, desc="diffusion", mininterval=5, disable=not context.is_main
    )
    iteration = 0
    every_s = config.checkpoint_minutes * 60
    next_checkpoint = time.monotonic() + every_s
    model.train()
    while iteration < config.iterations and clock.progress(iteration) < 1.0:
        index = next(batches)
        x0, y = data[index], labels[index].clone()
        y[torch.rand(len(y), generator=generator) < config.label_dropout] = null_label
        t = torch.randint(0, config.timesteps, (len(x0),), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        x0, y, t, noise = (context.shard(v).to(context.device) for v in (x0, y, t, noise))
        a = abar.to(context.device)[t].view(expand)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise  # (B, ...) forward process in one jump
        target = training_target(config.prediction, x0, noise, a)
        with torch.autocast(context.device.type, torch.bfloat16, enabled=config.bf16):
            predicted = trained(x_t, t, y)
        loss = F.mse_loss(predicted.float(), target)
        for group in optimizer.param_groups:
            group["lr"] = clock.learning_rate(iteration, config.learning_rate, config.warmup)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        ema.update(model, iteration)
        iteration += 1
        if iteration % config.log_every == 0 or iteration == 1:
            history.log(iteration, **ranks_mean(context, loss=loss.item()))
            bar.set_postfix(loss=f"{history.last_mean('loss'):.4f}")
        bar.update(1)
        if checkpoint is not None and every_s > 0 and time.monotonic() >= next_checkpoint:
            checkpoint(ema, history, iteration, clock)
            next_checkpoint = time.monotonic() + every_s
    bar.close()
    ema.model.cpu()
    return ema, history, iteration, clock


def denoising_options(config: DiffusionConfig) -> dict[str, Any]:
    """The schedule and sampler defaults of config.json's `generation` section."""
    return {
        "schedule": schedule_parameters(config.schedule, config.timesteps),
        "steps": config.default_steps,
        "guidance": config.default_guidance,
    }


# ---------------------------------------------------------------------------------------------
# Pixel-space diffusion


def train_pixel(
    run: RunConfig, config: DiffusionConfig, unet: UNetConfig, context: Distributed
) -> Path | None:
    start(run)
    data = load_image_data(run.dataset, run.data_dir, run.train_subset)
    unet.num_classes = len(data.labels)
    x, y = data.train_tensors()
    model = UNet(unet)
    if context.is_main:
        print(f"U-Net: {parameter_count(model):,} parameters; {len(x):,} training images")
    path = run.runs_dir / model_name("diffusion", data.name) / "ckpt.pt"

    def save(ema: EMA, history: History, iterations: int, clock: Clock) -> Path:
        return save_checkpoint(
            path,
            model_config=asdict(unet),
            state_dict=ema.model.state_dict(),
            train_config=asdict(config),
            history={"iterations": history.iterations, **history.series},
            iterations=iterations,
            seconds=clock.elapsed(),
            wall_seconds=clock.wall(),
        )

    checkpoint = save if context.is_main else None
    ema, history, iterations, clock = train_denoiser(
        model, x * 2 - 1, y, unet.num_classes, config, run, context, checkpoint
    )
    if not context.is_main:
        return None  # rank 0 exports and publishes
    return export_pixel(run, config, data, save(ema, history, iterations, clock))


def export_pixel(
    run: RunConfig, config: DiffusionConfig, data: ImageData, checkpoint: Path
) -> Path:
    """Rebuild the EMA U-Net from the checkpoint, export one denoising step, evaluate, publish."""
    saved = load_checkpoint(checkpoint)
    unet = UNetConfig(
        **{**saved["model_config"], "channels": tuple(saved["model_config"]["channels"])}
    )
    model = UNet(unet)
    model.load_state_dict(saved["state_dict"])
    model.eval()
    name = f"diffusion-{data.name}"
    x, y = data.train_tensors()
    abar = torch.tensor(
        alphas_cumprod(schedule_parameters(config.schedule, config.timesteps))
    ).float()
    t = torch.randint(0, config.timesteps, (64,))
    noise = torch.randn(64, 1, 28, 28)
    a = abar[t].view(-1, 1, 1, 1)
    check = {"x_t": a.sqrt() * (x[:64] * 2 - 1) + (1 - a).sqrt() * noise, "t": t, "label": y[:64]}
    predictor = noise_predictor(model, config.prediction, abar)  # outputs eps whatever the target
    graph = Graph("model.onnx", predictor, first(check, 2), ["noise"], check)
    history = History(saved["history"]["iterations"], {"loss": saved["history"]["loss"]})
    title = f"{name}: {config.prediction}-prediction MSE"

    def write_files(staging: Path) -> None:
        plot_curves(history, staging / "curves.png", title, [["loss"]])

    num_classes = unet.num_classes
    config_json = base_config(
        "diffusion",
        data,
        [
            tensor_spec("x_t", "FP32", [1, 28, 28]),
            tensor_spec("t", "INT64", []),
            tensor_spec("label", "INT64", []),
        ],
        [tensor_spec("noise", "FP32", [1, 28, 28])],
    )
    config_json["generation"] = pixel_diffusion_generation(num_classes, **denoising_options(config))
    card = {
        "description": "Class-conditional DDPM U-Net, one denoising step per ONNX call that "
        f"outputs the noise (trained to predict {config.prediction}); DDIM/DDPM sampling with "
        f"classifier-free guidance runs in the service. {config.notes}".strip(),
        "training": {
            **training_summary(saved, asdict(config) | {"vae": None}, model),
            "final_loss": history.last_mean("loss"),
        },
    }
    return publish_release(
        run,
        "diffusion",
        data,
        [graph],
        config_json,
        card,
        evaluation_settings(config, run.eval_samples),
        write_files,
        "64 noised training images",
    )


# ---------------------------------------------------------------------------------------------
# Latent diffusion


def encode_with_vae(vae_dir: Path, data: ImageData, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and log-variance of every training image, from the shipped encoder.onnx."""
    session = onnx_session(vae_dir / "encoder.onnx", threads)
    x, y = data.train_tensors()
    means, log_variances = [], []
    for i in range(0, len(x), 1000):
        mean, log_variance = session.run(
            ["mean", "log_variance"],
            {"image": x[i : i + 1000].numpy(), "label": y[i : i + 1000].numpy()},
        )
        means.append(mean)
        log_variances.append(log_variance)
    return np.concatenate(means), np.concatenate(log_variances)


def latent_bound(latents: np.ndarray) -> float:
    """The sampler's bound on the predicted x_0 (config.json's clip_sample) for scaled latents:
    the 99.99th percentile of |value| in the training latents.

    The cosine schedule's last abar is ~2e-9, so the first step's x_0 estimate multiplies any
    error in the predicted noise by ~20,000; pixels are clipped to their range [-1, 1], and
    without the like for latents the samples came out as noise (class consistency 0.14).
    """
    return round(float(np.quantile(np.abs(latents), 0.9999)), 2)


def train_latent(
    run: RunConfig, config: DiffusionConfig, denoiser: LatentDenoiserConfig, context: Distributed
) -> Path | None:
    start(run)
    data = load_image_data(run.dataset, run.data_dir, run.train_subset)
    vae_dir = config.vae or latest_version(run.models_dir / f"vae-{data.name}")
    mean, log_variance = encode_with_vae(vae_dir, data, run.threads)
    # Diffuse posterior samples (what the decoder was trained on), scaled to unit variance so the
    # schedule's noise levels mean the same as for pixels (the role of Stable Diffusion's 0.18215).
    generator = np.random.default_rng(run.seed)
    samples = mean + np.exp(0.5 * log_variance) * generator.standard_normal(mean.shape)
    latent_scale = float(samples.std())
    denoiser.latent_dim = mean.shape[1]
    denoiser.num_classes = len(data.labels)
    model = LatentDenoiser(denoiser)
    if context.is_main:
        print(
            f"latent denoiser: {parameter_count(model):,} parameters; latents {mean.shape}, scale {latent_scale:.3f}"
        )
    latents = torch.from_numpy(samples / latent_scale).float()
    latent_clip = latent_bound(latents.numpy())
    y = torch.from_numpy(data.train_labels)
    ema, history, iterations, clock = train_denoiser(
        model, latents, y, denoiser.num_classes, config, run, context
    )
    if not context.is_main:
        return None  # rank 0 exports and publishes
    name = model_name("latent-diffusion", data.name)
    checkpoint = save_checkpoint(
        run.runs_dir / name / "ckpt.pt",
        model_config=asdict(denoiser),
        state_dict=ema.model.state_dict(),
        train_config=asdict(config) | {"vae": str(vae_dir)},
        history={"iterations": history.iterations, **history.series},
        iterations=iterations,
        seconds=clock.elapsed(),
        wall_seconds=clock.wall(),
        latent_scale=latent_scale,
        latent_clip=latent_clip,
        vae=str(vae_dir),
    )
    return export_latent(run, config, data, checkpoint)


def export_latent(
    run: RunConfig, config: DiffusionConfig, data: ImageData, checkpoint: Path
) -> Path:
    saved = load_checkpoint(checkpoint)
    denoiser = LatentDenoiserConfig(**saved["model_config"])
    model = LatentDenoiser(denoiser)
    model.load_state_dict(saved["state_dict"])
    model.eval()
    vae_dir = Path(saved["vae"])
    # that VAE version's own sections, not config.json's (the latest VAE's)
    vae_config = version_config(vae_dir, json.loads((vae_dir.parent / "config.json").read_text()))
    name = f"latent-diffusion-{data.name}"
    check = {
        "x_t": torch.randn(64, denoiser.latent_dim),
        "t": torch.randint(0, config.timesteps, (64,)),
        "label": torch.randint(0, denoiser.num_classes + 1, (64,)),
    }
    abar = torch.tensor(alphas_cumprod(schedule_parameters(config.schedule, config.timesteps)))
    predictor = noise_predictor(model, config.prediction, abar.float())
    graph = Graph("model.onnx", predictor, first(check, 2), ["noise"], check)
    history = History(saved["history"]["iterations"], {"loss": saved["history"]["loss"]})

    def write_files(staging: Path) -> None:
        shutil.copyfile(vae_dir / "decoder.onnx", staging / "decoder.onnx")  # self-contained
        plot_curves(history, staging / "curves.png", f"{name}: noise-prediction MSE", [["loss"]])

    num_classes = denoiser.num_classes
    latent = denoiser.latent_dim
    config_json = base_config(
        "latent-diffusion",
        data,
        [
            tensor_spec("x_t", "FP32", [latent]),
            tensor_spec("t", "INT64", []),
            tensor_spec("label", "INT64", []),
        ],
        [tensor_spec("noise", "FP32", [latent])],
    )
    config_json["graphs"] = {"decoder": "decoder.onnx"}
    config_json["generation"] = latent_diffusion_generation(
        latent,
        num_classes,
        vae=vae_config["generation"],
        clip_sample=saved["latent_clip"],
        latent_scale=saved["latent_scale"],
        **denoising_options(config),
    )
    card = {
        "description": "Class-conditional DDPM over the latents of the VAE below (residual MLP "
        "denoiser), decoded by that VAE's decoder (shipped here as decoder.onnx).",
        "vae": {
            "name": vae_config["name"],
            "version": int(vae_dir.name),
            "decoder_sha256": sha256_of(vae_dir / "decoder.onnx"),
        },
        "training": {
            **training_summary(saved, saved["train_config"], model),
            "final_loss": history.last_mean("loss"),
            "latent_scale": saved["latent_scale"],
            "latent_clip": saved["latent_clip"],
        },
    }
    return publish_release(
        run,
        "latent-diffusion",
        data,
        [graph],
        config_json,
        card,
        evaluation_settings(config, run.eval_samples),
        write_files,
        "64 random latents",
    )


# ---------------------------------------------------------------------------------------------
# Entry points


# the U-Net's steps cost ~2x version 1's: what version 2's card measured
PIXEL_EVALUATION = ("ddim:25", "ddim:10", "ddim:25:1.0:1000")


def parse(
    argv: list[str], latent: bool, trained: DiffusionConfig | None = None
) -> tuple[RunConfig, DiffusionConfig, UNetConfig | LatentDenoiserConfig]:
    """Options for one family; `trained` (a checkpoint's config) replaces the defaults."""
    defaults: tuple[RunConfig, DiffusionConfig, UNetConfig | LatentDenoiserConfig]
    if latent:
        # the latents are small and cheap: bigger batches, a shorter budget, and DDPM with
        # every one of the T steps measured too
        evaluate = ("ddim:25", "ddim:10", "ddim:50", "ddpm:100", "ddpm:1000::500")
        config = trained or DiffusionConfig(iterations=8000, batch_size=256, evaluate=evaluate)
        defaults = (RunConfig(max_minutes=6.0), config, LatentDenoiserConfig())
    else:
        # issue #15: v-prediction, a wider U-Net with attention at 7x7, bf16 and about an hour
        config = trained or DiffusionConfig(
            iterations=20000,
            learning_rate=1e-3,
            ema_decay=0.999,
            prediction="v",
            default_guidance=1.25,  # the best FCD that kept class consistency >= 0.99
            bf16=True,
            checkpoint_minutes=3.0,
            evaluate=PIXEL_EVALUATION,
        )
        unet = UNetConfig(channels=(24, 48, 96), embedding_dim=128, attention_heads=4)
        defaults = (RunConfig(max_minutes=52.0), config, unet)
    fixed = ("num_classes", "latent_dim")  # they follow from the data and the VAE
    parsed = apply_overrides(argv, *defaults, fixed=fixed)
    run, config, model = parsed[0], parsed[1], parsed[2]
    assert isinstance(run, RunConfig) and isinstance(config, DiffusionConfig)
    assert isinstance(model, UNetConfig | LatentDenoiserConfig)
    return run, config, model


def train(family: str, argv: list[str]) -> Path | None:
    """Train, export and publish; None on the ranks other than 0 under torchrun."""
    latent = family == "latent-diffusion"
    run, config, model = parse(argv, latent)

    def body(context: Distributed) -> Path | None:
        if isinstance(model, LatentDenoiserConfig):
            return train_latent(run, config, model, context)
        assert isinstance(model, UNetConfig)
        return train_pixel(run, config, model, context)

    return train_on_ranks(body)


def export(family: str, argv: list[str]) -> Path:
    """Re-export, re-measure and publish from the last checkpoint without training again."""
    latent = family == "latent-diffusion"
    run, _, _ = parse(argv, latent)
    data = load_image_data(run.dataset, run.data_dir, run.train_subset)
    checkpoint = run.runs_dir / model_name(family, data.name) / "ckpt.pt"
    saved = load_checkpoint(checkpoint)["train_config"]
    trained = DiffusionConfig(**{**saved, "evaluate": tuple(saved["evaluate"]), "vae": None})
    run, config, _ = parse(argv, latent, trained)
    if latent:
        return export_latent(run, config, data, checkpoint)
    return export_pixel(run, config, data, checkpoint)
