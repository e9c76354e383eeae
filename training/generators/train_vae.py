"""Train a class-conditional VAE on 28x28 images; ship decoder (model.onnx = decoder.onnx) and encoder.

    python -m training train vae --dataset mnist [--iterations 6000 --latent-dim 16 ...]
    torchrun --nproc_per_node 2 -m training train vae ...  # DDP: see training/generators/common.py

Loss: the negative ELBO, Bernoulli reconstruction (BCE over the 784 pixels) + KL(q(z|x,y) || N(0, I)).
The service samples z ~ N(0, I) and decodes it with the requested label; the encoder serves
reconstructions and gives latent diffusion its training latents.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from training.data.images import ImageData
from training.distributed import Distributed
from training.generators.common import (
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
from training.models.vae import VAE, VAEConfig, fit_class_prior
from training.publish import Graph


@dataclass
class VAETrainConfig:
    iterations: int = 8000  # at batch 128: about 17 epochs of MNIST
    batch_size: int = 128
    learning_rate: float = 2e-3  # peak, after warmup; cosine decay to 10%
    warmup: int = 100
    kl_weight: float = 1.0  # beta of a beta-VAE; 1 is the true ELBO
    log_every: int = 10


def train_model(
    run: RunConfig,
    config: VAETrainConfig,
    model_config: VAEConfig,
    data: ImageData,
    context: Distributed | None = None,
) -> Path | None:
    """The loop; the checkpoint's path on rank 0, None on the other ranks."""
    context = context or Distributed()
    check_batch(config.batch_size, context)
    x, y = data.train_tensors()
    model = VAE(model_config).to(context.device)
    if context.enabled:
        torch.manual_seed(run.seed + context.rank)  # each rank its own posterior samples
    trained = context.wrap_method(model, "loss")
    if context.is_main:
        print(f"VAE: {parameter_count(model):,} parameters; {len(x):,} training images")
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    history, clock = History(), Clock(config.iterations, run.max_minutes, context)
    generator = torch.Generator().manual_seed(run.seed)
    batches = random_batches(len(x), config.batch_size, generator)
    iteration = 0
    bar = tqdm(total=config.iterations, desc="vae", mininterval=5, disable=not context.is_main)
    while iteration < config.iterations and clock.progress(iteration) < 1.0:
        index = context.shard(next(batches))  # this rank's share of the global batch
        reconstruction, kl = trained(x[index].to(context.device), y[index].to(context.device))
        loss = reconstruction + config.kl_weight * kl
        for group in optimizer.param_groups:
            group["lr"] = clock.learning_rate(iteration, config.learning_rate, config.warmup)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        iteration += 1
        if iteration % config.log_every == 0 or iteration == 1:
            history.log(
                iteration,
                **ranks_mean(
                    context, reconstruction=reconstruction.item(), kl=kl.item(), loss=loss.item()
                ),
            )
            bar.set_postfix(loss=f"{history.last_mean('loss'):.1f}")
        bar.update(1)
    bar.close()
    if not context.is_main:
        return None
    return save_checkpoint(
        run.runs_dir / model_name("vae", data.name) / "ckpt.pt",
        model_config=asdict(model_config),
        state_dict=model.state_dict(),
        train_config=asdict(config),
        history={"iterations": history.iterations, **history.series},
        iterations=iteration,
        seconds=clock.elapsed(),
        wall_seconds=clock.wall(),
    )


@torch.no_grad()
def test_elbo(model: VAE, data: ImageData) -> dict[str, float]:
    """Negative ELBO terms on the test split, nats per image (one posterior sample each)."""
    torch.manual_seed(0)
    x = torch.from_numpy(data.test_images).float().div(255).unsqueeze(1)
    y = torch.from_numpy(data.test_labels)
    totals = torch.zeros(2)
    for i in range(0, len(x), 1000):
        reconstruction, kl = model.loss(x[i : i + 1000], y[i : i + 1000])
        totals += torch.stack([reconstruction, kl]) * len(x[i : i + 1000])
    reconstruction, kl = (totals / len(x)).tolist()
    return {
        "test_reconstruction_nats": reconstruction,
        "test_kl_nats": kl,
        "test_negative_elbo_nats": reconstruction + kl,
    }


def export_version(run: RunConfig, data: ImageData, checkpoint: Path) -> Path:
    saved = load_checkpoint(checkpoint)
    model_config = VAEConfig(
        **{**saved["model_config"], "channels": tuple(saved["model_config"]["channels"])}
    )
    model = VAE(model_config)
    model.load_state_dict(saved["state_dict"])
    model.eval()
    name = f"vae-{data.name}"
    x, y = data.train_tensors()
    latent = torch.randn(64, model_config.latent_dim)
    decoder_check = {"latent": latent, "label": y[:64]}
    encoder_check = {"image": x[:64], "label": y[:64]}
    graphs = [
        Graph("decoder.onnx", model.decoder, first(decoder_check, 2), ["image"], decoder_check),
        Graph(
            "encoder.onnx",
            model.encoder,
            first(encoder_check, 2),
            ["mean", "log_variance"],
            encoder_check,
        ),
    ]
    # a KL weight below 1 leaves latents that N(0, I) fits badly: sample from a Gaussian per
    # class fitted to them instead (prior.onnx; training/models/vae.py's ClassPrior)
    prior = saved["train_config"]["kl_weight"] < 1.0
    if prior:
        fitted = fit_class_prior(model.encoder, x, y, model_config.num_classes)
        prior_check = {"noise": latent, "label": y[:64]}
        graphs.append(Graph("prior.onnx", fitted, first(prior_check, 2), ["latent"], prior_check))
    history = History(
        saved["history"]["iterations"],
        {k: v for k, v in saved["history"].items() if k != "iterations"},
    )

    def write_files(staging: Path) -> None:
        # the primary graph is the generator: the decoder (the same file under both names)
        shutil.copyfile(staging / "decoder.onnx", staging / "model.onnx")
        title = f"{name}: negative ELBO (nats/image)"
        plot_curves(history, staging / "curves.png", title, [["loss", "reconstruction"], ["kl"]])

    latent_dim = model_config.latent_dim
    config = base_config(
        "vae",
        data,
        [tensor_spec("latent", "FP32", [latent_dim]), tensor_spec("label", "INT64", [])],
        [tensor_spec("image", "FP32", [1, 28, 28])],
    )
    config["graphs"] = {"decoder": "decoder.onnx", "encoder": "encoder.onnx"}
    if prior:
        config["graphs"]["prior"] = "prior.onnx"
    config["generation"] = decoder_generation(
        latent_dim, model_config.num_classes, encoder=True, prior=prior
    )
    card = {
        "description": "Class-conditional convolutional VAE. model.onnx (= decoder.onnx) maps a "
        "latent z ~ N(0, I) and a label to an image in [0, 1]; encoder.onnx maps an image in "
        "[0, 1] and its label to the posterior mean and log-variance."
        + (
            " prior.onnx maps noise ~ N(0, I) and a label to a latent of that class (a Gaussian "
            "per class fitted to the encoder's latents of the training images): the service "
            "samples through it."
            if prior
            else ""
        ),
        "training": {
            **training_summary(saved, saved["train_config"], model),
            "final_loss": history.last_mean("loss"),
        },
        "vae_metrics": test_elbo(model, data),
    }
    verified_on = "64 training images / random latents"
    return publish_release(run, "vae", data, graphs, config, card, None, write_files, verified_on)


def parse(argv: list[str]) -> tuple[RunConfig, VAETrainConfig, VAEConfig]:
    return decoder_family_options(argv, VAETrainConfig(), VAEConfig())


def train(family: str, argv: list[str]) -> Path | None:
    """Train, export and publish; None on the ranks other than 0 under torchrun."""
    return train_decoder_family(argv, parse, train_model, export_version)


def export(family: str, argv: list[str]) -> Path:
    """Re-export, re-measure and publish the last checkpoint without training again."""
    return export_decoder_family("vae", argv, parse, export_version)
