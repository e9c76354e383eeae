"""The V2 infer route as the running app serves it (service/fastpath.py, its one implementation):
answers, errors, keys and metrics as every other route gives them."""

from __future__ import annotations

import dataclasses
import gc
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers.onnx_builders import write_classifier, write_language_model

from service import fastpath
from service.app import create_app
from service.fastpath import INFER_PATH
from service.settings import Settings

IMAGE = np.linspace(0, 1, 784, dtype=np.float32).reshape(1, 1, 28, 28)
BODY = {"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32",
                    "data": IMAGE.ravel().tolist()}]}  # fmt: skip


def counted(client: TestClient, route: str, status: int) -> float:
    text = client.get("/metrics").text
    pattern = (
        r'seedserve_http_requests_total\{method="POST",route="'
        + re.escape(route)
        + rf'",status="{status}"\}} (\S+)'
    )
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize(
    ("path", "matches"),
    [
        ("/v2/models/m/infer", True),
        ("/v2/models/m/versions/3/infer", True),
        ("/v2/models/m/infer/", False),
        ("/v2/models/m/versions//infer", False),
        ("/v2/models/a/b/infer", False),
        ("/v2/models/m/ready", False),
    ],
)
def test_only_infer_paths_take_the_fast_path(path: str, matches: bool) -> None:
    assert bool(INFER_PATH.fullmatch(path)) is matches


def test_answers_and_metrics_match_the_documented_routes(client: TestClient) -> None:
    plain = client.post("/v2/models/linear-test/infer", json=BODY)
    versioned = client.post("/v2/models/linear-test/versions/1/infer", json=BODY)
    assert plain.status_code == versioned.status_code == 200
    assert plain.headers["content-type"] == "application/json"
    assert len(plain.headers["x-request-id"]) == 32
    assert plain.json()["outputs"] == versioned.json()["outputs"]
    assert counted(client, "/v2/models/{model_name}/infer", 200) == 1
    assert counted(client, "/v2/models/{model_name}/versions/{model_version}/infer", 200) == 1
    missing = client.post("/v2/models/nope/infer", json=BODY)
    assert missing.status_code == 404 and "nope" in missing.json()["error"]
    assert counted(client, "/v2/models/{model_name}/infer", 404) == 1
    # other methods on the path are FastAPI's: 405, not an inference
    assert client.get("/v2/models/linear-test/infer").status_code == 405


def test_an_unexpected_failure_is_a_json_500_and_the_server_goes_on(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataplane = client.app.state.dataplane  # type: ignore[attr-defined]
    original = dataplane.infer_request

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(dataplane, "infer_request", broken)
    answer = client.post("/v2/models/linear-test/infer", json=BODY)
    assert answer.status_code == 500
    assert answer.json() == {"error": "internal server error"}
    assert "injected" not in answer.text  # internals stay in the log
    monkeypatch.setattr(dataplane, "infer_request", original)
    assert client.post("/v2/models/linear-test/infer", json=BODY).status_code == 200


def test_api_key_is_checked_on_the_fast_path(models_dir: Path) -> None:
    settings = Settings(models_dir=models_dir, access_log=False, api_key="k" * 24)
    with TestClient(create_app(settings)) as client:
        refused = client.post("/v2/models/linear-test/infer", json=BODY)
        assert refused.status_code == 401 and "API key" in refused.json()["error"]
        good = {"Authorization": "Bearer " + "k" * 24}
        assert client.post("/v2/models/linear-test/infer", json=BODY, headers=good).is_success


def test_overloaded_answers_carry_retry_after(models_dir: Path) -> None:
    settings = Settings(models_dir=models_dir, access_log=False)
    with TestClient(create_app(settings)) as client:
        app = client.app
        model = app.state.registry.get("linear-test", None)  # type: ignore[attr-defined]
        batcher = model.batcher
        assert batcher is not None, "linear-test batches by default"
        batcher.policy = dataclasses.replace(batcher.policy, max_queue_size=0)
        answer = client.post("/v2/models/linear-test/infer", json=BODY)
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "1"
        assert "queued" in answer.json()["error"]


def test_start_up_objects_are_frozen_while_serving_and_released_after(models_dir: Path) -> None:
    before = gc.get_freeze_count()
    with TestClient(create_app(Settings(models_dir=models_dir, access_log=False))) as client:
        assert gc.get_freeze_count() > before  # the loaded model among them
        assert client.post("/v2/models/linear-test/infer", json=BODY).status_code == 200
    assert gc.get_freeze_count() == 0
    off = Settings(models_dir=models_dir, access_log=False, gc_freeze=False)
    with TestClient(create_app(off)):
        assert gc.get_freeze_count() == 0


# ---------------------------------------------------------------------------------------------
# next-word: answered beside the framework when well-formed, by the framework's route otherwise

NEXT_WORD = "/v1/models/lm-test/next-word"
NEXT_WORD_ROUTE = "/v1/models/{model_name}/next-word"


@pytest.fixture
def lm_dir(tmp_path: Path) -> Path:
    root = tmp_path / "lm-models"
    write_language_model(root, "lm-test")
    write_classifier(root, "linear-test")
    return root


def served_both_ways(root: Path, **settings: object) -> tuple[TestClient, TestClient]:
    """The app as it runs, and the same app with its next-word and completions fast paths off
    (the framework's routes answer everything): what each answers must be the same."""
    fast = create_app(Settings(models_dir=root, access_log=False, **settings))  # type: ignore[arg-type]
    plain = create_app(Settings(models_dir=root, access_log=False, **settings))  # type: ignore[arg-type]
    plain.fast_next_word = None  # type: ignore[attr-defined]
    plain.fast_completions = None  # type: ignore[attr-defined]
    return TestClient(fast), TestClient(plain)


BAD_NEXT_WORD = [
    ("application/json", b'{"text": "the", "top_k": 3'),  # cut short
    ("application/json", b""),
    ("application/json", b"[1, 2]"),
    ("application/json", b'"the"'),
    ("application/json", b'{"text": 3}'),
    ("application/json", b'{"text": "the", "top_k": 0}'),
    ("application/json", b'{"text": "the", "top_k": 1000}'),  # over max_next_words
    ("application/json", b'{"text": "the", "extra": 1}'),
    ("application/json", b'{"text": "' + b"word " * 5000 + b'"}'),  # over the prompt limit
    ("text/plain", b'{"text": "the"}'),
    ("", b'{"text": "the"}'),
    ("application/x-www-form-urlencoded", b"text=the"),
]


def test_next_word_answers_as_the_framework_route(lm_dir: Path) -> None:
    fast, plain = served_both_ways(lm_dir)
    with fast, plain:
        for body in ({"text": "the cat", "top_k": 3}, {}, {"text": "zzz unknown words"}):
            got, want = fast.post(NEXT_WORD, json=body), plain.post(NEXT_WORD, json=body)
            assert got.status_code == want.status_code == 200, got.text
            assert got.json() == want.json()
            assert got.headers["content-type"] == "application/json"
            assert len(got.headers["x-request-id"]) == 32
        for path in ("/v1/models/nope/next-word", "/v1/models/linear-test/next-word"):
            got, want = fast.post(path, json={"text": "a"}), plain.post(path, json={"text": "a"})
            assert (got.status_code, got.json()) == (want.status_code, want.json())
            assert got.status_code in (400, 404)
        assert counted(fast, NEXT_WORD_ROUTE, 200) == 3
        assert counted(plain, NEXT_WORD_ROUTE, 200) == 3


@pytest.mark.parametrize(("content_type", "body"), BAD_NEXT_WORD)
def test_bad_next_word_requests_get_the_framework_route_errors(
    lm_dir: Path, content_type: str, body: bytes
) -> None:
    """A body that does not parse or validate goes, read already, to the framework's route:
    the same status and words as without the fast path, counted once under the route."""
    fast, plain = served_both_ways(lm_dir)
    headers = {"content-type": content_type} if content_type else {}
    with fast, plain:
        got = fast.post(NEXT_WORD, content=body, headers=headers)
        want = plain.post(NEXT_WORD, content=body, headers=headers)
        assert got.status_code == want.status_code and got.status_code in (400, 415, 422)
        assert got.json() == want.json()
        for client in (fast, plain):
            assert counted(client, NEXT_WORD_ROUTE, got.status_code) == 1


def test_next_word_keys_and_body_limit_as_the_framework_route(lm_dir: Path) -> None:
    fast, plain = served_both_ways(lm_dir, api_key="k" * 20, max_body_bytes=1024)
    with fast, plain:
        for headers, body in (
            ({}, b'{"text": "the"}'),  # no key
            ({"authorization": "Bearer " + "k" * 20}, b'{"text": "' + b"a" * 2000 + b'"}'),
            ({"authorization": "Bearer " + "k" * 20}, b'{"text": "the"}'),
        ):
            headers = {**headers, "content-type": "application/json"}
            got = fast.post(NEXT_WORD, content=body, headers=headers)
            want = plain.post(NEXT_WORD, content=body, headers=headers)
            assert (got.status_code, got.json()) == (want.status_code, want.json())
            assert got.status_code in (200, 401, 413)


# ---------------------------------------------------------------------------------------------
# completions: answered by the route's function beside the framework when the key is good and
# the body validates, by the framework's route otherwise

COMPLETIONS = "/v1/completions"


def choices(answer: dict[str, object]) -> dict[str, object]:
    """An answer without what differs between any two (its id and creation time)."""
    return {k: v for k, v in answer.items() if k not in ("id", "created")}


def events(text: str) -> list[object]:
    out: list[object] = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else choices(json.loads(data)))
    return out


def test_completions_answer_as_the_framework_route(
    lm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, plain = served_both_ways(lm_dir)
    beside: list[str] = []  # the completions the fast path answered itself
    route = fastpath.completions_route

    async def counting(body: Any, *args: Any) -> Any:
        beside.append(body.model)
        return await route(body, *args)

    monkeypatch.setattr(fastpath, "completions_route", counting)
    asks = [
        {"model": "lm-test", "prompt": "the cat", "max_tokens": 6, "seed": 1},
        {"model": "lm-test", "prompt": ["a", "the dog"], "max_tokens": 4, "n": 2, "seed": 2,
         "logprobs": 2, "echo": True},
        {"model": "lm-test", "prompt": "the", "max_tokens": 5, "seed": 3, "stream": True,
         "stream_options": {"include_usage": True}},
    ]  # fmt: skip
    with fast, plain:
        for ask in asks:
            got, want = fast.post(COMPLETIONS, json=ask), plain.post(COMPLETIONS, json=ask)
            assert got.status_code == want.status_code == 200, got.text
            assert got.headers["content-type"] == want.headers["content-type"]
            if ask.get("stream"):
                assert events(got.text) == events(want.text) and events(got.text)[-1] == "[DONE]"
            else:
                assert choices(got.json()) == choices(want.json())
            assert len(got.headers["x-request-id"]) == 32
        for ask in (
            {"model": "nope", "prompt": "a"},
            {"model": "linear-test", "prompt": "a"},
            {"model": "lm-test", "prompt": "a", "suffix": "b"},
            {"model": "lm-test", "prompt": "a", "max_tokens": 10**6},
        ):
            got, want = fast.post(COMPLETIONS, json=ask), plain.post(COMPLETIONS, json=ask)
            assert (got.status_code, got.json()) == (want.status_code, want.json())
            assert got.status_code in (400, 404) and "message" in got.json()["error"]
        assert counted(fast, COMPLETIONS, 200) == counted(plain, COMPLETIONS, 200) == 3
    # the plain app's went through the framework: only the fast app's, each once
    assert beside == ["lm-test"] * 3 + ["nope", "linear-test", "lm-test", "lm-test"]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'{"model": "lm-test", "prompt": "a"'),  # cut short
        ("application/json", b""),
        ("application/json", b"[1]"),
        ("application/json", b'{"prompt": "a"}'),  # no model
        ("application/json", b'{"model": "lm-test", "prompt": 3}'),
        ("application/json", b'{"model": "lm-test", "prompt": "a", "temperature": -1}'),
        ("application/json", b'{"model": "lm-test", "prompt": "a", "logprobs": NaN}'),
        ("text/plain", b'{"model": "lm-test", "prompt": "a"}'),
    ],
)
def test_bad_completions_get_the_framework_route_errors(
    lm_dir: Path, content_type: str, body: bytes
) -> None:
    fast, plain = served_both_ways(lm_dir)
    with fast, plain:
        got = fast.post(COMPLETIONS, content=body, headers={"content-type": content_type})
        want = plain.post(COMPLETIONS, content=body, headers={"content-type": content_type})
        assert got.status_code == want.status_code and got.status_code in (400, 415, 422)
        assert got.json() == want.json() and "message" in got.json()["error"]
        for client in (fast, plain):
            assert counted(client, COMPLETIONS, got.status_code) == 1


def test_completions_keys_and_body_limit_as_the_framework_route(lm_dir: Path) -> None:
    fast, plain = served_both_ways(lm_dir, api_key="k" * 20, max_body_bytes=1024)
    good = b'{"model": "lm-test", "prompt": "the", "max_tokens": 3, "seed": 5}'
    key = {"authorization": "Bearer " + "k" * 20}
    with fast, plain:
        for headers, body in (
            ({}, good),
            ({"authorization": "Bearer wrong"}, good),
            (key, b'{"model": "lm-test", "prompt": "' + b"a " * 1000 + b'"}'),
            (key, good),
        ):
            headers = {**headers, "content-type": "application/json"}
            got = fast.post(COMPLETIONS, content=body, headers=headers)
            want = plain.post(COMPLETIONS, content=body, headers=headers)
            assert got.status_code == want.status_code in (200, 401, 413)
            answer, expected = got.json(), want.json()
            assert (choices(answer), got.headers.get("www-authenticate")) == (
                choices(expected),
                want.headers.get("www-authenticate"),
            )
