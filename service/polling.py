"""Triton's poll mode, as decisions: which models to load or unload after a look at the disk.

`RepositoryWatcher.changes()` says what changed since it last looked; `service.cluster` applies
its answer on every worker (only one worker watches, see there)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Protocol

from service.errors import ServiceError

Operation = Literal["load", "unload"]
Change = tuple[Operation, str]
# newest version, config.json and config.pbtxt mtimes (ns, 0 = none), and a digest of the
# version folders' files (their paths, sizes and mtimes)
Stamp = tuple[int, int, int, int]
CONFIG_FILES = ("config.json", "config.pbtxt")


class RepositoryLike(Protocol):
    def model_names(self) -> list[str]: ...
    def model_dir(self, name: str) -> Path: ...
    def versions(self, name: str) -> list[int]: ...


class ModelStateLike(Protocol):
    @property
    def versions(self) -> Mapping[int, object]: ...


class RegistryLike(Protocol):
    @property
    def repository(self) -> RepositoryLike: ...
    @property
    def models(self) -> Mapping[str, ModelStateLike]: ...


class RepositoryWatcher:
    """Load new models and new versions, reload changed configs, unload models whose folder is
    gone. A model whose load failed is tried again only once its folder changes again: a new
    version, a config, or any file of a version folder (one still being written, say)."""

    def __init__(self, registry: RegistryLike) -> None:
        self.registry = registry
        self._seen: dict[str, Stamp] = {}

    async def changes(self) -> list[Change]:
        registry = self.registry
        on_disk = set(registry.repository.model_names())
        found: list[Change] = [("unload", n) for n in sorted(set(registry.models) - on_disk)]
        for name in sorted(on_disk):
            stamp = await asyncio.to_thread(stamp_of, registry.repository, name)
            if stamp is None:
                continue  # removed since the listing: unloaded next round
            first = name not in self._seen
            if not first and self._seen[name] == stamp:
                continue
            self._seen[name] = stamp
            state = registry.models.get(name)
            if first and state is not None and stamp[0] == max(state.versions, default=-1):
                continue  # loaded at start-up (or by the watcher before this one), unchanged since
            found.append(("load", name))
        return found


def stamp_of(repository: RepositoryLike, name: str) -> Stamp | None:
    """What a reload depends on: the newest version on disk (-1: none), the config's
    modification time (whichever config file the folder has: ours, Triton's, or none) and the
    version folders' files, as Triton's poll mode compares them: a version whose files were
    still being written when a load failed is tried again once they change. None when the
    model's folder is gone."""
    try:
        folder = repository.model_dir(name)
        versions = repository.versions(name)
    except (ServiceError, OSError):  # gone, or going, while we looked
        return None
    json_mtime, pbtxt_mtime = (_mtime_ns(folder / f) for f in CONFIG_FILES)
    files = hash(tuple(_files(folder / str(v)) for v in versions))
    return (max(versions, default=-1), json_mtime, pbtxt_mtime, files)


def _files(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """(path, size, mtime) of every file under `folder`, in a stable order."""
    found = []
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            try:
                status = os.stat(path)
            except OSError:  # deleted while we looked
                continue
            found.append((path, status.st_size, status.st_mtime_ns))
    return tuple(sorted(found))


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:  # absent, or deleted while we looked
        return 0
