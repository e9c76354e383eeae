"""Build each peer's virtual environment (idempotent; a marker records what it was built from)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

import onnxruntime

ROOT = Path(__file__).resolve().parents[2]
VENVS = ROOT / "build" / "bench-venvs"
ORT = f"onnxruntime=={onnxruntime.__version__}"

# Pins as in PEERS.md (the versions measured there); onnxruntime as in the service's venv.
REQUIREMENTS: dict[str, list[str]] = {
    "triton": ["nvidia-pytriton==0.7.0", ORT],
    "mlserver": ["mlserver==1.7.1", "uvloop==0.21.0", ORT],  # uvloop 0.23 crashes its worker
    "torchserve": [
        "torchserve==0.12.0",
        "torch-model-archiver==0.12.0",
        "pyyaml",  # an undeclared dependency of its worker
        "torch==2.13.0",
        ORT,
    ],
    "bentoml": ["bentoml==1.4.39", ORT],
}


def venv_dir(peer: str) -> Path:
    return VENVS / peer


def python(peer: str) -> Path:
    return venv_dir(peer) / "bin" / "python"


def _marker(peer: str) -> str:
    return hashlib.sha256("\n".join(REQUIREMENTS[peer]).encode()).hexdigest()[:16]


def installed(peer: str) -> bool:
    stamp = venv_dir(peer) / ".bench-installed"
    return stamp.exists() and stamp.read_text().strip() == _marker(peer)


def install(peer: str, log: Path | None = None) -> Path:
    """Create build/bench-venvs/<peer> with its pinned requirements; returns its python."""
    if installed(peer):
        return python(peer)
    target = venv_dir(peer)
    target.parent.mkdir(parents=True, exist_ok=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(target)
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    try:
        subprocess.run(
            [str(python(peer)), "-m", "pip", "install", "-q", *REQUIREMENTS[peer]],
            check=True,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    (target / ".bench-installed").write_text(_marker(peer))
    return python(peer)


if __name__ == "__main__":
    for name in sys.argv[1:] or list(REQUIREMENTS):
        print(name, install(name, VENVS / f"{name}-install.log"), flush=True)
