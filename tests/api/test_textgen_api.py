"""Language models through the API: next-word, OpenAI/vLLM completions (plain and streamed, with
the official `openai` client against a live server), the Open Inference Protocol generate
extension, seeded reproducibility of every sampling option, limits, errors, metrics, and a
client that disconnects mid-stream. Tiny real ONNX bigram models (tests/helpers/onnx_builders.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers.completion_answers import check_logprobs, events, merged_choice
from helpers.onnx_builders import write_classifier, write_language_model
from helpers.scrape import model_metric

from service.app import create_app
from service.settings import Settings

MODELS = ("lm-test", "kv-test")  # recurrent state; a growing key/value-like cache


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lms") / "models"
    write_language_model(root, "lm-test")
    write_language_model(root, "kv-test", cache=True)
    write_language_model(root, "short-test", cache=True, max_length=4)  # a 4-position graph
    write_classifier(root, "linear-test")
    return root


@pytest.fixture(scope="module")
def lm_client(lm_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(models_dir=lm_dir, access_log=False))) as client:
        yield client


def complete(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/completions", json={"model": "lm-test", **body})
    assert response.status_code == 200, response.text
    return dict(response.json())


# -- next word ---------------------------------------------------------------------------------
def test_next_word_ranks_the_likely_words(lm_client: TestClient) -> None:
    answer = lm_client.post("/v1/models/lm-test/next-word", json={"text": "the", "top_k": 4})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    predictions = body["predictions"]
    assert len(predictions) == 4 and predictions[0]["word"] == "cat"
    assert predictions[0]["token_id"] == 3 and body["tokens"] == 1 and body["unknown_words"] == []
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) < 1
    assert all(p["word"] != "<unk>" for p in predictions)


def test_next_word_of_empty_and_unknown_text(lm_client: TestClient) -> None:
    empty = lm_client.post("/v1/models/lm-test/next-word", json={"text": ""}).json()
    assert empty["predictions"][0]["word"] == "the" and empty["tokens"] == 0  # a paragraph starts
    assert len(empty["predictions"]) == 10  # the default top_k
    odd = lm_client.post("/v1/models/kv-test/next-word", json={"text": "the zebra's ox"}).json()
    assert odd["unknown_words"] == ["zebra", "'s", "ox"] and odd["tokens"] == 4
    assert len(odd["predictions"]) == 10


# -- completions -------------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
def test_greedy_completion_and_usage(lm_client: TestClient, model: str) -> None:
    body = complete(lm_client, model=model, prompt="the", max_tokens=5, temperature=0)
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["model"] == model
    assert body["choices"] == [
        {"index": 0, "text": " cat sat on the cat", "logprobs": None, "finish_reason": "length"}
    ]
    assert body["usage"] == {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6}


def test_stop_string_ends_the_completion(lm_client: TestClient) -> None:
    body = complete(lm_client, prompt="a", max_tokens=10, temperature=0, stop=["home", "zzz"])
    assert (
        body["choices"][0]["text"] == " dog ran " and body["choices"][0]["finish_reason"] == "stop"
    )
    assert body["usage"]["completion_tokens"] == 3


def test_echo_and_logprobs(lm_client: TestClient) -> None:
    prompt = "The  cat"  # kept exactly as typed, unknown capitalised word and double space too
    body = complete(lm_client, prompt=prompt, max_tokens=3, temperature=0, echo=True, logprobs=2)
    choice = body["choices"][0]
    assert choice["text"] == prompt + " sat on the"
    check_logprobs(choice, 2)
    logprobs = choice["logprobs"]
    assert logprobs["tokens"] == ["The", "cat", "sat", "on", "the"]
    assert logprobs["text_offset"] == [0, 5, 9, 13, 16]
    # a prompt token has its alternatives too; an unknown word is scored as <unk>, never listed
    unknown = logprobs["top_logprobs"][0]
    assert unknown.keys() == {"The", "the", "\n"} and "<unk>" not in str(logprobs["top_logprobs"])
    for top, token, lp in zip(
        logprobs["top_logprobs"][2:],
        logprobs["tokens"][2:],
        logprobs["token_logprobs"][2:],
        strict=True,
    ):
        assert top[token] == lp and len(top) <= 3 and max(top.values()) == lp  # greedy


def test_max_tokens_zero_scores_the_prompt(lm_client: TestClient) -> None:
    body = complete(lm_client, prompt="the cat", max_tokens=0, echo=True, logprobs=0)
    choice = body["choices"][0]
    assert choice["text"] == "the cat" and choice["finish_reason"] == "length"
    assert len(choice["logprobs"]["token_logprobs"]) == 2
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 0, "total_tokens": 2}


def test_a_graph_with_a_length_limit_reads_the_recent_tokens(lm_client: TestClient) -> None:
    prompt = "a dog ran home . the"
    body = complete(
        lm_client, model="short-test", prompt=prompt, max_tokens=9, temperature=0, echo=True,
        logprobs=0,
    )  # fmt: skip
    choice = body["choices"][0]
    assert choice["text"] == prompt + " cat sat on the cat sat on the cat"
    # the start token and 6 prompt tokens, 4 positions: the first 3 tokens were not scored
    scores = choice["logprobs"]["token_logprobs"]
    assert scores[:3] == [None] * 3 and all(s is not None for s in scores[3:])


def test_several_prompts_and_n(lm_client: TestClient) -> None:
    body = complete(lm_client, model="kv-test", prompt=["the", "a dog"], n=3, max_tokens=8, seed=5)
    choices = body["choices"]
    assert [c["index"] for c in choices] == list(range(6))
    assert len({c["text"] for c in choices[:3]}) > 1, "the n choices of a prompt should differ"
    # a prompt completes alike alone or in a list: its choices use the same seeds
    alone = complete(lm_client, model="kv-test", prompt="a dog", n=3, max_tokens=8, seed=5)
    assert [c["text"] for c in alone["choices"]] == [c["text"] for c in choices[3:]]
    first = complete(lm_client, model="kv-test", prompt="a dog", max_tokens=8, seed=5)
    assert first["choices"][0]["text"] == choices[3]["text"]
    assert body["usage"]["prompt_tokens"] == 3 and body["usage"]["completion_tokens"] == 48


SAMPLING = [
    {"temperature": 0},
    {"temperature": 1.5},
    {"temperature": 0.7, "top_k": 3},
    {"top_p": 0.8},
    {"repetition_penalty": 1.5},
    {"temperature": 1.2, "top_k": 5, "top_p": 0.9, "repetition_penalty": 1.2},
]


@pytest.mark.parametrize("options", SAMPLING, ids=lambda o: ",".join(o))
def test_every_sampling_option_is_reproducible_by_seed(
    lm_client: TestClient, options: dict[str, float]
) -> None:
    def text(seed: int) -> str:
        body = complete(lm_client, prompt="the", max_tokens=40, seed=seed, **options)
        return str(body["choices"][0]["text"])

    assert text(1) == text(1)
    if options.get("temperature") != 0:
        assert text(1) != text(2)


def test_repetition_penalty_changes_the_text(lm_client: TestClient) -> None:
    plain = complete(lm_client, prompt="the", max_tokens=12, temperature=0)
    penalised = complete(
        lm_client, prompt="the", max_tokens=12, temperature=0, repetition_penalty=5
    )
    assert plain["choices"][0]["text"] == " cat sat on the cat sat on the cat sat on the"
    assert penalised["choices"][0]["text"] != plain["choices"][0]["text"]


def test_stream_matches_the_plain_answer(lm_client: TestClient) -> None:
    request = {"prompt": "the", "max_tokens": 12, "seed": 11, "n": 2, "temperature": 1.3}
    plain = complete(lm_client, **request)
    response = lm_client.post(
        "/v1/completions",
        json={
            "model": "lm-test",
            **request,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = events(response.text)
    assert chunks[-1] == "[DONE]" and chunks[-2]["choices"] == []
    assert chunks[-2]["usage"] == plain["usage"]
    assert len(chunks) == 2 * 12 + 2  # one chunk per token, the usage, [DONE]
    texts, reasons = ["", ""], [None, None]
    for chunk in chunks[:-2]:
        assert chunk["id"] == chunks[0]["id"] and chunk["object"] == "text_completion"
        (choice,) = chunk["choices"]
        texts[choice["index"]] += choice["text"]
        reasons[choice["index"]] = choice["finish_reason"] or reasons[choice["index"]]
    assert texts == [c["text"] for c in plain["choices"]]
    assert reasons == ["length", "length"]


def test_stream_with_echo_and_no_usage(lm_client: TestClient) -> None:
    response = lm_client.post(
        "/v1/completions",
        json={"model": "lm-test", "prompt": "a", "max_tokens": 2, "temperature": 0, "stream": True,
              "echo": True, "logprobs": 1},
    )  # fmt: skip
    chunks = events(response.text)
    assert chunks[-1] == "[DONE]" and all("usage" not in c for c in chunks[:-1])
    assert [c["choices"][0]["text"] for c in chunks[:-1]] == ["a", " dog", " ran"]
    assert chunks[1]["choices"][0]["logprobs"]["tokens"] == ["dog"]
    check_logprobs(merged_choice(chunks), 1)


def test_offsets_of_text_held_back_for_a_stop_string(lm_client: TestClient) -> None:
    """The words "on the" might begin the stop string: their chunks carry no text until "cat"
    shows they do not, yet every token's offset is where it ends up in the text."""
    body = {"prompt": "the", "max_tokens": 5, "temperature": 0, "stop": ["on the mat"],
            "logprobs": 0}  # fmt: skip
    for echo in (False, True):
        streamed = events(
            lm_client.post(
                "/v1/completions", json={"model": "lm-test", **body, "echo": echo, "stream": True}
            ).text
        )
        texts = [c["choices"][0]["text"] for c in streamed[:-1]]
        assert texts == ["the"] * echo + [" cat", " sat", " ", "", "on the cat"]
        choice = merged_choice(streamed)
        check_logprobs(choice, 0)
        assert choice == {**complete(lm_client, **body, echo=echo)["choices"][0], "index": 0}


# -- the Open Inference Protocol generate extension --------------------------------------------
def test_generate_matches_completions(lm_client: TestClient) -> None:
    parameters = {"max_tokens": 10, "temperature": 1.4, "top_p": 0.95, "seed": 3}
    answer = lm_client.post(
        "/v2/models/kv-test/generate",
        json={"id": "r1", "text_input": "on", "parameters": parameters},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    same = complete(lm_client, model="kv-test", prompt="on", **parameters)
    assert body == {"model_name": "kv-test", "model_version": "1", "id": "r1",
                    "text_output": same["choices"][0]["text"], "finish_reason": "length"}  # fmt: skip
    versioned = lm_client.post(
        "/v2/models/kv-test/versions/1/generate",
        json={"text_input": "on", "parameters": parameters},
    )
    assert versioned.json()["text_output"] == body["text_output"]


def test_generate_stream(lm_client: TestClient) -> None:
    request = {"text_input": "a", "parameters": {"max_tokens": 8, "temperature": 0, "stop": "."}}
    response = lm_client.post("/v2/models/lm-test/generate_stream", json=request)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = events(response.text)
    assert "".join(c["text_output"] for c in chunks) == " dog ran home"
    assert [c["done"] for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1]["finish_reason"] == "stop" and chunks[0]["model_name"] == "lm-test"
    plain = lm_client.post("/v2/models/lm-test/versions/1/generate_stream", json=request)
    assert events(plain.text) == chunks
    default = lm_client.post(
        "/v2/models/lm-test/generate", json={"text_input": "the", "parameters": {"seed": 1}}
    )
    twenty = complete(lm_client, prompt="the", max_tokens=20, seed=1)  # the spec's default
    assert default.json()["text_output"] == twenty["choices"][0]["text"]


# -- listing, metrics --------------------------------------------------------------------------
def test_models_list_includes_language_models(lm_client: TestClient) -> None:
    listed = {m["id"]: m for m in lm_client.get("/v1/models").json()["data"]}
    assert listed["lm-test"]["task"] == "language-model" and listed["lm-test"]["ready"]
    assert listed["kv-test"]["metrics"] == {"test_perplexity": 9.5}


def metric(text: str, name: str, model: str = "lm-test") -> float:
    return model_metric(text, name, model)
