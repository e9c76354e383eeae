"""The shipped Austen language models served through the API: they load, predict sensible next
words, prefer Austen's sentence to the same words shuffled, complete text reproducibly, and report
log-probabilities as vLLM does (prompt and written tokens alike, offsets into the text).
Skipped for a family whose model is not in models/ yet."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers.completion_answers import check_logprobs, events, merged_choice
from helpers.shipped_models import AUSTEN_LMS, copy_models

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


# -- log-probabilities as vLLM reports them ----------------------------------------------------
OPENING = 'It is a truth universally acknowledged,  that "a single man'  # two spaces, a quote
K = 3  # alternatives asked for


def completion(client: TestClient, **body: Any) -> dict[str, Any]:
    """Choice 0 of a plain answer, or of a stream put back together."""
    answer = client.post("/v1/completions", json=body)
    assert answer.status_code == 200, answer.text
    if body.get("stream"):
        return merged_choice(events(answer.text))
    return dict(answer.json()["choices"][0])


def prompt_tokens(client: TestClient, model: str, text: str) -> int:
    return int(client.post(f"/v1/models/{model}/next-word", json={"text": text}).json()["tokens"])


@pytest.mark.parametrize("model", SHIPPED or ["none"])
def test_prompt_tokens_come_with_their_alternatives(client: TestClient, model: str) -> None:
    body = {"model": model, "prompt": OPENING, "max_tokens": 4, "temperature": 0, "echo": True}
    choice = completion(client, **body, logprobs=K)
    check_logprobs(choice, K)
    prompt = prompt_tokens(client, model, OPENING)
    tops = choice["logprobs"]["top_logprobs"]
    assert all(top is not None for top in tops)  # the start token is read first: all scored
    assert any(len(top) == K + 1 for top in tops[:prompt])  # a token outside its top 3 is added
    # the first word written has the alternatives next-word lists, with the same numbers
    words = client.post(f"/v1/models/{model}/next-word", json={"text": OPENING, "top_k": K})
    expected = {w["word"]: w["logprob"] for w in words.json()["predictions"]}
    first = tops[prompt]
    assert first.keys() == expected.keys()
    np.testing.assert_allclose([first[w] for w in expected], list(expected.values()), atol=1e-4)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("echo", [False, True])
@pytest.mark.parametrize("model", SHIPPED or ["none"])
def test_text_offsets_index_the_returned_text(
    client: TestClient, model: str, echo: bool, stream: bool
) -> None:
    body = {"model": model, "prompt": OPENING, "max_tokens": 24, "temperature": 0, "logprobs": K}
    choice = completion(client, **body, echo=echo, stream=stream)
    check_logprobs(choice, K)
    offsets = choice["logprobs"]["text_offset"]
    assert len(offsets) == 24 + (prompt_tokens(client, model, OPENING) if echo else 0)
    assert choice["text"].startswith(OPENING) == echo and offsets[-24] >= echo * len(OPENING)
    if stream:  # streamed or not, the same answer
        plain = completion(client, **body, echo=echo)
        assert choice["text"] == plain["text"] and choice["finish_reason"] == plain["finish_reason"]
        for key in ("tokens", "text_offset"):
            assert choice["logprobs"][key] == plain["logprobs"][key]


@pytest.mark.parametrize("model", SHIPPED or ["none"])
def test_a_text_scores_the_same_written_or_read(client: TestClient, model: str) -> None:
    """Greedy-write T after P, then read P + T as a prompt (echo, max_tokens 0): the same tokens
    at the same offsets with the same log-probabilities and alternatives, generated or not."""
    body = {"model": model, "echo": True, "logprobs": K}
    written = completion(client, **body, prompt=OPENING, max_tokens=20, temperature=0)
    read = completion(client, **body, prompt=written["text"], max_tokens=0)
    assert read["text"] == written["text"]
    want, got = written["logprobs"], read["logprobs"]
    assert got["tokens"] == want["tokens"] and got["text_offset"] == want["text_offset"]
    np.testing.assert_allclose(got["token_logprobs"], want["token_logprobs"], atol=1e-4)
    for mine, theirs in zip(got["top_logprobs"], want["top_logprobs"], strict=True):
        np.testing.assert_allclose(sorted(mine.values()), sorted(theirs.values()), atol=1e-4)
