"""The real server process: the official tritonclient HTTP client, clean SIGTERM, no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from helpers.live_server import ROOT, live_server

tritonclient_http = pytest.importorskip("tritonclient.http")


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_round_trip(models_dir: Path, binary: bool) -> None:
    batch = np.random.default_rng(3).random((5, 1, 28, 28), dtype=np.float32)
    expected = ort.InferenceSession(str(models_dir / "linear-test" / "1" / "model.onnx")).run(
        None, {"image": batch}
    )
    with live_server(models_dir) as server:
        client = tritonclient_http.InferenceServerClient(server.url.removeprefix("http://"))
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("linear-test")
        meta = client.get_model_metadata("linear-test")
        assert meta["inputs"][0]["shape"] == [-1, 1, 28, 28]
        assert client.get_server_metadata()["name"] == "seedserve"
        infer_input = tritonclient_http.InferInput("image", list(batch.shape), "FP32")
        infer_input.set_data_from_numpy(batch, binary_data=binary)
        if binary:  # tritonclient's defaults: binary in, all outputs binary
            result = client.infer("linear-test", [infer_input])
        else:
            outputs = [
                tritonclient_http.InferRequestedOutput(n, binary_data=False)
                for n in ("logits", "probabilities")
            ]
            result = client.infer("linear-test", [infer_input], outputs=outputs)
        np.testing.assert_allclose(result.as_numpy("logits"), expected[0], rtol=1e-6)
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected[1], rtol=1e-6)
        with pytest.raises(tritonclient_http.InferenceServerException):
            client.infer("no-such-model", [infer_input])


def test_service_runs_without_torch(models_dir: Path) -> None:
    """The serving runtime must not need torch: block its import and serve a request."""
    code = f"""
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
from fastapi.testclient import TestClient
from service.app import create_app
from service.settings import Settings
with TestClient(create_app(Settings(models_dir={str(models_dir)!r}))) as client:
    r = client.post("/v1/models/linear-test/classify", json={{"pixels": [[0.0] * 28] * 28}})
    assert r.status_code == 200, r.text
assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_sigterm_exits_cleanly(models_dir: Path) -> None:
    with live_server(models_dir) as server:
        assert httpx.get(f"{server.url}/v2/health/live").status_code == 200
    assert server.returncode == 0


def test_several_workers_merge_their_metrics(models_dir: Path) -> None:
    env = {"SEEDSERVE_WORKERS": "2"}
    with live_server(models_dir, env=env) as server, httpx.Client(base_url=server.url) as client:
        for _ in range(20):
            client.post("/v1/models/linear-test/classify", json={"pixels": [[0.0] * 28] * 28})
        text = client.get("/metrics").text
    line = 'seedserve_http_requests_total{method="POST",route="/v1/models/{model_name}/classify",status="200"}'
    (sample,) = [row for row in text.splitlines() if row.startswith(line)]
    assert float(sample.split()[-1]) == 20.0  # whichever worker answered, all are counted
    assert server.returncode == 0
