"""The language-model and image-generator loops under torchrun with 2 CPU processes (gloo on
loopback) against the single-process run: each rank trains on its share of the same global
batches, DDP averages the gradients, and rank 0 alone publishes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.live_server import free_port
from test_distributed import weights

from training.generators.common import load_checkpoint
from training.generators.generator_commands import main as generate_main
from training.language_models import train_lm as lm

pytestmark = pytest.mark.slow  # two tiny trainings each, plus their ONNX exports

ROOT = Path(__file__).resolve().parents[2]
TEXT = "\n\n".join(
    f"Chapter {i}. Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy "
    f"disposition, seemed to unite some of the best blessings of existence; and had lived nearly "
    f"twenty-one years in the world with very little to distress or vex her."
    for i in range(40)
)
# no time budget (the steps alone decide the learning rate), no dropout, float32: the two runs
# differ only by the order of floating-point sums
LM_ARGV = ["--max-iters", "40", "--eval-interval", "20", "--warmup-iters", "5"]
LM_ARGV += ["--max-minutes", "0", "--dropout", "0", "--bf16", "false", "--learning-rate", "1e-2"]
LM_ARGV += ["--block-size", "16", "--batch-size", "8", "--vocab-size", "200"]
LM_ARGV += ["--adaptive-cutoffs", "20,60", "--n-embd", "16", "--hidden", "24", "--n-layer", "1"]
VAE_ARGV = ["--dataset", "digits", "--train-subset", "256", "--iterations", "20"]
VAE_ARGV += ["--batch-size", "32", "--eval-samples", "0", "--log-every", "5", "--warmup", "5"]


def torchrun(*argv: str) -> str:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "training", *argv,
    ]  # fmt: skip
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("published") == 1, "only rank 0 publishes"
    return done.stdout


def only_version_one(models: Path, name: str) -> Path:
    """Rank 0 alone wrote into the repository: one model, one version."""
    assert sorted(p.name for p in models.iterdir()) == [name]
    assert sorted(p.name for p in (models / name).iterdir()) == ["1", "config.json"]
    return models / name / "1"


@pytest.fixture(scope="module")
def lm_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("lm")
    text = tmp / "emma.txt"
    text.write_text(TEXT)
    common = [*LM_ARGV, "--text", str(text), "--checkpoint-dir", str(tmp / "runs")]
    assert lm.main("train", "lstm", [*common, "--models-dir", str(tmp / "one")]) == 0
    torchrun("train", "lstm", *common, "--models-dir", str(tmp / "two"))
    return tmp / "one" / "lstm-emma" / "1", only_version_one(tmp / "two", "lstm-emma")


def test_lm_two_processes_match_one(lm_runs: tuple[Path, Path]) -> None:
    one, two = (json.loads((v / "card.json").read_text()) for v in lm_runs)
    assert (one["training"]["config"]["ranks"], two["training"]["config"]["ranks"]) == (1, 2)
    assert one["training"]["iters_run"] == two["training"]["iters_run"] == 40
    history = one["training"]["history"], two["training"]["history"]
    assert [h["step"] for h in history[0]] == [h["step"] for h in history[1]] == [20, 40]
    for a, b in zip(*history, strict=True):
        for key in ("train_loss", "val_loss", "lr"):
            assert a[key] == pytest.approx(b[key], abs=1e-4), key
    assert history[0][-1]["train_loss"] < history[0][0]["train_loss"]  # it learned something
    assert one["metrics"]["test_perplexity"] == pytest.approx(
        two["metrics"]["test_perplexity"], rel=1e-3
    )
    w1, w2 = (weights(v) for v in lm_runs)
    assert w1.keys() == w2.keys() and w1
    assert max(float(abs(w1[k] - w2[k]).max()) for k in w1) < 1e-4


@pytest.fixture(scope="module")
def vae_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("vae")
    one = [*VAE_ARGV, "--models-dir", str(tmp / "one"), "--runs-dir", str(tmp / "runs1")]
    assert generate_main("train", "vae", one) == 0
    torchrun(
        "train",
        "vae",
        *VAE_ARGV,
        "--models-dir",
        str(tmp / "two"),
        "--runs-dir",
        str(tmp / "runs2"),
    )
    return tmp / "one" / "vae-digits" / "1", only_version_one(tmp / "two", "vae-digits")


def test_vae_two_processes_train_like_one(vae_runs: tuple[Path, Path]) -> None:
    """The posterior samples differ (one random stream per rank), so the weights do not match
    exactly; the same batches and averaged gradients give nearly the same losses."""
    one, two = (json.loads((v / "card.json").read_text()) for v in vae_runs)
    assert one["training"]["iterations"] == two["training"]["iterations"] == 20
    assert one["training"]["final_loss"] == pytest.approx(two["training"]["final_loss"], rel=0.1)
    elbo = [card["vae_metrics"]["test_negative_elbo_nats"] for card in (one, two)]
    assert elbo[0] == pytest.approx(elbo[1], rel=0.1)
    for version, runs in zip(vae_runs, ("runs1", "runs2"), strict=True):
        saved = load_checkpoint(version.parents[2] / runs / "vae-digits" / "ckpt.pt")
        logged = saved["history"]
        assert logged["iterations"] == [1, 5, 10, 15, 20]
        assert logged["loss"][-1] < 0.6 * logged["loss"][0]  # both learned
