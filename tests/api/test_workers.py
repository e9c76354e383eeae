"""`python -m service --workers 2`: a load, an unload or a poll result applies on every worker,
whichever connection asked for it and whichever answers afterwards.

Each check opens fresh connections (a new client each), which the kernel hands to either worker.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from helpers.live_server import live_server
from helpers.shipped_models import copy_models

pytestmark = pytest.mark.slow  # two servers of two worker processes each

ADMIN = "workers-admin-key-0123456789"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
WORKERS = {"SEEDSERVE_WORKERS": "2", "SEEDSERVE_ADMIN_API_KEY": ADMIN}


def ready_statuses(url: str, model: str, connections: int = 20) -> list[int]:
    statuses = []
    for _ in range(connections):
        with httpx.Client(base_url=url, timeout=10) as client:
            statuses.append(client.get(f"/v2/models/{model}/ready").status_code)
    return statuses


def index_states(url: str, model: str, connections: int = 10) -> set[str]:
    states = set()
    for _ in range(connections):
        with httpx.Client(base_url=url, timeout=10, headers=ADMIN_HEADERS) as client:
            index = client.post("/v2/repository/index")
            assert index.status_code == 200, index.text
            states |= {entry["state"] for entry in index.json() if entry["name"] == model}
    return states


def admin(url: str, action: str, model: str) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=90, headers=ADMIN_HEADERS) as client:
        return client.post(f"/v2/repository/models/{model}/{action}")


def wait_for_every_connection(url: str, model: str, status: int, timeout: float = 60.0) -> None:
    """Until 20 fresh connections in a row answer `status` for the model's readiness."""
    deadline = time.monotonic() + timeout
    while (statuses := ready_statuses(url, model)) != [status] * 20:
        assert time.monotonic() < deadline, f"{model} ready answers stayed {sorted(statuses)}"
        time.sleep(0.2)


def move_in(name: str, repository: Path, staging: Path) -> None:
    """Add a shipped model to the repository at once (a poller never sees it half copied)."""
    copy_models([name], staging)
    (staging / name).rename(repository / name)


def test_load_and_unload_apply_on_every_worker(tmp_path: Path) -> None:
    repository = copy_models(["logreg-mnist"], tmp_path / "models")
    with live_server(repository, env=WORKERS, timeout=120) as server:
        url = server.url
        assert ready_statuses(url, "logreg-mnist") == [200] * 20

        assert admin(url, "unload", "logreg-mnist").status_code == 200
        assert ready_statuses(url, "logreg-mnist") == [404] * 20
        assert index_states(url, "logreg-mnist") == {"UNAVAILABLE"}

        assert admin(url, "load", "logreg-mnist").status_code == 200
        assert ready_statuses(url, "logreg-mnist") == [200] * 20
        assert index_states(url, "logreg-mnist") == {"READY"}

        move_in("mlp-mnist", repository, tmp_path / "staging")
        assert admin(url, "load", "mlp-mnist").status_code == 200
        assert ready_statuses(url, "mlp-mnist") == [200] * 20
    assert server.returncode == 0


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the workers in /proc")
def test_restarted_workers_replay_what_was_unloaded(tmp_path: Path) -> None:
    repository = copy_models(["logreg-mnist", "mlp-mnist"], tmp_path / "models")
    with live_server(repository, env=WORKERS, timeout=120) as server:
        url, parent = server.url, server.process.pid
        first = wait_for_workers(parent, lambda pids: len(pids) == 2)
        assert admin(url, "unload", "logreg-mnist").status_code == 200
        for pid in first:  # uvicorn starts a new worker in each one's place
            os.kill(pid, signal.SIGKILL)
        wait_for_workers(parent, lambda pids: len(pids) == 2 and not pids & first)
        deadline = time.monotonic() + 60
        while not server_ready(url):  # the old workers are gone: the new ones answer everything
            assert time.monotonic() < deadline, "the restarted workers did not become ready"
            time.sleep(0.2)
        assert ready_statuses(url, "logreg-mnist") == [404] * 20
        assert ready_statuses(url, "mlp-mnist") == [200] * 20
    assert server.returncode == 0


def server_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def wait_for_workers(parent: int, done: Callable[[set[int]], bool]) -> set[int]:
    deadline = time.monotonic() + 60
    while not done(pids := worker_pids(parent)):
        assert time.monotonic() < deadline, f"workers of {parent} stayed {pids}"
        time.sleep(0.1)
    return pids


def worker_pids(parent: int) -> set[int]:
    """The live uvicorn workers (multiprocessing spawn children) of the server process."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid = stat.read_text().rpartition(")")[2].split()[:2]
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if int(ppid) == parent and state != "Z" and b"spawn_main" in cmdline:
            pids.add(int(stat.parent.name))
    return pids


def test_one_worker_polls_and_every_worker_follows(tmp_path: Path) -> None:
    repository = copy_models(["logreg-mnist"], tmp_path / "models")
    env = {**WORKERS, "SEEDSERVE_POLL_INTERVAL_S": "0.2"}
    with live_server(repository, env=env, timeout=120) as server:
        url = server.url
        move_in("mlp-mnist", repository, tmp_path / "staging")
        wait_for_every_connection(url, "mlp-mnist", 200)

        (repository / "mlp-mnist").rename(tmp_path / "mlp-mnist-removed")
        wait_for_every_connection(url, "mlp-mnist", 404)

        # An unload with polling on stays an unload on every worker, round after round.
        assert admin(url, "unload", "logreg-mnist").status_code == 200
        time.sleep(1.0)  # five poll rounds
        assert ready_statuses(url, "logreg-mnist") == [404] * 20
        assert admin(url, "load", "logreg-mnist").status_code == 200
        assert ready_statuses(url, "logreg-mnist") == [200] * 20
    assert server.returncode == 0


ACCUMULATOR_PBTXT = """
max_batch_size: 8
sequence_batching {
  state [ { input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
}
"""


def test_a_sequence_continues_on_whichever_worker_answers(tmp_path: Path) -> None:
    """Sequences keep their state in files of the workers' shared folder: every step of one
    sequence, each on a fresh connection (either worker), adds to the same running sum, and
    two interleaved sequences do not mix."""
    from helpers import model_zoo

    root = tmp_path / "models"
    (model_zoo.stateful_accumulator(root) / "config.pbtxt").write_text(ACCUMULATOR_PBTXT)
    with live_server(root, WORKERS) as server:
        totals = {"a": 0.0, "b": 0.0}
        for step in range(12):
            for sequence in ("a", "b"):
                value = step + (1 if sequence == "a" else 100)
                totals[sequence] += value
                body = {
                    "inputs": [{"name": "INPUT", "shape": [1, 4], "datatype": "FP32",
                                "data": [value] * 4}],
                    "parameters": {"sequence_id": sequence, "sequence_start": step == 0,
                                   "sequence_end": step == 11},
                }  # fmt: skip
                with httpx.Client(base_url=server.url, timeout=10) as client:
                    answer = client.post("/v2/models/accumulator/infer", json=body)
                    assert answer.status_code == 200, answer.text
                assert answer.json()["outputs"][0]["data"] == [totals[sequence]] * 4
