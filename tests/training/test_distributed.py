"""The same training entry point under torchrun with 2 CPU processes (gloo on loopback) matches the
single-process run: the global batches are the same and DDP averages the gradients."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers.live_server import free_port
from onnx import numpy_helper

from training.__main__ import main as training_main
from training.classifiers import train_classifier as classify
from training.distributed import Distributed, start

ROOT = Path(__file__).resolve().parents[2]
# a model without dropout or batch norm: the two runs differ only by floating-point summation order
ARGV = ["--dataset", "digits", "--epochs", "2", "--hidden", "32", "--dropout", "0"]
ARGV += ["--batch-size", "64", "--lr", "3e-3", "--verify-images", "100"]


def weights(version: Path) -> dict[str, np.ndarray]:
    graph = onnx.load(str(version / "model.onnx")).graph
    return {init.name: numpy_helper.to_array(init) for init in graph.initializer}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    single, double = tmp_path_factory.mktemp("single"), tmp_path_factory.mktemp("double")
    assert classify.main("train", "mlp", [*ARGV, "--models-dir", str(single)]) == 0
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        "-m", "training", "train", "mlp", *ARGV, "--models-dir", str(double),
    ]  # fmt: skip
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("published") == 1, "only rank 0 publishes"
    return single / "mlp-digits" / "1", double / "mlp-digits" / "1"


def test_two_processes_match_one(two_runs: tuple[Path, Path]) -> None:
    single, double = two_runs
    one, two = (json.loads((v / "card.json").read_text()) for v in two_runs)
    assert (one["training"]["ranks"], two["training"]["ranks"]) == (1, 2)
    for a, b in zip(one["training"]["history"], two["training"]["history"], strict=True):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], abs=1e-4), key
    assert one["metrics"]["test_accuracy"] == pytest.approx(
        two["metrics"]["test_accuracy"], abs=0.01
    )
    w1, w2 = weights(single), weights(double)
    assert w1.keys() == w2.keys() and w1
    assert max(float(np.abs(w1[k] - w2[k]).max()) for k in w1) < 1e-4


def test_rank_zero_alone_writes(two_runs: tuple[Path, Path]) -> None:
    double = two_runs[1].parent.parent
    assert sorted(p.name for p in double.iterdir()) == ["mlp-digits"]
    assert sorted(p.name for p in (double / "mlp-digits").iterdir()) == ["1", "config.json"]


def test_without_torchrun_it_is_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    context = start()
    assert context == Distributed() and context.is_main and not context.enabled
    assert context.sum([1.5, 2.0]) == [1.5, 2.0]
    index = np.arange(10)
    shares = [Distributed(rank=r, world_size=3).shard(index).tolist() for r in range(3)]  # type: ignore[arg-type]
    assert shares == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


def test_families_without_ddp_refuse_several_ranks(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert training_main(["train", "ngram", "--dataset", "austen"]) == 2
    assert "start it without torchrun" in capsys.readouterr().err
