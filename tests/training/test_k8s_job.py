"""k8s/training: the Job runs a real training command that writes where the servers read, and the
servers poll that shared volume (hot reload)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import Settings
from training.classifiers import train_classifier as classify
from training.families import FAMILIES
from training.overrides import apply_overrides

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "k8s" / "training"
KUBECTL = ROOT / "build" / "deploy" / "venv" / "bin" / "kubectl"


def load(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((FOLDER / name).read_text()))


def mounts(container: dict[str, Any]) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}


def claims(pod: dict[str, Any]) -> dict[str, str]:
    return {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }


def test_the_job_runs_a_training_entry_point_into_the_shared_volume() -> None:
    job = load("job.yaml")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["command"]
    assert command[0] == "torchrun" and "--nproc_per_node=2" in command
    module_at = command.index("-m")
    assert command[module_at + 1 : module_at + 3] == ["training", "train"]
    family, argv = command[module_at + 3], command[module_at + 4 :]
    assert FAMILIES[family].group == "classifier"
    cfg, *_ = apply_overrides(argv, *classify.option_configs(family), fixed=classify.DATA_FIELDS)
    volume = {v: k for k, v in mounts(container).items()}[str(cfg.models_dir)]
    assert claims(pod)[volume] == load("pvc.yaml")["metadata"]["name"]
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] <= 1


def test_the_servers_read_and_poll_that_volume() -> None:
    patch = load("deployment-shared-models.yaml")["spec"]["template"]["spec"]
    (server,) = patch["containers"]
    base = (ROOT / "k8s" / "base" / "settings.env").read_text().splitlines()
    models_dir = next(
        line.split("=", 1)[1] for line in base if line.startswith("SEEDSERVE_MODELS_DIR")
    )
    volume = {v: k for k, v in mounts(server).items()}[models_dir]
    assert claims(patch)[volume] == load("pvc.yaml")["metadata"]["name"]
    (seed,) = patch["initContainers"]
    assert mounts(seed)["models"] in seed["command"][-1], "the init container fills the volume"
    (generator,) = load("kustomization.yaml")["configMapGenerator"]
    literals = dict(item.split("=", 1) for item in generator["literals"])
    assert (
        Settings(poll_interval_s=float(literals["SEEDSERVE_POLL_INTERVAL_S"])).poll_interval_s > 0
    )
    job_user = load("job.yaml")["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    server_pod = yaml.safe_load((ROOT / "k8s" / "base" / "deployment.yaml").read_text())
    assert job_user == server_pod["spec"]["template"]["spec"]["securityContext"]["runAsUser"]


def test_kustomize_renders_it() -> None:
    if not KUBECTL.exists():
        pytest.skip("kubectl is not installed (scripts/deploy_check.sh static installs it)")
    out = subprocess.run(
        [str(KUBECTL), "kustomize", str(FOLDER)], check=True, capture_output=True, text=True
    ).stdout
    kinds = {d["kind"]: d for d in yaml.safe_load_all(out) if d}
    assert {"Job", "PersistentVolumeClaim", "Deployment", "ConfigMap"} <= set(kinds)
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    assert [c["image"] for c in pod["initContainers"] + pod["containers"]] == [
        "seedserve:0.1.0"
    ] * 2
    assert kinds["ConfigMap"]["data"]["SEEDSERVE_POLL_INTERVAL_S"] == "30"
