"""The README's "Serve your own model" runs as written, and says what the server answers.

Its fenced blocks run in order, in a temporary working directory (so the README's `models/` is a
fresh repository there): shell lines through bash, the start command as a live server over that
repository (`python -m service --models-dir models`, the README's alternative to `make serve`, on
a free port), Python blocks through `exec` with the README's address replaced by the live
server's. What a block prints must be what its `print(...)  # ...` comment says, and a JSON block
after a `curl` must agree with curl's answer in every field it shows. The answers
docs/model-repository.md shows for the same model are checked against the same server.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.doc_blocks import fenced_blocks, section
from helpers.live_server import Server, live_server

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs" / "model-repository.md"
HEADING = "## Serve your own model"
ADDRESS = "127.0.0.1:8000"  # the README's; replaced by the live server's
START = "make serve"
START_ALTERNATIVE = "python -m service --models-dir models"  # what the test actually starts
PRINTED = re.compile(r"^\s*print\(.*\)  # (.+)$", re.M)
COMMAND_TIMEOUT_S = 30


def assert_shown(shown: Any, answered: Any, where: str = "$") -> None:
    """Every field `shown` has the value `answered` gives it (objects may be abridged, lists are
    compared whole and in order)."""
    if isinstance(shown, dict):
        assert isinstance(answered, dict), f"{where}: shown an object, answered {answered!r}"
        for key, value in shown.items():
            assert key in answered, f"{where}.{key} is shown but not in the answer"
            assert_shown(value, answered[key], f"{where}.{key}")
    elif isinstance(shown, list):
        assert isinstance(answered, list) and len(shown) == len(answered), (
            f"{where}: shown {shown!r}, answered {answered!r}"
        )
        for index, (item, actual) in enumerate(zip(shown, answered, strict=True)):
            assert_shown(item, actual, f"{where}[{index}]")
    else:
        assert shown == answered, f"{where}: shown {shown!r}, answered {answered!r}"


def run_python(code: str, name: str) -> None:
    """Exec a README block; what it prints must be what its print comments say."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, name, "exec"), {"__name__": "readme"})
    assert printed.getvalue().splitlines() == PRINTED.findall(code), f"{name} printed otherwise"


def run_shell(line: str, cwd: Path) -> str:
    done = subprocess.run(
        ["bash", "-c", line], cwd=cwd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
    )
    assert done.returncode == 0, f"{line!r} failed: {done.stderr}"
    return done.stdout


def test_serve_your_own_model_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = fenced_blocks(section(README.read_text(), HEADING))
    assert blocks, f"README lost its {HEADING!r} examples"
    monkeypatch.chdir(tmp_path)  # the README's `models/` is tmp_path / "models"
    ran = {"python": 0, "curl": 0, "json": 0}
    with contextlib.ExitStack() as stack:
        server: Server | None = None
        answer: str | None = None  # the last curl's output, for the JSON block after it
        for index, (language, code) in enumerate(blocks):
            name = f"README {HEADING[3:]!r} block {index + 1}"
            if server is not None:
                code = code.replace(ADDRESS, server.url.removeprefix("http://"))
            if language == "python":
                run_python(code, name)
                ran["python"] += 1
            elif language == "sh":
                for line in code.splitlines():
                    command, _, comment = line.partition("#")
                    if not command.strip():
                        continue
                    if command.strip() == START:
                        assert START_ALTERNATIVE in comment, f"{name}: {line!r}"
                        server = stack.enter_context(live_server(tmp_path / "models", timeout=30))
                    else:
                        assert server is not None or ADDRESS not in line, "call before start"
                        answer = run_shell(line, tmp_path)
                        ran["curl"] += command.strip().startswith("curl ")
            elif language == "json":
                assert answer is not None, f"{name}: a JSON answer shown before any command"
                assert_shown(json.loads(code), json.loads(answer), name)
                ran["json"] += 1
            else:
                raise AssertionError(f"{name}: no way to run a {language!r} block")
        assert server is not None, f"the README no longer starts the server with {START!r}"
        assert (tmp_path / "models" / "tiny" / "1" / "model.onnx").is_file()
        assert ran["python"] >= 2 and ran["curl"] >= 1 and ran["json"] >= 1, ran
        check_the_docs_answers(server)


def check_the_docs_answers(server: Server) -> None:
    """docs/model-repository.md shows the same `tiny` model's completed config and a
    classification answer: both must be what the server says."""
    docs = DOCS.read_text()
    ((_, shown_config),) = [
        block
        for block in fenced_blocks(section(docs, "## Auto-complete: what is taken from the graph"))
        if block[0] == "json"
    ]
    config = httpx.get(f"{server.url}/v2/models/tiny/config", timeout=10).json()
    assert_shown(json.loads(shown_config), config, "docs: completed config")

    ((_, shown_output),) = fenced_blocks(section(docs, "## Classification extension"))
    request = {
        "inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}],
        "outputs": [{"name": "y", "parameters": {"classification": 2}}],
    }
    answer = httpx.post(f"{server.url}/v2/models/tiny/infer", json=request, timeout=10)
    assert answer.status_code == 200, answer.text
    assert json.loads(shown_output) == answer.json()["outputs"][0]
