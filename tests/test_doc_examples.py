"""Every fenced example of README.md and docs/*.md runs, as written, against a live service.

Each block is one of three kinds, and a block that is none of them fails the test:
- a service example: a `sh`/`bash` or `python` block that calls the docs' address
  (127.0.0.1:8000, gRPC 127.0.0.1:8001). It runs against ONE live server over the shipped
  models/, with the address replaced by the server's, in a folder holding the pictures the
  examples name (`seven.png`: MNIST test digit 0, a 7, enlarged and dark on light; `a.png`,
  `b.png`: Fashion-MNIST test items 0 and 1). Shell blocks run command by command through bash;
  each `curl` gets `--fail-with-body` and must answer 2xx with what it says it gives (JSON, a PNG
  file, server-sent events ending as their protocol says, Prometheus text), and a classification
  of a picture must name its class. Python blocks run in a subprocess of this interpreter.
- a block of a section another test runs whole (RUN_ELSEWHERE);
- a block that is no service example (NOT_SERVICE), listed by file, heading and first line with
  the reason.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.doc_blocks import Block, blocks_of, markdown_files
from helpers.live_server import Server, live_server
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
ADDRESS = "127.0.0.1:8000"  # the docs' REST address; replaced by the live server's
GRPC_ADDRESS = "127.0.0.1:8001"  # the docs' gRPC address
RUNNABLE = {"sh", "bash", "python"}
COMMAND_TIMEOUT_S = 60
# curl as the examples' reader would want it checked: a status >= 400 fails the command (and the
# body still shows), the status is written after the body on stderr
CURL_CHECKED = "curl -sS --fail-with-body --max-time 60 -w '%{stderr}HTTP status %{http_code}\\n' "
STATUS = re.compile(r"HTTP status (\d{3})\n\Z")

RUN_ELSEWHERE = {  # (file, heading) -> the test that runs every block of that section
    ("README.md", "## Serve your own model"): "tests/test_readme_own_model.py",
}
TRAINING = "a training run (minutes to hours of CPU), not a call to the service"
DEPLOYMENT = "needs Docker or a cluster; `make deploy-check` builds, runs and probes the image"
NOT_SERVICE = {  # (file, heading, the start of the block's first line) -> why it does not run here
    ("README.md", "## Quick start (fresh machine)", "make serve"): (
        "make targets: installing and starting the server, running the test suite"
    ),
    (
        "docs/observability.md",
        "## Behaviour under overload",
        "cpuslot .venv/bin/python -m bench.soak",
    ): "a 75 s benchmark that starts its own server (bench/soak.py)",
    ("docs/deployment.md", "## The image", "docker build"): DEPLOYMENT,
    ("docs/deployment.md", "## docker compose", "docker compose up"): DEPLOYMENT,
    ("docs/deployment.md", "## Kubernetes", "# Once per cluster"): DEPLOYMENT,
    ("docs/training.md", "## Classifiers", "make train"): TRAINING,
    ("docs/training.md", "## Classifiers", ".venv/bin/python -m training train vit"): TRAINING,
    ("docs/training.md", "## Training on several processes or machines", "torchrun"): TRAINING,
    ("docs/training.md", "## Language models", ".venv/bin/python -m training train lstm"): TRAINING,
    ("docs/image-generation.md", "## The library the service calls", "from service.tasks"): (
        "the in-process library under the service (its sessions and callback left out), "
        "exercised by tests/generate"
    ),
    ("docs/image-generation.md", "## Training the shipped generators", ".venv/bin/python"): (
        TRAINING
    ),
    ("docs/model-repository.md", "# The model repository", "models/"): "a folder layout",
    ("docs/model-repository.md", "## Auto-complete: what is taken from the graph", "{"): (
        "the README's tiny model's completed config: tests/test_readme_own_model.py compares it "
        "with its live server's"
    ),
    ("docs/model-repository.md", "## config.json", "{"): "a config.json's contents",
    ("docs/model-repository.md", "## version_policy", "version_policy:"): "a config.pbtxt line",
    (
        "docs/model-repository.md",
        "## Stateful models (sequence batching with implicit state)",
        "platform:",
    ): "silero-vad's config.pbtxt",
    (
        "docs/model-repository.md",
        "## Stateful models (sequence batching with implicit state)",
        '{"inputs":',
    ): (
        "a request body for silero-vad, which is not shipped (its 512 samples left out); "
        "tests/api/test_any_onnx.py serves it and sends such requests"
    ),
    ("docs/model-repository.md", "## Classification extension", '{"name": "y"'): (
        "an output of the README's tiny model: tests/test_readme_own_model.py compares it with its "
        "live server's"
    ),
    ("docs/model-repository.md", "## Model card (`card.json`)", "{"): (
        "a file training writes (abridged)"
    ),
}


def all_blocks() -> list[Block]:
    return [
        block
        for path in markdown_files(ROOT)
        for block in blocks_of(path.read_text(), str(path.relative_to(ROOT)))
    ]


def listed_as(block: Block) -> list[tuple[str, str, str]]:
    """The NOT_SERVICE entries that name this block."""
    return [
        key
        for key in NOT_SERVICE
        if key[:2] == (block.path, block.heading) and block.first_line.startswith(key[2])
    ]


def runs_elsewhere(block: Block) -> bool:
    return any(path == block.path and heading in block.headings for path, heading in RUN_ELSEWHERE)


def is_service_example(block: Block) -> bool:
    return not listed_as(block) and not runs_elsewhere(block)


def block_id(block: Block) -> str:
    return f"{block.path}:{block.line} {block.heading.lstrip('# ')}"


SERVICE_BLOCKS = [block for block in all_blocks() if is_service_example(block)]


def test_every_block_is_classified() -> None:
    blocks = all_blocks()
    for block in blocks:
        if not is_service_example(block):
            continue
        assert block.language in RUNNABLE and (
            ADDRESS in block.code or GRPC_ADDRESS in block.code
        ), (
            f"{block_id(block)}: a {block.language or 'plain'!r} block starting "
            f"{block.first_line!r} calls no service at {ADDRESS}: make it a runnable example, or "
            "add it to NOT_SERVICE in tests/test_doc_examples.py with the reason"
        )
    for key in NOT_SERVICE:  # the list cannot rot: each entry names exactly one block
        named = [block for block in blocks if key in listed_as(block)]
        assert len(named) == 1, f"NOT_SERVICE {key} names {len(named)} blocks, not 1"
    for path, heading in RUN_ELSEWHERE:
        assert any(b.path == path and heading in b.headings for b in blocks), (path, heading)
    curls = sum(
        line.lstrip().startswith("curl ") for b in SERVICE_BLOCKS for line in b.code.split("\n")
    )
    pythons = sum(block.language == "python" for block in SERVICE_BLOCKS)
    assert curls >= 15 and pythons >= 3, (
        f"the docs lost their examples: {curls} curl, {pythons} python"
    )


# ---------------------------------------------------------------------------------------------
# The live server and the pictures the examples name


@dataclass(frozen=True)
class Place:
    server: Server
    folder: Path  # where the examples run: the pictures are there
    classes: dict[str, int]  # picture (or tensor file) -> its class index


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Place]:
    assert shutil.which("curl"), "the examples need curl: `make example-deps` (Debian's curl)"
    folder = tmp_path_factory.mktemp("examples")
    classes = write_pictures(folder)
    with live_server(ROOT / "models", timeout=90) as server:
        yield Place(server, folder, classes)


def write_pictures(folder: Path) -> dict[str, int]:
    """seven.png, a.png and b.png from the official test splits; one.json is written by the
    README itself (a drawn 1)."""
    from training.data.images import DatasetMissing, load_test_split

    try:
        digits, garments = load_test_split("mnist"), load_test_split("fashion-mnist")
    except DatasetMissing as missing:
        pytest.skip(str(missing))
    assert digits.labels[0] == 7, "MNIST's first test digit is a 7"
    # as a phone would take it: dark on light, larger than 28x28 (the service undoes both)
    Image.fromarray(255 - digits.images[0]).resize((84, 84), Image.Resampling.BICUBIC).save(
        folder / "seven.png"
    )
    Image.fromarray(garments.images[0]).save(folder / "a.png")
    Image.fromarray(garments.images[1]).save(folder / "b.png")
    return {
        "seven.png": 7,
        "a.png": int(garments.labels[0]),
        "b.png": int(garments.labels[1]),
        "one.json": 1,
    }


# ---------------------------------------------------------------------------------------------
# Running the examples


def commands_of(script: str) -> list[str]:
    """The commands of a shell block, each with its continuation lines and multi-line quotes;
    comment lines between them are left out."""
    commands: list[str] = []
    pending: list[str] = []
    for line in script.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending.append(line)
        text = "\n".join(pending)
        if line.endswith("\\"):
            continue
        try:
            shlex.split(text, comments=True)
        except ValueError:  # a quote still open: the command goes on
            continue
        commands.append(text)
        pending = []
    assert not pending, f"unterminated command: {pending}"
    return commands


def environment() -> dict[str, str]:
    no_proxy = ",".join(filter(None, ["127.0.0.1,localhost", os.environ.get("NO_PROXY")]))
    return {**os.environ, "NO_PROXY": no_proxy, "no_proxy": no_proxy}


def localise(code: str, server: Server) -> str:
    code = code.replace(ADDRESS, server.url.removeprefix("http://"))
    if GRPC_ADDRESS in code:
        assert server.grpc, "the example needs gRPC and the live server has none"
        code = code.replace(GRPC_ADDRESS, server.grpc)
    return code


def run(command: list[str], folder: Path, what: str) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(
        command, cwd=folder, env=environment(), capture_output=True, timeout=COMMAND_TIMEOUT_S
    )
    assert done.returncode == 0, (
        f"{what} exited {done.returncode}\nstdout: {done.stdout.decode(errors='replace')[-2000:]}"
        f"\nstderr: {done.stderr.decode(errors='replace')[-2000:]}"
    )
    return done


@pytest.mark.parametrize("block", SERVICE_BLOCKS, ids=block_id)
def test_example_runs(block: Block, place: Place) -> None:
    code = localise(block.code, place.server)
    if block.language == "python":
        script = place.folder / f"example_{block.line}.py"
        script.write_text(code)
        done = run([sys.executable, script.name], place.folder, block_id(block))
        # tritonclient.grpc hands a stream's errors to the example's callback, which prints them
        assert b"[StatusCode." not in done.stdout, f"{block_id(block)}: {done.stdout.decode()}"
        return
    for written, command in zip(commands_of(block.code), commands_of(code), strict=True):
        if not written.startswith("curl "):
            run(["bash", "-c", command], place.folder, f"{block_id(block)}: {written!r}")
            continue
        done = run(
            ["bash", "-c", command.replace("curl ", CURL_CHECKED, 1)],
            place.folder,
            f"{block_id(block)}: {written!r}",
        )
        stderr = done.stderr.decode(errors="replace")
        status = STATUS.search(stderr)
        assert status and 200 <= int(status.group(1)) < 300, f"{written!r}: {stderr}"
        check_answer(shlex.split(written, comments=True), done.stdout, place)


def check_answer(argv: list[str], stdout: bytes, place: Place) -> None:
    """The answer is what the example says it is."""
    urls = [arg for arg in argv if "://" in arg]
    assert len(urls) == 1, f"{argv}: which of {urls} is the example's?"
    url = urls[0]
    path = url.split(ADDRESS, 1)[1].split("?", 1)[0]
    body = argv[argv.index("-d") + 1] if "-d" in argv else ""
    where = f"curl {path}"
    if "-o" in argv:
        output = place.folder / argv[argv.index("-o") + 1]
        assert output.suffix == ".png", f"{where}: writes {output.name}"
        with Image.open(output) as picture:
            assert picture.format == "PNG", f"{where}: {output.name} is no PNG"
            picture.load()
        return
    text = stdout.decode(errors="replace")
    if path == "/metrics":
        names = [family.name for family in text_string_to_metric_families(text)]
        assert any(name.startswith("seedserve_") for name in names), f"{where}: {names}"
    elif path.endswith("/generate_stream") or re.search(r'"stream":\s*true', body):
        check_events(text, openai=path.startswith("/v1/"), where=where)
    else:
        try:
            answer = json.loads(text)
        except json.JSONDecodeError:
            pytest.fail(f"{where}: answers no JSON: {text[:200]!r}")
        assert isinstance(answer, dict) and "error" not in answer, f"{where}: {answer}"
        check_classes(path, argv, answer, place.classes)


def check_events(text: str, openai: bool, where: str) -> None:
    """Server-sent events: each `data: {json}`, OpenAI's ending with `data: [DONE]`, the Open
    Inference Protocol's last one `done: true`; none an error."""
    events = [event for event in text.split("\n\n") if event.strip()]
    assert events and all(event.startswith("data: ") for event in events), f"{where}: {text!r}"
    payloads = [event.removeprefix("data: ") for event in events]
    if openai:
        assert payloads[-1] == "[DONE]", f"{where}: the stream ends {payloads[-1]!r}"
        payloads = payloads[:-1]
    chunks = [json.loads(payload) for payload in payloads]
    assert chunks and not [c for c in chunks if "error" in c], f"{where}: {chunks}"
    if not openai:
        assert chunks[-1]["done"] is True, f"{where}: last event {chunks[-1]}"


def check_classes(
    path: str, argv: list[str], answer: dict[str, Any], classes: dict[str, int]
) -> None:
    """An answer about the pictures (or tensors) the command names gives each its class, in
    order."""
    named = [name for arg in argv for name in re.findall(r"[\w-]+\.(?:png|json)", arg)]
    expected = [classes[name] for name in named if name in classes]
    if path.endswith("/classify"):
        rows = answer["predictions"]
        assert rows, f"curl {path}: {answer}"
        best = [row[0]["index"] for row in rows]
    elif path.endswith("/infer"):
        outputs = {output["name"]: output for output in answer["outputs"]}
        if "probabilities" not in outputs:
            assert not expected, f"curl {path}: no probabilities to check {named} by: {answer}"
            return
        scores = outputs["probabilities"]
        best = np.asarray(scores["data"]).reshape(scores["shape"]).argmax(-1).tolist()
    else:
        assert not expected, f"curl {path}: names {named} but answers no classes: {answer}"
        return
    if expected:
        assert best == expected, f"curl {path}: {named} are classes {expected}, answered {best}"
