"""Language models through the API: next-word, OpenAI/vLLM completions (plain and streamed, with
the official `openai` client against a live server), the Open Inference Protocol generate
extension, seeded reproducibility of every sampling option, limits, errors, metrics, and a
client that disconnects mid-stream. Tiny real ONNX bigram models (tests/helpers/onnx_builders.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from helpers.completion_answers import check_logprobs, events, merged_choice
from helpers.live_server import Server, live_server
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


def test_generation_metrics(lm_client: TestClient) -> None:
    before = lm_client.get("/metrics").text
    complete(lm_client, prompt="the cat", max_tokens=7, n=2)
    after = lm_client.get("/metrics").text
    delta = {
        name: metric(after, name) - metric(before, name)
        for name in (
            "seedserve_generated_tokens_total",
            "seedserve_prompt_tokens_total",
            "seedserve_time_to_first_token_seconds_count",
            "seedserve_inter_token_latency_seconds_count",
            "seedserve_generation_duration_seconds_count",
        )
    }
    assert delta == {
        "seedserve_generated_tokens_total": 14,
        "seedserve_prompt_tokens_total": 2,
        "seedserve_time_to_first_token_seconds_count": 1,
        "seedserve_inter_token_latency_seconds_count": 12,  # 6 gaps in each of 2 sequences
        "seedserve_generation_duration_seconds_count": 1,
    }


# -- bad input ---------------------------------------------------------------------------------
LONG = "the " * 2049  # 2049 tokens, under the character limit

# (body overrides, param the error must name); every one is a 400 in OpenAI's error shape
BAD_COMPLETIONS: list[tuple[dict[str, Any], str | None]] = [
    ({"prompt": None}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": "x" * 20_001}, "prompt"),
    ({"prompt": LONG}, "prompt"),
    ({"prompt": ["the", LONG]}, "prompt"),
    ({"prompt": 7}, "prompt"),
    ({"max_tokens": 513}, "max_tokens"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"n": 0}, "n"),
    ({"n": 17}, "n"),
    ({"n": 9, "prompt": ["a", "b"]}, "n"),
    ({"temperature": -0.5}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -2}, "top_k"),
    ({"logprobs": 21}, "logprobs"),
    ({"logprobs": -1}, "logprobs"),
    ({"stop": [""]}, "stop"),
    ({"stop": ["x"] * 17}, "stop"),
    ({"stop": ["x" * 201]}, "stop"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**63}, "seed"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"frequency_penalty": 1}, "frequency_penalty"),
    ({"best_of": 3}, "best_of"),
    ({"logit_bias": {"3": 5}}, "logit_bias"),
    ({"suffix": "the end"}, "suffix"),
    ({"bogus": 1}, "bogus"),
    (
        {"stream": True, "stream_options": {"include_usage": True, "extra": 1}},
        "stream_options.extra",
    ),
    ({"model": "linear-test"}, "model"),
]


@pytest.mark.parametrize(("override", "param"), BAD_COMPLETIONS)
def test_bad_completion_requests(
    lm_client: TestClient, override: dict[str, Any], param: str | None
) -> None:
    body = {"model": "lm-test", "prompt": "the", **override}
    body = {k: v for k, v in body.items() if v is not None}
    response = lm_client.post("/v1/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["code"] == 400
    assert error["type"] == "invalid_request_error" and param.split(".")[0] in error["message"]


def test_completion_errors_in_openai_shape(lm_client: TestClient) -> None:
    missing = lm_client.post("/v1/completions", json={"model": "nope", "prompt": "a"})
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    broken = lm_client.post(
        "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400 and "JSON" in broken.json()["error"]["message"]


# (path, body, status, words the error must contain) for the other text endpoints
BAD_TEXT: list[tuple[str, dict[str, Any], int, str]] = [
    ("/v1/models/lm-test/next-word", {"text": "a", "top_k": 101}, 400, "top_k"),
    ("/v1/models/lm-test/next-word", {"text": "a", "top_k": 0}, 400, "top_k"),
    ("/v1/models/lm-test/next-word", {"text": LONG}, 400, "text"),
    ("/v1/models/lm-test/next-word", {"txt": "a"}, 400, "txt"),
    ("/v1/models/linear-test/next-word", {"text": "a"}, 400, "not a language model"),
    ("/v1/models/nope/next-word", {"text": "a"}, 404, "nope"),
    ("/v2/models/lm-test/generate", {}, 400, "text_input"),
    ("/v2/models/lm-test/generate", {"text_input": LONG}, 400, "text_input"),
    ("/v2/models/lm-test/generate", {"text_input": "a", "parameters": {"max_tokens": 600}}, 400,
     "max_tokens"),
    ("/v2/models/lm-test/generate", {"text_input": "a", "parameters": {"top_p": 2}}, 400, "top_p"),
    ("/v2/models/lm-test/generate", {"text_input": "a", "parameters": {"beam": 2}}, 400, "beam"),
    ("/v2/models/lm-test/generate_stream", {"text_input": "a", "parameters": {"stop": [""]}}, 400,
     "stop"),
    ("/v2/models/lm-test/versions/9/generate", {"text_input": "a"}, 404, "version"),
    ("/v2/models/linear-test/generate_stream", {"text_input": "a"}, 400, "not a language model"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "status", "words"), BAD_TEXT)
def test_bad_text_requests(
    lm_client: TestClient, path: str, body: dict[str, Any], status: int, words: str
) -> None:
    response = lm_client.post(path, json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert words in response.json()["error"]


def test_api_key_errors_in_openai_shape(lm_dir: Path) -> None:
    settings = Settings(models_dir=lm_dir, access_log=False, api_key="k" * 20)
    with TestClient(create_app(settings)) as client:
        denied = client.post("/v1/completions", json={"model": "lm-test", "prompt": "a"})
        assert denied.status_code == 401
        assert denied.json()["error"]["type"] == "authentication_error"
        allowed = client.post(
            "/v1/completions",
            json={"model": "lm-test", "prompt": "a"},
            headers={"Authorization": f"Bearer {'k' * 20}"},
        )
        assert allowed.status_code == 200


# -- a live server: the official openai client, disconnects, the concurrency limit --------------
MAX_NEW = 1_000_000


@pytest.fixture(scope="module")
def server(lm_dir: Path) -> Iterator[Server]:
    env = {"SEEDSERVE_MAX_NEW_TOKENS": str(MAX_NEW), "SEEDSERVE_MAX_CONCURRENT_GENERATIONS": "1"}
    with live_server(lm_dir, env=env) as running:
        yield running
    running.assert_clean_exit()


def test_openai_client_plain_and_streaming(server: Server) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    plain = client.completions.create(
        model="lm-test", prompt="the", max_tokens=6, seed=4, temperature=1.1,
        extra_body={"top_k": 6, "repetition_penalty": 1.1},
    )  # fmt: skip
    assert plain.object == "text_completion" and plain.choices[0].finish_reason == "length"
    assert plain.usage is not None and plain.usage.completion_tokens == 6
    stream = client.completions.create(
        model="lm-test", prompt="the", max_tokens=6, seed=4, temperature=1.1, stream=True,
        stream_options={"include_usage": True}, extra_body={"top_k": 6, "repetition_penalty": 1.1},
    )  # fmt: skip
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == plain.choices[0].text
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 7
    listed = {m.id for m in client.models.list()}
    assert {"lm-test", "kv-test"} <= listed
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model="lm-test", prompt="the", max_tokens=-3)
    assert error.value.status_code == 400 and "max_tokens" in str(error.value)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="the")


def scrape(server: Server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return metric(text, name, "kv-test")


def test_a_client_that_disconnects_stops_its_generation(server: Server) -> None:
    body = {"model": "kv-test", "prompt": "the", "max_tokens": MAX_NEW, "stream": True}
    before = scrape(server, "seedserve_generated_tokens_total")
    with (
        httpx.Client(timeout=10) as http,
        http.stream("POST", f"{server.url}/v1/completions", json=body) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert scrape(server, "seedserve_generation_tasks_in_flight") == 1
        # one generation at a time on this server: the next is refused, in OpenAI's shape
        busy = http.post(f"{server.url}/v1/completions", json={**body, "max_tokens": 1})
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["type"] == "server_error"
    # leaving the block closed the connection mid-stream
    deadline = time.monotonic() + 10
    while scrape(server, "seedserve_generation_tasks_in_flight") != 0:
        assert time.monotonic() < deadline, "the generation kept running after the disconnect"
        time.sleep(0.05)
    stopped = scrape(server, "seedserve_generated_tokens_total")
    time.sleep(0.3)
    assert scrape(server, "seedserve_generated_tokens_total") == stopped, "tokens still produced"
    assert 0 < stopped - before < MAX_NEW / 10
    # and the model serves the next request
    again = httpx.post(
        f"{server.url}/v1/completions", json={**body, "stream": False, "max_tokens": 2}
    )
    assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] == 2
