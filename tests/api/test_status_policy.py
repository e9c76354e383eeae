"""One status policy on every REST operation, held by walking the app's own OpenAPI schema.

For each operation the walker starts from a request that succeeds (VALID) and changes one thing
at a time, as the schema says it can: each query parameter and body field out of its type or
range (400 naming it), a required one left out (400), an unknown body field (400), a body that is
not JSON (400), a body sent without or with the wrong Content-Type (415), one over the size limit
(413), an unknown model, version or file (404); on every path a method it does not take (405).
Error bodies are JSON naming the field: `{"error": "..."}`, or OpenAI's shape on the operations
that document it. Nothing answers 422, and the schema documents each status the walk met.

An operation the walker does not know how to exercise fails the test rather than being skipped:
a new route needs its VALID request here, and a parameter or body kind it has never seen (a
path parameter other than a model, version or file name; a new set of body media types; a
schema type) needs teaching.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from fastapi.testclient import TestClient
from helpers.shipped_models import copy_models
from PIL import Image

from service.app import create_app
from service.settings import Settings

MODELS = ["logreg-mnist", "logreg-fashion-mnist", "gan-mnist", "vae-mnist", "lstm-austen"]
ADMIN = {"Authorization": "Bearer admin-key-0123456789"}
LIMIT = 1 << 20  # SEEDSERVE_MAX_BODY_BYTES of the app under test
JSON = "application/json"
UNKNOWN = "no-such-model"


@dataclass(frozen=True)
class Call:
    """A request: path parameters, query, and a JSON body or a multipart picture."""

    path: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    json: Any = None
    picture: bool = False  # a multipart upload of one picture instead of the JSON body


PIXELS = {"pixels": [[0.0] * 28 for _ in range(28)]}
TENSOR = {"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32",
                      "data": [0.0] * 784}]}  # fmt: skip
LM, CLASSIFIER, GAN, VAE = "lstm-austen", "logreg-mnist", "gan-mnist", "vae-mnist"
SPARE = "logreg-fashion-mnist"  # loaded and unloaded by the repository routes, used by no other
V1 = {"model_name": CLASSIFIER, "model_version": "1"}
LM_V1 = {"model_name": LM, "model_version": "1"}
GENERATE = {"text_input": "It is a truth", "parameters": {"max_tokens": 2, "seed": 1}}

# A request that succeeds, for every operation of the schema ("METHOD path").
VALID: dict[str, Call] = {
    "GET /v2": Call(),
    "GET /v2/health/live": Call(),
    "GET /v2/health/ready": Call(),
    "POST /v2/models/{model_name}/infer": Call({"model_name": CLASSIFIER}, json=TENSOR),
    "POST /v2/models/{model_name}/versions/{model_version}/infer": Call(V1, json=TENSOR),
    "GET /v2/models/stats": Call(),
    "GET /v2/models/{model_name}/stats": Call({"model_name": CLASSIFIER}),
    "GET /v2/models/{model_name}/versions/{model_version}/stats": Call(V1),
    "GET /v2/models/{model_name}": Call({"model_name": CLASSIFIER}),
    "GET /v2/models/{model_name}/versions/{model_version}": Call(V1),
    "GET /v2/models/{model_name}/ready": Call({"model_name": CLASSIFIER}),
    "GET /v2/models/{model_name}/versions/{model_version}/ready": Call(V1),
    "GET /v2/models/{model_name}/config": Call({"model_name": CLASSIFIER}),
    "GET /v2/models/{model_name}/versions/{model_version}/config": Call(V1),
    "POST /v2/repository/index": Call(),
    "POST /v2/repository/models/{model_name}/load": Call({"model_name": SPARE}),
    "POST /v2/repository/models/{model_name}/unload": Call({"model_name": SPARE}),
    "GET /v1/models": Call(),
    "GET /v1/models/{model_name}": Call({"model_name": CLASSIFIER}),
    "POST /v1/models/{model_name}/classify": Call({"model_name": CLASSIFIER}, json=PIXELS),
    "POST /v1/images/generations": Call(json={"model": GAN, "label": 3, "seed": 1}),
    "GET /v1/models/{model_name}/generate-image": Call({"model_name": GAN}),
    "POST /v1/models/{model_name}/generate-image": Call({"model_name": GAN}),
    "POST /v1/models/{model_name}/reconstruct": Call(
        {"model_name": VAE}, {"label": "7"}, json=PIXELS
    ),
    "GET /v1/models/{model_name}/versions/{version}/files": Call(
        {"model_name": CLASSIFIER, "version": "1"}
    ),
    "GET /v1/models/{model_name}/versions/{version}/files/{filename}": Call(
        {"model_name": CLASSIFIER, "version": "1", "filename": "card.md"}
    ),
    "POST /v1/models/{model_name}/next-word": Call({"model_name": LM}, json={"text": "It is a"}),
    "POST /v2/models/{model_name}/generate": Call({"model_name": LM}, json=GENERATE),
    "POST /v2/models/{model_name}/versions/{model_version}/generate": Call(LM_V1, json=GENERATE),
    "POST /v2/models/{model_name}/generate_stream": Call({"model_name": LM}, json=GENERATE),
    "POST /v2/models/{model_name}/versions/{model_version}/generate_stream": Call(
        LM_V1, json=GENERATE
    ),
    "POST /v1/completions": Call(json={"model": LM, "prompt": "It is", "max_tokens": 2}),
    "GET /metrics": Call(),
}

# The media types of each body the walker knows, by the set the schema lists.
JSON_BODY = frozenset({JSON})
PICTURES = frozenset({"multipart/form-data", JSON})
TENSORS = frozenset({JSON, "application/octet-stream"})  # the Open Inference Protocol's infer


@dataclass(frozen=True)
class Case:
    """One thing changed from the valid request, and what the policy says the answer is."""

    name: str
    call: Call
    status: int
    words: str = ""  # the error must contain them (case-insensitive)
    param: str | None = None  # the field at fault: named in the message (and OpenAI's `param`)
    content_type: str | None = JSON  # of the body; None sends no Content-Type at all
    raw: bytes | None = None  # a body sent as it is, instead of the call's JSON
    key: bool = True  # send the admin key


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The app over the shipped models, administration on, a small body limit."""
    models = copy_models(MODELS, tmp_path_factory.mktemp("policy") / "models")
    settings = Settings(
        models_dir=models,
        access_log=False,
        max_body_bytes=LIMIT,
        admin_api_key=ADMIN["Authorization"].split()[1],  # type: ignore[arg-type]
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def schema(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return dict(response.json())


def operations(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        f"{method.upper()} {path}": operation
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
    }


# ------------------------------------------------------------------------------------------------
# Reading the schema


def resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def members(schema: dict[str, Any], node: dict[str, Any]) -> list[dict[str, Any]]:
    """The alternatives a value may take (`X | None` is X: null is never what we send)."""
    node = resolve(schema, node)
    options = node.get("anyOf", [node])
    return [resolve(schema, o) for o in options if o.get("type") != "null"]


WRONG_TYPE = {"object": {"bogus": 1}, "array": [1], "string": "bogus"}
# A JSON type a value of each of the schema's types is not: pydantic takes "5" for an integer
# but no number for a string.
NOT = {"integer": "abc", "number": "abc", "string": 12345, "boolean": "maybe"}
NOT.update({"array": "not-a-list", "object": "not-an-object"})


def invalid_values(schema: dict[str, Any], node: dict[str, Any], text: bool = False) -> list[Any]:
    """Values the schema refuses: another type, then each bound it states just missed. `text`:
    a query parameter's, where any value is text, so a number is no wrong type for a string."""
    options = members(schema, node)
    if not options:
        return []
    if len(options) > 1:  # a union: a JSON type none of its members takes
        types = {o.get("type") for o in options}
        if types - set(NOT):
            pytest.fail(f"the walker does not know the types {types} of {node}")
        return [v for t, v in WRONG_TYPE.items() if t not in types][:1]
    (option,) = options
    kind = option.get("type")
    if kind is None and not option.keys() - {"title", "description", "default"}:
        return []  # any value at all
    if kind not in NOT:
        pytest.fail(f"the walker does not know how to refuse a value of {option}")
    if "enum" in option:
        return ["not-a-choice"]
    values: list[Any] = [] if text and kind == "string" else [NOT[kind]]
    if kind == "integer":
        values.append(1.5)
    if "minimum" in option:
        values.append(option["minimum"] - 1)
    if "exclusiveMinimum" in option:
        values.append(option["exclusiveMinimum"])
    if "maximum" in option:
        values.append(option["maximum"] + 1)
    if "exclusiveMaximum" in option:
        values.append(option["exclusiveMaximum"])
    if "maxLength" in option:
        values.append("x" * (option["maxLength"] + 1))
    if "minLength" in option:
        values.append("")
    if kind == "array" and "items" in option:
        values += [[v] for v in invalid_values(schema, option["items"])[:1]]
    return values


def body_fields(
    schema: dict[str, Any], node: dict[str, Any], valid: dict[str, Any], prefix: str = ""
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(field, body) with one field of the valid body made invalid, nested objects included."""
    node = resolve(schema, node)
    for name, prop in node.get("properties", {}).items():
        where = prefix + name
        for value in invalid_values(schema, prop):
            yield where, {**valid, name: value}
        nested = [o for o in members(schema, prop) if o.get("type") == "object"]
        if len(nested) == 1 and "properties" in nested[0] and not nested[0].get("required"):
            inner = valid.get(name) or {}
            for path, body in body_fields(schema, nested[0], inner, where + "."):
                yield path, {**valid, name: body}


# ------------------------------------------------------------------------------------------------
# The cases of one operation


def path_cases(operation: dict[str, Any], valid: Call) -> list[Case]:
    cases = []
    for parameter in operation.get("parameters", []):
        name = parameter["name"]
        if parameter["in"] != "path":
            continue
        if name not in valid.path:
            pytest.fail(f"VALID gives no value for the path parameter {name}")
        if name == "model_name":
            wrong = {UNKNOWN: UNKNOWN}
        elif name in {"model_version", "version"}:
            wrong = {"99": "99", "abc": "abc"}
        elif name == "filename":
            wrong = {"no-such-file.md": "no-such-file.md"}
        else:
            pytest.fail(f"the walker does not know the path parameter {name!r}")
        for value, words in wrong.items():
            call = replace(valid, path={**valid.path, name: value})
            cases.append(Case(f"unknown {name} {value}", call, 404, words))
    return cases


def query_cases(schema: dict[str, Any], operation: dict[str, Any], valid: Call) -> list[Case]:
    cases = []
    for parameter in operation.get("parameters", []):
        name, where = parameter["name"], parameter["in"]
        if where == "path":
            continue
        if (where, name) == ("header", "authorization"):  # the admin key
            cases.append(Case("no admin key", valid, 401, "admin API key", key=False))
            continue
        if where != "query":
            pytest.fail(f"the walker does not know {where} parameters ({name})")
        for value in invalid_values(schema, parameter.get("schema", {}), text=True):
            text = value if isinstance(value, str) else json.dumps(value)
            call = replace(valid, query={**valid.query, name: text})
            cases.append(Case(f"query {name}={text[:20]}", call, 400, name, name))
        if parameter.get("required"):
            query = {k: v for k, v in valid.query.items() if k != name}
            cases.append(
                Case(f"query {name} missing", replace(valid, query=query), 400, name, name)
            )
        if name == "version":
            call = replace(valid, query={**valid.query, name: "99"})
            cases.append(Case("unknown version 99", call, 404, "99"))
    return cases


def body_cases(schema: dict[str, Any], operation: dict[str, Any], valid: Call) -> list[Case]:
    content = operation.get("requestBody", {}).get("content", {})
    if not content:
        return []
    kinds = frozenset(content)
    body = json.dumps(valid.json).encode()
    too_large = b" " * (LIMIT + 1)
    cases = [
        Case("body over the limit", valid, 413, "limit", raw=too_large),
        Case("body not JSON", valid, 400, "JSON", raw=b"{not json"),
    ]
    if kinds == TENSORS:
        # Triton's clients send no Content-Type, or application/octet-stream; `curl -d` a form:
        # the Open Inference Protocol's infer takes the body whatever it is called.
        for sent in (None, "application/octet-stream", "application/x-www-form-urlencoded"):
            cases.append(Case(f"any Content-Type: {sent}", valid, 200, content_type=sent, raw=body))
        cases.append(Case("inputs not a list", replace(valid, json={"inputs": "x"}), 400, "inputs"))
        return cases
    if kinds not in (JSON_BODY, PICTURES):
        pytest.fail(f"the walker does not know a body of {sorted(kinds)}")
    takes = "multipart/form-data or application/json" if kinds == PICTURES else JSON
    cases += [
        Case("no Content-Type", valid, 415, f"must be {takes}, got none", content_type=None,
             raw=body),
        Case("Content-Type text/plain", valid, 415, "got 'text/plain'", content_type="text/plain",
             raw=body),
        Case("curl -d", valid, 415, "Content-Type: application/json",
             content_type="application/x-www-form-urlencoded", raw=body),
        Case("body a list", replace(valid, json=[1]), 400, "body"),
        Case("unknown field", replace(valid, json={**valid.json, "bogus_field": 1}), 400,
             "bogus_field", "bogus_field"),
    ]  # fmt: skip
    if kinds == PICTURES:
        cases.append(Case("a multipart picture", replace(valid, json=None, picture=True), 200))
        return cases  # the pictures' fields are read by the route (test_bad_input.py)
    node = resolve(schema, content[JSON]["schema"])
    for name in node.get("required", []):
        missing = {k: v for k, v in valid.json.items() if k != name}
        cases.append(Case(f"{name} missing", replace(valid, json=missing), 400, name, name))
    for where, invalid in body_fields(schema, node, valid.json):
        value = json.dumps(invalid.get(where.split(".")[0]))[:30]
        cases.append(Case(f"{where}={value}", replace(valid, json=invalid), 400, where, where))
    if "model" in node.get("properties", {}):
        unknown = replace(valid, json={**valid.json, "model": UNKNOWN})
        cases.append(Case("unknown model", unknown, 404, UNKNOWN))
    return cases


def cases_of(schema: dict[str, Any], key: str) -> list[Case]:
    if key not in VALID:
        pytest.fail(f"{key} is not in VALID: give the walker a request that succeeds")
    operation, valid = operations(schema)[key], VALID[key]
    return [
        Case("valid", valid, 200),
        *path_cases(operation, valid),
        *query_cases(schema, operation, valid),
        *body_cases(schema, operation, valid),
    ]


# ------------------------------------------------------------------------------------------------
# Sending them


def send(client: TestClient, method: str, template: str, case: Case) -> Any:
    call = case.call
    path = template
    for name, value in call.path.items():
        path = path.replace("{" + name + "}", quote(value, safe=""))
    url = path + ("?" + urlencode(call.query) if call.query else "")
    headers = dict(ADMIN) if case.key else {}
    if call.picture:
        return client.request(method, url, headers=headers, files={"file": ("x.png", PNG)})
    if case.raw is None and call.json is None:
        return client.request(method, url, headers=headers)
    if case.content_type is not None:
        headers["Content-Type"] = case.content_type
    content = case.raw if case.raw is not None else json.dumps(call.json).encode()
    return client.request(method, url, headers=headers, content=content)


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (28, 28), 0).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = png()


def error_of(response: Any, openai_shape: bool) -> tuple[str, str | None]:
    """The message and the field of an error answer, checking its shape."""
    assert response.headers["content-type"].startswith(JSON), response.headers
    error = response.json()["error"]
    if not openai_shape:
        assert isinstance(error, str) and error, error
        return error, None
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["code"] == response.status_code and error["message"], error
    return error["message"], error["param"]


def documents_openai_errors(operation: dict[str, Any]) -> bool:
    refs = json.dumps(operation.get("responses", {}).get("400", {}))
    return "OpenAIErrorResponse" in refs


@pytest.mark.parametrize("key", sorted(VALID))
def test_every_operation_follows_the_status_policy(
    client: TestClient, schema: dict[str, Any], key: str
) -> None:
    method, template = key.split(" ", 1)
    operation = operations(schema).get(key)
    assert operation is not None, f"{key} is in VALID but not in the schema: remove it"
    openai_shape = documents_openai_errors(operation)
    met: set[int] = set()
    for case in cases_of(schema, key):
        response = send(client, method, template, case)
        where = f"{key}, {case.name}: {response.status_code} {response.text[:300]}"
        if case.status == 200:
            assert 200 <= response.status_code < 300, where
            continue
        assert response.status_code == case.status, where
        # a body over the limit is refused before any route, in the plain shape
        message, param = error_of(response, openai_shape)
        assert case.words.lower() in message.lower(), where
        if case.param is not None:
            assert case.param.lower() in message.lower(), where
            if openai_shape:
                assert param is not None and param.startswith(case.param), where
        met.add(case.status)
    documented = set(operation["responses"])
    assert "422" not in documented, f"{key} documents 422"
    missing = {str(s) for s in met} - documented
    assert not missing, f"{key} answers {sorted(missing)} without documenting them"


def test_the_walker_knows_every_operation(schema: dict[str, Any]) -> None:
    """A route added without teaching the walker fails here, by name."""
    unknown = sorted(set(operations(schema)) - set(VALID))
    assert not unknown, f"add a valid request to VALID for {unknown}"
    for key in operations(schema):
        assert cases_of(schema, key), key


def test_wrong_methods_and_routes(client: TestClient, schema: dict[str, Any]) -> None:
    for template, methods in schema["paths"].items():
        path = template
        for name, value in {"model_name": CLASSIFIER, "model_version": "1", "version": "1",
                            "filename": "card.md"}.items():  # fmt: skip
            path = path.replace("{" + name + "}", value)
        wrong = next(m for m in ("PUT", "PATCH", "DELETE") if m.lower() not in methods)
        response = client.request(wrong, path)
        assert response.status_code == 405, (wrong, template, response.text)
        # Starlette's Allow names the methods of the first route that matched the path
        allow = set(response.headers["allow"].replace(" ", "").split(","))
        assert allow and allow <= {m.upper() for m in methods}, (template, allow)
        error = response.json()["error"]
        assert f"method {wrong} is not allowed" in error and sorted(allow)[0] in error, error
    for route in ("/v1/no-such-route", "/v2/no/such/route"):
        response = client.get(route)
        assert response.status_code == 404
        assert route in response.json()["error"]


def test_walker_refuses_what_it_does_not_know() -> None:
    """The walker fails, not skips, on a schema it cannot read."""
    with pytest.raises(pytest.fail.Exception, match="does not know"):
        invalid_values({}, {"type": "file"})
    with pytest.raises(pytest.fail.Exception, match="path parameter 'tenant'"):
        path_cases({"parameters": [{"name": "tenant", "in": "path"}]}, Call({"tenant": "x"}))
    with pytest.raises(pytest.fail.Exception, match="does not know a body"):
        body_cases({}, {"requestBody": {"content": {"text/csv": {}}}}, Call(json={}))
    with pytest.raises(pytest.fail.Exception, match="not in VALID"):
        cases_of({"paths": {"/new": {"get": {}}}}, "GET /new")
