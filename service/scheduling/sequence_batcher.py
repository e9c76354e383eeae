"""Implicit state of stateful models: the state keeper of Triton's sequence batcher.

A client sends the Open Inference Protocol parameters `sequence_id`, `sequence_start` and
`sequence_end`; the store keeps each live sequence's state (name -> array: what the graph's state
inputs are fed next), runs one sequence's requests one at a time in arrival order, frees the
state at `sequence_end` or after the model's idle time, and bounds the live sequences and the
bytes of their states per model version ("key", e.g. "mymodel/3").

    async with store.session(key, sequence_id, start, end) as slot:
        state = slot.state if slot.state is not None else initial_state()
        outputs, slot.state = run_step(state)  # kept only if the block succeeds

The caller must not change the arrays of `slot.state` in place: a failed step keeps them.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import time
import zipfile
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote

import numpy as np

from service.errors import InvalidInput, Overloaded
from service.modelconfig import SequenceBatching

SequenceId = int | str
State = dict[str, np.ndarray]
SWEEP_EVERY_S = 1.0  # idle sequences are also refused on access; sweeping only frees memory
MAX_ID_CHARS = 256


@dataclass(frozen=True)
class SequenceLimits:
    max_sequences: int  # live sequences per model version; more -> Overloaded
    max_state_bytes: int  # bytes of state per model version, all sequences; more -> Overloaded
    idle_s: float  # a sequence with no request for this long is freed

    def __post_init__(self) -> None:
        if self.max_sequences < 1 or self.max_state_bytes < 0 or self.idle_s <= 0:
            raise ValueError(f"sequence limits must be positive: {self}")

    @classmethod
    def for_model(
        cls, config: SequenceBatching, *, max_sequences: int, max_state_bytes: int
    ) -> SequenceLimits:
        """The limits of one model version: its config's idle time, the server's bounds."""
        return cls(max_sequences, max_state_bytes, config.max_sequence_idle_us / 1e6)


@dataclass(slots=True)
class SequenceSlot:
    """One request's turn in its sequence; set `state` to the state after the step."""

    sequence_id: SequenceId
    start: bool
    end: bool
    state: State | None  # None at `start`: the caller builds the initial state


class SequenceStore(Protocol):
    def configure(self, key: str, limits: SequenceLimits) -> None: ...
    def session(
        self, key: str, sequence_id: SequenceId, start: bool, end: bool
    ) -> AbstractAsyncContextManager[SequenceSlot]: ...
    def live(self, key: str) -> int: ...
    def state_bytes(self, key: str) -> int: ...
    async def sweep(self) -> int: ...
    async def drop(self, key: str) -> None: ...
    async def close(self) -> None: ...


def sequence_request(parameters: Mapping[str, Any]) -> tuple[SequenceId | None, bool, bool]:
    """(sequence_id, start, end) from request parameters; (None, False, False) outside a sequence."""
    flags = []
    for name in ("sequence_start", "sequence_end"):
        value = parameters.get(name, False)
        if not isinstance(value, bool):
            raise InvalidInput(f"{name} must be true or false, not {value!r}", param=name)
        flags.append(value)
    start, end = flags
    sequence_id = parameters.get("sequence_id")
    if isinstance(sequence_id, bool) or not isinstance(sequence_id, int | str | None):
        raise InvalidInput(
            f"sequence_id must be an integer or a string, not {sequence_id!r}", param="sequence_id"
        )
    if isinstance(sequence_id, int) and not 0 <= sequence_id < 2**64:
        raise InvalidInput("sequence_id must be an unsigned 64-bit integer", param="sequence_id")
    if isinstance(sequence_id, str) and not 0 < len(sequence_id) <= MAX_ID_CHARS:
        raise InvalidInput(
            f"sequence_id must have 1 to {MAX_ID_CHARS} characters", param="sequence_id"
        )
    if sequence_id is None or sequence_id == 0:  # 0: no sequence, as in Triton
        if start or end:
            raise InvalidInput(
                "sequence_start and sequence_end need a sequence_id (0 means none)",
                param="sequence_id",
            )
        return None, False, False
    return sequence_id, start, end


def _not_live(sequence_id: SequenceId, limits: SequenceLimits) -> InvalidInput:
    return InvalidInput(
        f"sequence {sequence_id!r} is not live: send sequence_start=true first"
        f" (it may have idled out after {limits.idle_s:g} s)",
        param="sequence_id",
    )


def _too_many(key: str, count: int) -> Overloaded:
    return Overloaded(f"model {key} has {count} live sequences, its limit; end one or retry later")


def _too_big(key: str, total: int, limits: SequenceLimits) -> Overloaded:
    return Overloaded(
        f"the sequence states of model {key} would hold {total} bytes, over its limit of"
        f" {limits.max_state_bytes}; end a sequence or retry later"
    )


def _nbytes(state: State) -> int:
    return sum(array.nbytes for array in state.values())


@dataclass(slots=True)
class _Queue:
    lock: asyncio.Lock
    users: int = 0  # requests holding or awaiting the lock


class _Turns:
    """What both stores share: limits per key, FIFO turns per sequence in this process."""

    def __init__(self, limits: SequenceLimits) -> None:
        self._default = limits
        self._limits: dict[str, SequenceLimits] = {}
        self._waiting: dict[tuple[str, SequenceId], _Queue] = {}
        self._last_sweep = time.monotonic()
        self._sweeper: asyncio.Task[int] | None = None

    def configure(self, key: str, limits: SequenceLimits) -> None:
        """Limits of one model version (the store's default ones until then)."""
        self._limits[key] = limits

    def limits(self, key: str) -> SequenceLimits:
        return self._limits.get(key, self._default)

    @asynccontextmanager
    async def turn(self, key: str, sequence_id: SequenceId) -> AsyncIterator[None]:
        """Wait for the earlier requests of this sequence (asyncio.Lock wakes waiters FIFO)."""
        queue = self._waiting.setdefault((key, sequence_id), _Queue(asyncio.Lock()))
        queue.users += 1
        try:
            async with queue.lock:
                self._sweep_if_due()
                yield
        finally:
            queue.users -= 1
            if not queue.users:
                del self._waiting[key, sequence_id]

    def _sweep_if_due(self) -> None:
        busy = self._sweeper is not None and not self._sweeper.done()
        if not busy and time.monotonic() - self._last_sweep >= SWEEP_EVERY_S:
            self._last_sweep = time.monotonic()
            self._sweeper = asyncio.create_task(self.sweep())  # in the background: no waiting

    async def sweep(self) -> int:
        raise NotImplementedError

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()


@dataclass(slots=True)
class _Live:
    state: State
    nbytes: int
    last_used: float  # time.monotonic() when its last request ended


@dataclass(slots=True)
class _Model:
    sequences: dict[SequenceId, _Live]
    nbytes: int = 0

    def free(self, sequence_id: SequenceId) -> None:
        live = self.sequences.pop(sequence_id, None)
        if live is not None:
            self.nbytes -= live.nbytes


class MemoryStore(_Turns):
    """States in this process's memory (one server worker); arrays are kept, never copied."""

    def __init__(self, limits: SequenceLimits) -> None:
        super().__init__(limits)
        self._models: dict[str, _Model] = {}

    def live(self, key: str) -> int:
        return len(self._models[key].sequences) if key in self._models else 0

    def state_bytes(self, key: str) -> int:
        return self._models[key].nbytes if key in self._models else 0

    @asynccontextmanager
    async def session(
        self, key: str, sequence_id: SequenceId, start: bool, end: bool
    ) -> AsyncIterator[SequenceSlot]:
        limits = self.limits(key)
        async with self.turn(key, sequence_id):
            model = self._models.setdefault(key, _Model({}))  # dropped meanwhile: a stale one
            live = model.sequences.get(sequence_id)
            if live is not None and time.monotonic() - live.last_used > limits.idle_s:
                model.free(sequence_id)
                live = None
            if start and live is None and len(model.sequences) >= limits.max_sequences:
                self._sweep_key(key)
                if len(model.sequences) >= limits.max_sequences:
                    raise _too_many(key, len(model.sequences))
            if not start and live is None:
                raise _not_live(sequence_id, limits)
            state = None if live is None or start else live.state
            slot = SequenceSlot(sequence_id, start, end, state)
            try:
                yield slot
            finally:
                if live is not None:
                    live.last_used = time.monotonic()
            self._commit(key, model, slot, limits)

    def _commit(self, key: str, model: _Model, slot: SequenceSlot, limits: SequenceLimits) -> None:
        current = model.sequences.get(slot.sequence_id)
        if slot.end or (current is None and not slot.start):  # ended, or dropped meanwhile
            model.free(slot.sequence_id)
            return
        if current is None and len(model.sequences) >= limits.max_sequences:
            raise _too_many(key, len(model.sequences))
        state = slot.state if slot.state is not None else {}
        size = _nbytes(state)
        total = model.nbytes - (current.nbytes if current else 0) + size
        if total > limits.max_state_bytes:
            raise _too_big(key, total, limits)
        model.sequences[slot.sequence_id] = _Live(state, size, time.monotonic())
        model.nbytes = total

    def _sweep_key(self, key: str) -> int:
        model, idle_s, now = self._models.get(key), self.limits(key).idle_s, time.monotonic()
        if model is None:
            return 0
        idle = [
            sequence_id
            for sequence_id, live in model.sequences.items()
            if now - live.last_used > idle_s and (key, sequence_id) not in self._waiting
        ]
        for sequence_id in idle:
            model.free(sequence_id)
        return len(idle)

    async def sweep(self) -> int:
        return sum(self._sweep_key(key) for key in list(self._models))

    async def drop(self, key: str) -> None:
        model = self._models.pop(key, None)
        if model is not None:
            model.sequences.clear()  # requests in flight find their sequence gone

    async def close(self) -> None:
        await super().close()
        self._models.clear()


class FileStore(_Turns):
    """States in files under `folder` (a folder the worker processes share; a tmpfs is
    fastest), so that any worker can continue any sequence.

    Per model version a folder holds `<id hash>.<state bytes>.npz` per live sequence (its mtime is
    when its last request ended), `<id hash>.lock` that a request holds (flock) for its whole
    step, and `.key.lock` that guards the count/bytes check with the commit. States are written
    to a temporary file and renamed, so a crash leaves the previous state whole. Within a
    process a sequence's requests run in arrival order; across processes the order is best
    effort (flock is not FIFO), though still one at a time. No fsync: states need not outlive
    the server. `close()` leaves the files to the other workers.
    """

    def __init__(self, folder: Path, limits: SequenceLimits) -> None:
        super().__init__(limits)
        self.folder = folder

    def _key_folder(self, key: str) -> Path:
        folder = self.folder / f"key={quote(key, safe='')}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def live(self, key: str) -> int:
        return len(_usage(self._key_folder(key)))

    def state_bytes(self, key: str) -> int:
        return sum(_usage(self._key_folder(key)).values())

    @asynccontextmanager
    async def session(
        self, key: str, sequence_id: SequenceId, start: bool, end: bool
    ) -> AsyncIterator[SequenceSlot]:
        limits, folder, name = self.limits(key), self._key_folder(key), _file_name(sequence_id)
        lock = folder / f"{name}.lock"
        async with self.turn(key, sequence_id), _flocked(lock):
            try:
                path = _state_file(folder, name)
                if path is not None and time.time() - path.stat().st_mtime > limits.idle_s:
                    path.unlink(missing_ok=True)
                    path = None
                if start and path is None and len(_usage(folder)) >= limits.max_sequences:
                    await self._sweep_key(key, folder)
                    if (count := len(_usage(folder))) >= limits.max_sequences:
                        raise _too_many(key, count)
                if not start and path is None:
                    raise _not_live(sequence_id, limits)
                state = None if start or path is None else await asyncio.to_thread(_read, path)
                slot = SequenceSlot(sequence_id, start, end, state)
                try:
                    yield slot
                except BaseException:
                    if path is not None and path.exists():
                        os.utime(path)  # a request ended: the idle clock restarts
                    raise
                await self._commit(key, folder, name, path, slot, limits)
            finally:
                if _state_file(folder, name) is None:
                    lock.unlink(missing_ok=True)  # still ours: waiters see a new inode

    async def _commit(
        self,
        key: str,
        folder: Path,
        name: str,
        old: Path | None,
        slot: SequenceSlot,
        limits: SequenceLimits,
    ) -> None:
        if slot.end:
            if old is not None:
                old.unlink(missing_ok=True)
            return
        state = slot.state if slot.state is not None else {}
        size, tmp = _nbytes(state), folder / f"{name}.{os.getpid()}.tmp"
        await asyncio.to_thread(_write, tmp, state)
        try:
            async with _flocked(folder / ".key.lock"):
                was_live = old is not None and old.exists()  # not dropped meanwhile
                if not slot.start and not was_live:
                    return
                usage = _usage(folder)
                if not was_live and len(usage) >= limits.max_sequences:
                    raise _too_many(key, len(usage))
                total = sum(usage.values()) - usage.get(name, 0) + size
                if total > limits.max_state_bytes:
                    raise _too_big(key, total, limits)
                new = folder / f"{name}.{size}.npz"
                os.replace(tmp, new)
                if old is not None and old != new:
                    old.unlink(missing_ok=True)
        finally:
            tmp.unlink(missing_ok=True)

    async def _sweep_key(self, key: str, folder: Path) -> int:
        idle_s, freed = self.limits(key).idle_s, 0
        for name in _usage(folder):
            lock = folder / f"{name}.lock"
            fd = _try_lock(lock)
            if fd is None:  # a request is in flight
                continue
            try:
                path = _state_file(folder, name)
                if path is not None and time.time() - path.stat().st_mtime > idle_s:
                    path.unlink()
                    lock.unlink()
                    freed += 1
            finally:
                os.close(fd)
        return freed

    async def sweep(self) -> int:
        folders = [f for f in self.folder.glob("key=*") if f.is_dir()]
        return sum([await self._sweep_key(unquote(f.name[4:]), f) for f in folders])

    async def drop(self, key: str) -> None:
        """Free every sequence of `key`; a request in flight finds its sequence gone."""
        folder = self._key_folder(key)
        for path in folder.glob("*.npz"):
            path.unlink(missing_ok=True)
        for lock in folder.glob("*.lock"):
            fd = _try_lock(lock)
            if fd is not None:  # else in flight: that request removes it
                lock.unlink()
                os.close(fd)


def _file_name(sequence_id: SequenceId) -> str:
    """A file name for an id; 1 and "1" are different ids."""
    tagged = f"{type(sequence_id).__name__}:{sequence_id!r}"
    return hashlib.sha256(tagged.encode()).hexdigest()[:32]


def _usage(folder: Path) -> dict[str, int]:
    """Live sequences of a model version: id hash -> state bytes, from the file names."""
    usage = {}
    for entry in os.scandir(folder):
        name, _, rest = entry.name.partition(".")
        if rest.endswith(".npz"):
            usage[name] = int(rest.removesuffix(".npz"))
    return usage


def _state_file(folder: Path, name: str) -> Path | None:
    paths = sorted(folder.glob(f"{name}.*.npz"), key=lambda p: p.stat().st_mtime_ns)
    for stale in paths[:-1]:  # a crash between the rename and the unlink of a commit
        stale.unlink()
    return paths[-1] if paths else None


def _write(path: Path, state: State) -> None:
    with zipfile.ZipFile(path, "w") as archive:  # np.savez, without its keyword clashes
        for name, array in state.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)


def _read(path: Path) -> State:
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def _try_lock(path: Path) -> int | None:
    """A descriptor holding the flock on `path`, or None while someone else holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if not _same_file(fd, path):  # removed by its previous holder
        os.close(fd)
        return None
    return fd


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), path.stat())
    except FileNotFoundError:
        return False


@asynccontextmanager
async def _flocked(path: Path) -> AsyncIterator[None]:
    """Hold an exclusive flock on `path` (polled: no thread left blocked if cancelled)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        delay = 0.001
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, 0.02)
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            break
        os.close(fd)  # its holder removed it: lock the new one
    try:
        yield
    finally:
        os.close(fd)
