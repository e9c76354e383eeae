"""Browser fixtures: the system Chromium driven by Playwright (never a downloaded browser), the
real service on a loopback port over a copy of the real models/ folder, and screenshots kept as
CI artifacts in artifacts/browser/ (git-ignored; or $ARTIFACTS_DIR).

Chromium missing is a failure, not a skip: `make browser-deps` installs it (Debian `chromium`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from helpers.live_server import ROOT, Server, live_server
from helpers.onnx_builders import (
    write_decoder_generator,
    write_diffusion_generator,
    write_language_model,
)
from helpers.shipped_models import link_or_copy
from playwright.sync_api import (
    BrowserContext,
    ConsoleMessage,
    Locator,
    Page,
    Playwright,
    Request,
    sync_playwright,
)

from service.app import create_app
from service.settings import Settings

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("ARTIFACTS_DIR") or ROOT / "artifacts" / "browser")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
API_KEY = "playground-browser-test-key-0123"
LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives the playground in headless Chromium")


@dataclass
class Service:
    """The running service and which models of each task it serves."""

    server: Server
    models: dict[str, list[str]]
    language_model_routes: bool

    @property
    def url(self) -> str:
        return self.server.url


@dataclass
class Pages:
    """Opens pages that record every request and uncaught error, for checks at teardown."""

    context: BrowserContext
    opened: list[Page] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)  # by the page's Content-Security-Policy
    violations: list[str] = field(default_factory=list)  # the browser's messages about them
    errors: list[str] = field(default_factory=list)

    def open(self, url: str, api_key: str | None = None) -> Page:
        page = self.context.new_page()
        if api_key:  # what the page's API key field stores; the field itself is tested once
            page.add_init_script(
                f"sessionStorage.setItem('seedserve.apiKey', {json.dumps(api_key)})"
            )
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("requestfailed", self._failed)
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.opened.append(page)
        page.goto(url)
        return page

    def _failed(self, request: Request) -> None:
        if request.failure == "csp":  # Chromium's reason: refused before it was sent
            self.blocked.append(request.url)

    def _console(self, message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            self.violations.append(message.text)


def _chromium() -> Path:
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's chromium package "
            "(run `make browser-deps`, i.e. apt-get install -y chromium)",
            pytrace=False,
        )
    return CHROMIUM


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def context(
    playwright: Playwright, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrowserContext]:
    """A fresh profile (user data dir) in headless system Chromium; no browser is downloaded."""
    context = playwright.chromium.launch_persistent_context(
        str(tmp_path_factory.mktemp("chromium-profile")),
        executable_path=str(_chromium()),
        headless=True,
        args=LAUNCH_ARGS,
        viewport={"width": 1360, "height": 900},
        reduced_motion="reduce",
    )
    context.set_default_timeout(30_000)
    yield context
    context.close()


@pytest.fixture
def pages(context: BrowserContext) -> Iterator[Pages]:
    """Every page a test opens; afterwards: no uncaught script error, no request off loopback
    (one the page's Content-Security-Policy refused was never sent), nothing local refused."""
    tracker = Pages(context)
    yield tracker
    for page in tracker.opened:
        page.close()
    assert not tracker.errors, f"uncaught errors in the page: {tracker.errors}"
    outside = [u for u in tracker.requests if not _local(u) and u not in tracker.blocked]
    assert not outside, f"requests left the machine: {outside}"
    # the policy only ever stops what would have left the machine, never the pages' own work
    stopped_here = [v for v in tracker.violations if not any(u in v for u in tracker.blocked)]
    assert not stopped_here, f"the Content-Security-Policy broke the page: {stopped_here}"


def _local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in {"data", "blob"} or (
        parts.scheme in {"http", "https", "ws"} and parts.hostname in LOOPBACK
    )


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def screenshot(artifacts: Path) -> Callable[[Page | Locator, str], Path]:
    def take(target: Page | Locator, name: str) -> Path:
        path = artifacts / f"{name}.png"
        # the sticky top bar would cover a tall element as the screenshot scrolls through it
        target.screenshot(path=str(path), style=".topbar { position: static !important; }")
        return path

    return take


def serves_language_models() -> bool:
    """Whether this service has the language-model endpoints yet (next-word, completions)."""
    paths = create_app(Settings(access_log=False)).openapi()["paths"]
    return "/v1/completions" in paths and "/v1/models/{model_name}/next-word" in paths


def assemble_models(destination: Path) -> dict[str, list[str]]:
    """The real models/ (hard links, no copying when possible), plus tiny test models for a task
    that has no real model yet, so every section of the page has something to show."""
    destination.mkdir(parents=True)
    models: dict[str, list[str]] = defaultdict(list)
    for folder in sorted((ROOT / "models").iterdir()):
        config = folder / "config.json"
        if not config.is_file():
            continue
        task = json.loads(config.read_text()).get("task", "")
        shutil.copytree(folder, destination / folder.name, copy_function=link_or_copy)
        models[task].append(folder.name)
    if not models["image-generation"]:
        write_diffusion_generator(destination, "diffusion-test")
        write_decoder_generator(destination, "gan-test")
        models["image-generation"] += ["diffusion-test", "gan-test"]
    if not models["language-model"] and serves_language_models():
        write_language_model(destination, "rnn-test")
        write_language_model(destination, "transformer-test", cache=True)
        models["language-model"] += ["rnn-test", "transformer-test"]
    return dict(models)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The real service (`python -m service`) with an API key, on a free loopback port."""
    models_dir = tmp_path_factory.mktemp("playground") / "models"
    models = assemble_models(models_dir)
    assert "cnn-mnist" in models.get("classification", []), (
        "the browser tests need the shipped cnn-mnist classifier in models/"
    )
    env = {"SEEDSERVE_API_KEY": API_KEY, "SEEDSERVE_PROVIDER": "cpu"}
    with live_server(models_dir, env=env, timeout=180) as server:
        yield Service(server, models, serves_language_models())
