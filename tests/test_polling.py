"""service.polling: what the repository poller decides after each look at the disk."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace

from service.polling import Change, RepositoryWatcher
from service.repository import Repository


def loaded(*versions: int) -> SimpleNamespace:
    return SimpleNamespace(versions=dict.fromkeys(versions))


def touch_later(path: Path) -> None:
    """Write `path` with a modification time clearly after any earlier one."""
    path.write_text("{}")
    stamp = path.stat().st_mtime_ns + 10**9
    os.utime(path, ns=(stamp, stamp))


def look(watcher: RepositoryWatcher) -> list[Change]:
    return asyncio.run(asyncio.wait_for(watcher.changes(), 10))


def test_new_models_versions_and_configs_are_loaded_and_gone_ones_unloaded(tmp_path: Path) -> None:
    for name in ("json", "pbtxt", "bare", "new"):
        (tmp_path / name / "1").mkdir(parents=True)
    (tmp_path / "json" / "config.json").write_text("{}")
    (tmp_path / "pbtxt" / "config.pbtxt").write_text("")
    models = {"json": loaded(1), "pbtxt": loaded(1), "bare": loaded(1), "old": loaded(3)}
    watcher = RepositoryWatcher(SimpleNamespace(repository=Repository(tmp_path), models=models))
    # loaded at start-up and unchanged: nothing; on disk, not loaded: load; loaded, gone: unload
    assert look(watcher) == [("unload", "old"), ("load", "new")]
    del models["old"]
    models["new"] = loaded(1)
    assert look(watcher) == []
    touch_later(tmp_path / "json" / "config.json")
    touch_later(tmp_path / "pbtxt" / "config.pbtxt")
    (tmp_path / "bare" / "2").mkdir()
    assert look(watcher) == [("load", "bare"), ("load", "json"), ("load", "pbtxt")]
    assert look(watcher) == []  # a load that failed is not tried again until the folder changes
    (tmp_path / "pbtxt" / "config.pbtxt").unlink()
    touch_later(tmp_path / "pbtxt" / "config.json")  # Triton's config replaced by ours
    assert look(watcher) == [("load", "pbtxt")]


def test_a_model_without_versions_is_tried_once(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    watcher = RepositoryWatcher(SimpleNamespace(repository=Repository(tmp_path), models={}))
    assert look(watcher) == [("load", "empty")]  # fails, and says why ("has no version folder")
    assert look(watcher) == []
    (tmp_path / "empty" / "1").mkdir()
    assert look(watcher) == [("load", "empty")]


def test_a_version_whose_files_come_after_its_folder_is_tried_again(tmp_path: Path) -> None:
    """A copy seen half-done (the version folder and config first, the graph later) fails to
    load; the files that follow make the watcher try again (found as a race in CI)."""
    (tmp_path / "model" / "1").mkdir(parents=True)
    (tmp_path / "model" / "config.json").write_text("{}")
    models = {"model": loaded(1)}
    watcher = RepositoryWatcher(SimpleNamespace(repository=Repository(tmp_path), models=models))
    assert look(watcher) == []
    (tmp_path / "model" / "2").mkdir()
    assert look(watcher) == [("load", "model")]  # no graph yet: this load fails
    assert look(watcher) == []
    (tmp_path / "model" / "2" / "model.onnx").write_bytes(b"half")
    assert look(watcher) == [("load", "model")]
    touch_later(tmp_path / "model" / "2" / "model.onnx")  # the rest of the bytes
    assert look(watcher) == [("load", "model")]
    assert look(watcher) == []
