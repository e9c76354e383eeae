"""The shipped Austen language models served through the API: they load, predict sensible next
words, prefer Austen's sentence to the same words shuffled, and complete text reproducibly.
Skipped for a family whose model is not in models/ yet."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from shipped_models import AUSTEN_LMS, copy_models

from service.app import create_app
from service.settings import Settings

SHIPPED = AUSTEN_LMS
SENTENCE = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune"
)
SHUFFLED = (
    "fortune truth a possession It man a that good acknowledged is single of universally in a ,"
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    if not SHIPPED:
        pytest.skip("no Austen language model is shipped yet")
    # only the language models: loading stays quick
    root = copy_models(SHIPPED, tmp_path_factory.mktemp("austen") / "models")
    with TestClient(create_app(Settings(models_dir=root, access_log=False))) as test_client:
        yield test_client


def prompt_logprob(client: TestClient, model: str, text: str) -> float:
    body = {"model": model, "prompt": text, "max_tokens": 0, "echo": True, "logprobs": 0}
    answer = client.post("/v1/completions", json=body)
    assert answer.status_code == 200, answer.text
    return float(sum(answer.json()["choices"][0]["logprobs"]["token_logprobs"]))


@pytest.mark.parametrize("model", SHIPPED or ["none"])
def test_shipped_language_model_through_the_api(client: TestClient, model: str) -> None:
    listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert listed[model]["ready"] and listed[model]["task"] == "language-model"

    words = client.post(f"/v1/models/{model}/next-word", json={"text": "My dear Mr.", "top_k": 5})
    predictions = words.json()["predictions"]
    assert predictions[0]["word"][0].isupper(), f"after 'Mr.' a name, not {predictions}"

    assert prompt_logprob(client, model, SENTENCE) > prompt_logprob(client, model, SHUFFLED) + 10

    body = {"model": model, "prompt": "It is a truth universally", "max_tokens": 12}
    seeded = {**body, "seed": 7, "temperature": 0.8, "top_p": 0.95}
    first = client.post("/v1/completions", json=seeded).json()["choices"][0]["text"]
    assert client.post("/v1/completions", json=seeded).json()["choices"][0]["text"] == first
    greedy = client.post("/v1/completions", json={**body, "temperature": 0}).json()
    text = greedy["choices"][0]["text"]
    assert text.strip() and "<unk>" not in text and greedy["usage"]["completion_tokens"] == 12
