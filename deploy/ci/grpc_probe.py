"""gRPC probe of a running deployment, for scripts/deploy_check.sh: the REST probes'
(scripts/deploy_probe.py) counterpart, run with the project's venv (tritonclient[grpc],
grpcio-health-checking).

  grpc_probe.py GRPC_ADDRESS SEEDSERVE_URL [--model NAME]

Over gRPC at GRPC_ADDRESS (127.0.0.1:PORT): grpc.health.v1 answers SERVING for "", for
inference.GRPCInferenceService and for "live"; `tritonclient.grpc` finds the server live and
ready, its metadata, the model ready with its metadata; one infer of the drawn 7 (prepared as the
server prepares a picture) returns probabilities that sum to 1, equal to REST's /v2 infer of the
same tensor at SEEDSERVE_URL, and the digit classifier reads a 7.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from service.tasks.image_preprocessing import ImageSpec, decode_image, preprocess

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 10.0
HEALTH_SERVICES = ("", "inference.GRPCInferenceService", "live")


def load_rest_probes() -> ModuleType:
    """scripts/deploy_probe.py: its drawn 7, its loopback-only HTTP and the digit model's name."""
    path = ROOT / "scripts" / "deploy_probe.py"
    spec = importlib.util.spec_from_file_location("deploy_probe", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rest = load_rest_probes()


def check_health(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in HEALTH_SERVICES:
            request = health_pb2.HealthCheckRequest(service=service)
            status = stub.Check(request, timeout=TIMEOUT_S).status
            name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
            assert status == health_pb2.HealthCheckResponse.SERVING, f"health {service!r}: {name}"
    print(f"grpc.health.v1 Check: SERVING for {', '.join(map(repr, HEALTH_SERVICES))}")


def drawn_seven(base: str, model: str) -> tuple[np.ndarray, list[str]]:
    """The drawn 7 as a (1, 1, H, W) batch, prepared with the model's own preprocessing (what REST
    does to an uploaded picture), and the model's labels."""
    status, config = rest.request(f"{base}/v2/models/{model}/config")
    assert status == 200, f"GET /v2/models/{model}/config: {status} {config}"
    gray = decode_image(rest.seven_png(), max_pixels=10**6)
    return preprocess(gray, ImageSpec.from_config(config["preprocessing"]))[None], config["labels"]


def rest_infer(base: str, model: str, batch: np.ndarray) -> np.ndarray:
    body = {
        "inputs": [
            {"name": "image", "shape": list(batch.shape), "datatype": "FP32",
             "data": batch.reshape(-1).tolist()}
        ],
        "outputs": [{"name": "probabilities"}],
    }  # fmt: skip
    status, answer = rest.request(
        f"{base}/v2/models/{model}/infer",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 200, f"REST infer: {status} {answer}"
    (output,) = answer["outputs"]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def check_inference(address: str, base: str, model: str) -> None:
    batch, labels = drawn_seven(base, model)
    with grpcclient.InferenceServerClient(address) as client:
        assert client.is_server_live(client_timeout=TIMEOUT_S), "ServerLive: not live"
        assert client.is_server_ready(client_timeout=TIMEOUT_S), "ServerReady: not ready"
        server: dict[str, Any] = client.get_server_metadata(as_json=True)
        assert server["name"] == "seedserve", server
        assert client.is_model_ready(model, client_timeout=TIMEOUT_S), f"{model} not ready"
        metadata: dict[str, Any] = client.get_model_metadata(model, as_json=True)
        (image,) = metadata["inputs"]
        assert [int(d) for d in image["shape"][1:]] == list(batch.shape[1:]), metadata
        tensor = grpcclient.InferInput(image["name"], list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        answer = client.infer(
            model,
            [tensor],
            outputs=[grpcclient.InferRequestedOutput("probabilities")],
            client_timeout=TIMEOUT_S,
        )
    probabilities = answer.as_numpy("probabilities")
    assert probabilities is not None, "no probabilities in the answer"
    assert probabilities.shape == (1, len(labels)), probabilities.shape
    assert (probabilities >= 0).all() and abs(float(probabilities.sum()) - 1.0) < 1e-4
    np.testing.assert_allclose(probabilities, rest_infer(base, model, batch), atol=1e-6)
    top = labels[int(probabilities.argmax())]
    assert model != rest.DIGITS or top == "7", f"{model} did not read the drawn 7: {top}"
    print(
        f"grpc {server['name']} {server['version']}: {model} inputs {image['shape']}, "
        f"infer -> {top} {float(probabilities.max()):.3f} (sum 1, equal to REST /v2 infer)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("address", help="127.0.0.1:PORT of seedserve's gRPC endpoint")
    parser.add_argument("url", help="http://127.0.0.1:PORT of seedserve's REST endpoint")
    parser.add_argument("--model", default=rest.DIGITS, help="an image classifier to ask")
    args = parser.parse_args()
    host = args.address.rsplit(":", 1)[0]
    assert host in {"127.0.0.1", "localhost", "[::1]"}, f"{args.address}: loopback only"
    try:
        check_health(args.address)
        check_inference(args.address, args.url.rstrip("/"), args.model)
    except (AssertionError, grpc.RpcError, InferenceServerException) as error:
        sys.exit(f"grpc probe: {error}")


if __name__ == "__main__":
    main()
