"""Server processes under test: start, wait until ready, measure (CPU, RSS), check loopback, stop.

CPU time and memory are read from /proc for the whole process tree of the server (a JVM and its
Python workers, tritonserver and its backend stubs, uvicorn and its workers), so every system is
charged for all the processes it starts. Processes are only ever stopped by their own PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name (field 2) may contain spaces and parentheses: split after the last ")"
    return raw[raw.rindex(")") + 2 :].split()


def children_map() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def process_tree(root: int) -> list[int]:
    """`root` and every live descendant."""
    tree = children_map()
    pids, stack = [], [root]
    while stack:
        pid = stack.pop()
        if _stat_fields(pid) is None:
            continue
        pids.append(pid)
        stack.extend(tree.get(pid, []))
    return pids


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU of the processes, including their reaped children (cutime, cstime)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            # after the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
            total += sum(int(x) for x in fields[11:15])
    return total / CLOCK_TICKS


def rss_bytes(pids: Sequence[int]) -> int:
    """Sum of resident set sizes (shared pages of forked workers count once per process)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[21]) * PAGE_SIZE  # rss in pages
    return total


LOOPBACK_PREFIXES = ("127.", "[::1]", "::1", "[::ffff:127.", "::ffff:127.")


def _host(address: str) -> str:
    host, _, _port = address.rpartition(":")
    return host.split("%")[0]  # drop an interface suffix (127.0.0.1%lo)


def _is_loopback(host: str) -> bool:
    return host.startswith(LOOPBACK_PREFIXES)


def off_loopback_sockets(pids: Sequence[int]) -> list[str]:
    """Every TCP/UDP socket of these processes that listens or talks beyond loopback.

    A socket bound to 0.0.0.0 or [::] (every interface) counts: it could be reached from outside.
    """
    wanted = {f"pid={pid}," for pid in pids}
    problems = []
    for flags in ("-tanp", "-uanp"):
        out = subprocess.run(
            ["ss", "-H", flags], capture_output=True, text=True, check=True, timeout=10
        ).stdout
        for line in out.splitlines():
            if not any(w in line for w in wanted):
                continue
            parts = line.split()
            state, local, peer = parts[0], parts[3], parts[4]
            local_host, peer_host = _host(local), _host(peer)
            talks_out = state not in ("LISTEN", "UNCONN") and not _is_loopback(peer_host)
            if not _is_loopback(local_host) or talks_out:
                problems.append(line.strip())
    return problems


@dataclass
class Server:
    """One running system under test."""

    name: str
    url: str  # http://127.0.0.1:PORT
    process: subprocess.Popen[bytes]
    log_path: Path
    stop_hook: Callable[[Server], None] | None = None
    extra_pids: Callable[[], list[int]] | None = None  # processes started outside our tree
    notes: list[str] = field(default_factory=list)
    grpc: str = ""  # host:port of its gRPC inference endpoint, where it has one

    def pids(self) -> list[int]:
        pids = process_tree(self.process.pid)
        if self.extra_pids is not None:
            for pid in self.extra_pids():
                pids.extend(p for p in process_tree(pid) if p not in pids)
        return pids

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pids())

    def rss_bytes(self) -> int:
        return rss_bytes(self.pids())

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def start_server(
    name: str,
    argv: Sequence[str],
    ready_url: str,
    base_url: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = 120.0,
    ready: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200,
) -> Server:
    """Start `argv` and wait until GET `ready_url` satisfies `ready`; output goes to a log file."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = Server(name, base_url, process, log_path)
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"{name} exited with {process.returncode} before it was ready:\n{server.log_tail()}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if ready(httpx.get(ready_url, timeout=2.0)):
                return server
        if time.monotonic() > deadline:
            stop_server(server)
            raise TimeoutError(
                f"{name} was not ready after {timeout_s:.0f} s:\n{server.log_tail()}"
            )
        time.sleep(0.05)  # start-up time is reported: poll often


def _start_time(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[19] if fields is not None else None  # starttime: tells a reused PID apart


def stop_server(server: Server, grace_s: float = 30.0) -> None:
    """SIGTERM the server, wait, then SIGKILL whatever of its tree is left, each by PID."""
    pids = [(pid, _start_time(pid)) for pid in server.pids()]
    if server.stop_hook is not None:
        with contextlib.suppress(Exception):
            server.stop_hook(server)
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.process.wait(timeout=grace_s)
    for pid, started in pids:
        if started is not None and _start_time(pid) == started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if server.process.poll() is None:
        server.process.kill()
        server.process.wait()
