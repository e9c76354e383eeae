"""service.cluster with a fake data plane: two or three `Cluster` objects on one folder stand for
the workers (one process, so each is named `<pid>-<id>` by its own id)."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from service.cluster import Cluster, WorkersOutOfStep
from service.errors import ModelLoadError, ModelNotFound


@dataclass
class FakeState:
    versions: dict[int, object]


class FakeRepository:
    def __init__(self, root: Path) -> None:
        self.root = root

    def model_names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def model_dir(self, name: str) -> Path:
        if not (self.root / name).is_dir():
            raise ModelNotFound(f"model {name!r} is not in the repository")
        return self.root / name

    def versions(self, name: str) -> list[int]:
        return sorted(int(p.name) for p in self.model_dir(name).iterdir() if p.name.isdigit())


@dataclass
class FakeRegistry:
    repository: FakeRepository
    models: dict[str, FakeState] = field(default_factory=dict)


class FakeDataPlane:
    """Loads the newest version folder of a model; `broken` models fail to load; `gate`, when
    set, holds every operation until it opens."""

    def __init__(self, root: Path, broken: tuple[str, ...] = ()) -> None:
        self.registry = FakeRegistry(FakeRepository(root))
        self.broken = set(broken)
        self.gate: asyncio.Event | None = None
        for name in self.registry.repository.model_names():  # the worker's initial load
            self.registry.models[name] = FakeState(
                {max(self.registry.repository.versions(name)): 1}
            )

    async def load(self, name: str) -> None:
        if self.gate is not None:
            await self.gate.wait()
        versions = self.registry.repository.versions(name)
        if name in self.broken or not versions:
            raise ModelLoadError(f"model {name!r} is broken on this worker")
        self.registry.models[name] = FakeState({max(versions): 1})

    async def unload(self, name: str) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.registry.models.pop(name, None) is None:
            raise ModelNotFound(f"model {name!r} is not loaded")

    def served(self) -> dict[str, list[int]]:
        return {n: sorted(s.versions) for n, s in self.registry.models.items()}


def add_model(root: Path, name: str, version: int = 1) -> None:
    (root / name / str(version)).mkdir(parents=True)


def journal(folder: Path) -> list[tuple[int, str, str]]:
    lines = (folder / "journal.jsonl").read_text().splitlines()
    return [(e["seq"], e["op"], e["model"]) for e in map(json.loads, lines)]


def run(main: Callable[[], Awaitable[None]], timeout: float = 20.0) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(main(), timeout)

    asyncio.run(bounded())


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    add_model(root, "a")
    add_model(root, "b")
    return root


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "cluster"


async def started(*clusters: Cluster) -> tuple[Cluster, ...]:
    for cluster in clusters:
        await cluster.start()
    return clusters


async def closed(*clusters: Cluster) -> None:
    for cluster in clusters:
        await cluster.close()


def test_unload_and_load_apply_on_every_worker_before_they_answer(repo: Path, folder: Path) -> None:
    async def main() -> None:
        one, two = FakeDataPlane(repo), FakeDataPlane(repo)
        c1, c2 = await started(Cluster(one, folder, 0), Cluster(two, folder, 0))
        await c1.unload("a")
        assert "a" not in two.served()  # no sleep: the answer came after the other worker applied
        add_model(repo, "a", 2)
        await c2.load("a")
        assert one.served()["a"] == [2]
        assert journal(folder) == [(1, "unload", "a"), (2, "load", "a")]
        await closed(c1, c2)
        assert (
            list((folder / "acks").iterdir()) == []
        )  # a worker that stops is no longer waited for

    run(main)


def test_a_worker_that_starts_later_replays_the_journal(repo: Path, folder: Path) -> None:
    async def main() -> None:
        one = FakeDataPlane(repo)
        (c1,) = await started(Cluster(one, folder, 0))
        await c1.unload("a")
        await c1.load("a")
        await c1.unload("b")
        # a restarted worker: its cluster is made, then it loads every model from disk, then starts
        late = FakeDataPlane(repo)
        c3 = Cluster(late, folder, 0)
        add_model(repo, "a", 2)
        await c1.load("a")  # while the late worker loads: not yet waited for, applied at its start
        await c3.start()
        assert late.served() == {"a": [2]}  # b stays unloaded; a's reload during its start-up ran
        await c1.unload("a")  # and now it is waited for
        assert late.served() == {}
        await closed(c1, c3)

    run(main)


def test_unloading_a_model_another_worker_lacks_is_no_failure(repo: Path, folder: Path) -> None:
    async def main() -> None:
        one, two = FakeDataPlane(repo), FakeDataPlane(repo)
        del two.registry.models["a"]
        c1, c2 = await started(Cluster(one, folder, 0), Cluster(two, folder, 0))
        await c1.unload("a")
        with pytest.raises(ModelNotFound):  # here it is reported, as with one worker
            await c1.unload("a")
        await closed(c1, c2)

    run(main)


def test_a_load_that_fails_on_another_worker_names_it(repo: Path, folder: Path) -> None:
    async def main() -> None:
        one, two = FakeDataPlane(repo), FakeDataPlane(repo, broken=("a",))
        c1, c2 = await started(Cluster(one, folder, 0), Cluster(two, folder, 0))
        add_model(repo, "a", 2)
        with pytest.raises(WorkersOutOfStep, match=f"failed on worker {c2.worker}: .*broken"):
            await c1.load("a")
        assert WorkersOutOfStep.status_code == 503
        assert one.served()["a"] == [2] and two.served()["a"] == [1]  # the old one kept serving
        one.broken.add("a")
        with pytest.raises(ModelLoadError, match="broken"):  # failed everywhere: the error itself
            await c1.load("a")
        await closed(c1, c2)

    run(main)


def test_a_live_worker_that_does_not_apply_in_time_is_named(repo: Path, folder: Path) -> None:
    async def main() -> None:
        one, two = FakeDataPlane(repo), FakeDataPlane(repo)
        c1 = Cluster(one, folder, 0, timeout_s=0.3)
        c2 = Cluster(two, folder, 0)
        await started(c1, c2)
        two.gate = asyncio.Event()  # the second worker is stuck
        with pytest.raises(WorkersOutOfStep, match=f"not applied within 0.3 s by .*{c2.worker}"):
            await c1.unload("a")
        assert "a" not in one.served()
        two.gate.set()
        await c1.unload("b")  # once it moves again it catches up, in order
        assert two.served() == {}
        await closed(c1, c2)

    run(main)


def test_dead_workers_are_not_waited_for(repo: Path, folder: Path) -> None:
    code = "import os; print(os.getpid())"
    finished = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    dead = f"{int(finished.stdout)}-deadbeef"

    async def main() -> None:
        c1 = Cluster(FakeDataPlane(repo), folder, 0, timeout_s=5)
        await c1.start()
        (folder / "acks" / dead).write_text('{"seq": 0, "failed": {}}')
        await asyncio.wait_for(c1.unload("a"), 1.0)
        assert not (folder / "acks" / dead).exists()  # its file is cleared away
        await c1.close()

    run(main)


def test_one_worker_polls_the_repository_for_all(
    repo: Path, folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.cluster")

    def pollers() -> list[str]:
        return [getattr(r, "worker", "") for r in caplog.records if "polls the" in r.message]

    async def main() -> None:
        one, two = FakeDataPlane(repo), FakeDataPlane(repo)
        c1, c2 = await started(Cluster(one, folder, 0.05), Cluster(two, folder, 0.05))
        add_model(repo, "c")
        await until(lambda: "c" in one.served() and "c" in two.served(), "both to load c")
        (repo / "b" / "1").rename(repo / "b" / "2")  # a new version
        await until(lambda: one.served()["b"] == two.served()["b"] == [2], "both to load b/2")
        (repo / "c").rename(tmp_path / "c")  # removed at once
        await until(lambda: "c" not in one.served() and "c" not in two.served(), "c to go")
        await asyncio.sleep(0.3)  # several more rounds: nothing else changed
        assert journal(folder) == [(1, "load", "c"), (2, "load", "b"), (3, "unload", "c")]
        assert pollers() == [c1.worker]  # the first to try
        await c1.close()
        add_model(repo, "d")
        await until(lambda: "d" in two.served(), "the other worker to take polling over")
        assert pollers() == [c1.worker, c2.worker]
        assert journal(folder)[-1][1:] == ("load", "d")
        await c2.close()

    run(main)


def test_without_a_folder_everything_is_local(repo: Path, tmp_path: Path) -> None:
    async def main() -> None:
        plane = FakeDataPlane(repo, broken=("b",))
        cluster = Cluster(plane, None, 0.05)
        await cluster.start()
        await cluster.unload("a")
        assert plane.served() == {"b": [1]}
        with pytest.raises(ModelNotFound):
            await cluster.unload("a")
        with pytest.raises(ModelLoadError):
            await cluster.load("b")
        add_model(repo, "c")
        await until(lambda: "c" in plane.served(), "the poller to load c")
        await cluster.close()

    run(main)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]  # no file written


async def until(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
