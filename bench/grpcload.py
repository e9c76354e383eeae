"""gRPC load: Debian's `h2load` (nghttp2-client, C, one thread) sends a pre-built gRPC call.

A unary gRPC call is an HTTP/2 POST to `/<service>/<method>` with `content-type:
application/grpc` and `te: trailers`, whose body is the message framed by a 5-byte prefix (a
compression flag, then the big-endian length). h2load replays that body over HTTP/2 as wrk
replays the REST bodies over HTTP/1.1, at the same cost per request whichever server answers, so
REST-by-wrk and gRPC-by-h2load rows compare servers rather than client libraries. A Python
gRPC client would spend more CPU than the server it measures on these two cores.

h2load sees HTTP statuses, not `grpc-status` (a trailer): a call that failed still reads 200. So
every run also counts the response bytes: a failed call carries no message, and a run whose
data per response falls short of the expected answer's size is reported with those calls as
errors. Latency percentiles come from h2load's per-request log (`--log-file`).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from bench.loadgen import LoadResult, Request

INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
GRPC_HEADERS = {"content-type": "application/grpc", "te": "trailers"}


def h2load_available() -> bool:
    return shutil.which("h2load") is not None


def frame(message: bytes) -> bytes:
    """A gRPC message as it travels: uncompressed flag, 4-byte big-endian length, the bytes."""
    return struct.pack(">?I", False, len(message)) + message


def unframe(body: bytes) -> bytes:
    compressed, length = struct.unpack_from(">?I", body)
    assert not compressed, "the benchmark asks for no compression"
    return body[5 : 5 + length]


def grpc_request(message: bytes, answer_bytes: int) -> Request:
    """A ModelInfer call carrying `message` (a serialised ModelInferRequest); `answer_bytes` is
    what a successful answer carries at least (its raw output tensors)."""
    return Request("POST", INFER_PATH, frame(message), GRPC_HEADERS, "grpc", answer_bytes)


def run_h2load(
    address: str, request: Request, concurrency: int, duration_s: float, timeout_s: float = 60.0
) -> LoadResult:
    """`h2load -c<concurrency> -m1 -D<duration>`: one connection per concurrent call, as wrk
    runs one per concurrent request, after a one-second warm-up."""
    headers = dict(request.headers or {})
    answer_bytes = request.min_answer_bytes
    with tempfile.TemporaryDirectory(prefix="bench-h2load-") as tmp:
        body = Path(tmp) / "body"
        body.write_bytes(request.body)
        log = Path(tmp) / "log"
        seconds = max(1, round(duration_s))
        argv = ["h2load", "-t1", f"-c{concurrency}", "-m1", f"-D{seconds}"]
        argv += ["--warm-up-time=1", "-d", str(body), "--log-file", str(log)]
        argv += [f"-T{max(1, round(timeout_s))}"]
        for key, value in headers.items():
            argv += ["-H", f"{key}: {value}"]
        argv.append(f"http://{address}{request.path}")
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert process.stdout is not None
        output = process.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(process.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"h2load failed:\n{output}")
        latencies_us = _logged_latencies(log.read_text())
    done = _number(r"requests: \d+ total, \d+ started, (\d+) done", output)
    succeeded = _number(r"(\d+) succeeded", output)
    data = _number(r"traffic: .*, \S+ \((\d+)\) data", output)
    duration = float(seconds)  # what h2load measured: the calls after its warm-up
    # failed calls (grpc-status != 0) carry no message: count the shortfall of response bytes
    answered = min(succeeded, data // answer_bytes) if answer_bytes else succeeded
    ms = np.array(latencies_us, dtype=np.float64) / 1e3 if latencies_us else np.array([np.nan])
    return LoadResult(
        generator="h2load",
        concurrency=concurrency,
        duration_s=duration,
        requests=answered,
        errors=done - answered,
        rps=answered / duration if duration else 0.0,
        p50_ms=float(np.percentile(ms, 50)),
        p90_ms=float(np.percentile(ms, 90)),
        p99_ms=float(np.percentile(ms, 99)),
        mean_ms=float(ms.mean()),
        loadgen_cpu_s=usage.ru_utime + usage.ru_stime,
    )


def _logged_latencies(log: str) -> list[int]:
    """h2load's log: one `start_us <TAB> status <TAB> duration_us` line per request."""
    latencies = []
    for line in log.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[1] == "200":
            latencies.append(int(parts[2]))
    return latencies


def _number(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"h2load output without {pattern!r}:\n{text}")
    return int(match.group(1))


def grpc_infer_request(model: str, tensor: np.ndarray, input_name: str = "image") -> Request:
    """ModelInfer with the FP32 tensor in `raw_input_contents`, every output asked for (what
    tritonclient.grpc sends by default)."""
    from tritonclient.grpc import service_pb2 as pb  # the bench's venv has tritonclient

    message = pb.ModelInferRequest(model_name=model)
    message.inputs.add(name=input_name, datatype="FP32", shape=tensor.shape)
    message.raw_input_contents.append(np.ascontiguousarray(tensor, dtype="<f4").tobytes())
    # the shipped classifiers answer logits and probabilities, 10 FP32 each per picture
    return grpc_request(message.SerializeToString(), len(tensor) * 2 * 10 * 4)


def grpc_probabilities(address: str, request: Request) -> np.ndarray:
    """Send the framed call once with grpcio; the `probabilities` output of its answer."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb

    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(request.path)  # bytes in, bytes out: no stubs needed
        answer = pb.ModelInferResponse.FromString(call(unframe(request.body), timeout=30))
    for output, raw in zip(answer.outputs, answer.raw_output_contents, strict=True):
        if output.name == "probabilities":
            return np.frombuffer(raw, dtype="<f4").reshape(tuple(output.shape))
    raise ValueError("no probabilities in the answer")
