"""One repository state across the workers of `python -m service --workers N`.

Every load and unload (an admin call, or a decision of the repository poller) is appended to a
journal in the folder the workers share (`Settings.cluster_dir`); each worker applies the journal
in order and acknowledges how far it got, and an admin call answers once every live worker has.
Without a folder (one worker) the same calls apply locally and no file is written.

The folder holds:
  journal.jsonl     one operation a line, `{"seq": n, "op": "load"|"unload", "model": name}`,
                    appended under `flock` so sequence numbers are unique and in file order
  acks/<pid>-<id>   `{"seq": n, "failed": {"<seq>": error}}`: how far that worker got
                    (replaced atomically after each operation)
  poller.lock       held (`flock`) by the one worker that polls the repository
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import orjson

from service.errors import ModelNotFound, ServiceError
from service.polling import Operation, RegistryLike, RepositoryWatcher

log = logging.getLogger(__name__)
TAIL_INTERVAL_S = 0.05  # how often a worker looks for operations other workers appended
ACK_POLL_S = 0.02  # how often an admin call looks at the other workers' acknowledgements
KEPT_FAILURES = 32  # a worker's acknowledgement names its failures of this many latest operations


class DataPlaneLike(Protocol):
    @property
    def registry(self) -> RegistryLike: ...
    async def load(self, name: str) -> None: ...
    async def unload(self, name: str) -> None: ...


class WorkersOutOfStep(ServiceError):
    """Some live workers did not apply a load or unload in time, or failed where this one did
    not: the workers may now answer differently for that model until it is loaded again."""

    status_code = 503


@dataclass(frozen=True)
class Entry:
    seq: int
    op: Operation
    model: str


class Journal:
    """The append-only list of operations; each reader keeps its own offset."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0  # bytes of complete lines read so far

    def append(self, op: Operation, model: str) -> int:
        """Append one operation; returns its sequence number (one more than the last)."""
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            seq = _last_seq(fd) + 1
            os.write(fd, orjson.dumps({"seq": seq, "op": op, "model": model}) + b"\n")
        finally:
            os.close(fd)  # releases the lock
        return seq

    def last_seq(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return 0
        try:
            return _last_seq(fd)
        finally:
            os.close(fd)

    def read_new(self) -> list[Entry]:
        """The operations appended since the last call (a line still being written waits)."""
        try:
            size = self.path.stat().st_size  # the cheap look, every tail interval
        except FileNotFoundError:
            return []
        if size <= self._offset:
            return []
        with self.path.open("rb") as file:
            file.seek(self._offset)
            data = file.read(size - self._offset)
        complete = data.rfind(b"\n") + 1
        self._offset += complete
        return [e for line in data[:complete].splitlines() if (e := _parse(line)) is not None]


def _last_seq(fd: int) -> int:
    size = os.fstat(fd).st_size
    tail = os.pread(fd, 4096, max(0, size - 4096))  # a line is far shorter than this
    for line in reversed(tail.split(b"\n")):
        entry = _parse(line)
        if entry is not None:
            return entry.seq
    return 0


def _parse(line: bytes) -> Entry | None:
    if not line.strip():
        return None
    try:
        obj = orjson.loads(line)
        entry = Entry(int(obj["seq"]), obj["op"], str(obj["model"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        log.error("cluster journal: unreadable line %r", line[:200])
        return None
    if entry.op not in ("load", "unload"):
        log.error("cluster journal: unknown operation %r", entry.op)
        return None
    return entry


class Acks:
    """Each worker's acknowledged sequence number, one file per worker."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.worker = (
            f"{os.getpid()}-{secrets.token_hex(4)}"  # pid: liveness; token: one per object
        )
        self._failed: dict[int, str] = {}

    def write(self, seq: int, failure: str | None = None) -> None:
        if failure is not None:
            self._failed[seq] = failure
            for old in sorted(self._failed)[:-KEPT_FAILURES]:
                del self._failed[old]
        temporary = self.folder / f".{self.worker}.tmp"
        ack = {"seq": seq, "failed": self._failed}
        temporary.write_bytes(orjson.dumps(ack, option=orjson.OPT_NON_STR_KEYS))
        os.replace(temporary, self.folder / self.worker)

    def remove(self) -> None:
        (self.folder / self.worker).unlink(missing_ok=True)

    def survey(self, seq: int) -> tuple[list[str], dict[str, str]]:
        """The other live workers that have not reached `seq`, and those that failed it (with
        their errors). A dead worker's file is removed."""
        behind: list[str] = []
        failed: dict[str, str] = {}
        for path in sorted(self.folder.iterdir()):
            worker = path.name
            if worker.startswith(".") or worker == self.worker:
                continue
            if not _alive(worker):
                path.unlink(missing_ok=True)
                continue
            try:
                ack = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue  # it left just now
            if ack["seq"] < seq:
                behind.append(worker)
            elif str(seq) in ack["failed"]:
                failed[worker] = ack["failed"][str(seq)]
        return behind, failed


def _alive(worker: str) -> bool:
    pid_text = worker.partition("-")[0]
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: not ours to judge, count it
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill
    return stat.rpartition(")")[2].split()[0] != "Z"  # a zombie has exited, not yet been reaped


class Cluster:
    """Loads and unloads that apply on every worker; the repository poller, elected among them.

    Make it before the worker's initial load of the models and `start` it after: the journal's
    end at construction is what that load already reflects, later operations are applied again.
    """

    def __init__(
        self,
        dataplane: DataPlaneLike,
        folder: Path | None,
        poll_interval_s: float,
        *,
        timeout_s: float = 60.0,
    ) -> None:
        self.dataplane = dataplane
        self.poll_interval_s = poll_interval_s
        self.timeout_s = timeout_s  # how long an admin call waits for the other workers
        self._journal = Journal(folder / "journal.jsonl") if folder is not None else None
        self._acks = Acks(folder / "acks") if folder is not None else None
        self._poller_lock = folder / "poller.lock" if folder is not None else None
        self._poller_fd: int | None = None
        self._baseline = self._journal.last_seq() if self._journal is not None else 0
        self._waiters: dict[int, asyncio.Future[Exception | None]] = {}
        self._wake = asyncio.Event()
        self._local = asyncio.Lock()  # one worker: operations apply one at a time, as journaled
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def worker(self) -> str:
        """This worker's name in the folder (`<pid>-<id>`); "local" without one."""
        return self._acks.worker if self._acks is not None else "local"

    async def start(self) -> None:
        """Catch up with the journal, then follow it (and poll the repository if asked)."""
        if self._journal is not None and self._acks is not None:
            self._acks.write(0)  # live from now on: admin calls wait for this worker too
            entries = self._journal.read_new()
            earlier = {e.model: e for e in entries if e.seq <= self._baseline}  # last op each
            # The initial load read the disk after the earlier loads: only their unloads remain.
            todo = [e for e in earlier.values() if e.op == "unload"]
            todo += [e for e in entries if e.seq > self._baseline]
            for entry in sorted(todo, key=lambda e: e.seq):
                await self._apply(entry)
            self._acks.write(entries[-1].seq if entries else 0)
            self._tasks.append(asyncio.create_task(self._follow()))
        if self.poll_interval_s > 0:
            self._tasks.append(asyncio.create_task(self._poll()))

    async def load(self, name: str) -> None:
        """(Re)load `name` on every worker; this worker's error, if any, is raised."""
        await self._run("load", name, everywhere=True)

    async def unload(self, name: str) -> None:
        """Unload `name` on every worker (ModelNotFound if this worker has no such model)."""
        await self._run("unload", name, everywhere=True)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for waiter in self._waiters.values():
            waiter.cancel()
        if self._acks is not None:
            self._acks.remove()
        if self._poller_fd is not None:
            os.close(self._poller_fd)  # another worker takes the polling over
            self._poller_fd = None

    async def _run(self, op: Operation, name: str, *, everywhere: bool) -> None:
        if self._journal is None:
            async with self._local:
                error = await self._apply(Entry(0, op, name))
        else:
            assert self._tasks, "Cluster.start() first: nothing would apply the journal"
            seq = self._journal.append(op, name)
            waiter = asyncio.get_running_loop().create_future()
            self._waiters[seq] = waiter  # before any await: the tail cannot have passed seq yet
            self._wake.set()
            try:
                error = await waiter
            finally:
                self._waiters.pop(seq, None)
            if everywhere:
                await self._wait_for_workers(seq, op, name, error)
        if error is not None:
            raise error

    async def _apply(self, entry: Entry) -> Exception | None:
        """Apply one operation here; returns its error rather than raising it."""
        try:
            if entry.op == "load":
                await self.dataplane.load(entry.model)
            else:
                await self.dataplane.unload(entry.model)
        except ServiceError as exc:  # logged by the registry; the caller reports it
            error: Exception | None = exc
        except Exception as exc:
            log.exception("%s of model %s failed", entry.op, entry.model)
            error = exc
        else:
            error = None
        if self._acks is not None and entry.seq > 0:
            waiter = self._waiters.get(entry.seq)
            if waiter is not None and not waiter.done():
                waiter.set_result(error)
            # Unloading a model this worker already lacks is done, not failed.
            harmless = error is None or (entry.op == "unload" and isinstance(error, ModelNotFound))
            try:
                self._acks.write(entry.seq, None if harmless else str(error))
            except OSError:  # the next operation's acknowledgement covers this one too
                log.exception("acknowledging operation %d failed", entry.seq)
        return error

    async def _follow(self) -> None:
        """Apply, in order, what any worker appends to the journal."""
        assert self._journal is not None, "only with a cluster folder"
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TAIL_INTERVAL_S)
            self._wake.clear()
            try:
                entries = self._journal.read_new()
            except OSError:  # the file system failed us: try again next time
                log.exception("reading the cluster journal failed")
                continue
            for entry in entries:
                await self._apply(entry)

    async def _wait_for_workers(
        self, seq: int, op: Operation, name: str, local_error: Exception | None
    ) -> None:
        assert self._acks is not None, "only with a cluster folder"
        deadline = time.monotonic() + self.timeout_s
        while True:
            behind, failed = self._acks.survey(seq)
            if not behind:
                break
            if time.monotonic() >= deadline:
                here = f"; on this worker it failed: {local_error}" if local_error else ""
                raise WorkersOutOfStep(
                    f"{op} of model {name!r} was not applied within {self.timeout_s:g} s by "
                    f"worker(s) {', '.join(behind)} (named <pid>-<id>){here}"
                )
            await asyncio.sleep(ACK_POLL_S)
        if failed and local_error is None:
            errors = "; ".join(f"worker {w}: {e}" for w, e in failed.items())
            raise WorkersOutOfStep(f"{op} of model {name!r} applied here but failed on {errors}")

    async def _poll(self) -> None:
        """Triton's poll mode, done by one worker (the holder of poller.lock) for all."""
        watcher = RepositoryWatcher(self.dataplane.registry)
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                if not self._elected():
                    continue
                for op, name in await watcher.changes():
                    # A failure is logged by the registry; the watcher tries again on change.
                    with contextlib.suppress(ServiceError):
                        await self._run(op, name, everywhere=False)
            except Exception:
                log.exception("repository poll failed")

    def _elected(self) -> bool:
        """Whether this worker polls: it holds poller.lock (tried without blocking)."""
        if self._poller_lock is None or self._poller_fd is not None:
            return True
        fd = os.open(self._poller_lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._poller_fd = fd  # held until close, or until this process dies
        log.info("this worker polls the repository for all", extra={"worker": self.worker})
        return True
