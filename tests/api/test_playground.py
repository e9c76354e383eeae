"""The playground's routes: the page and its assets, and the model-files route, which serves only
a version folder's .png and .md files and nothing outside it, however the name is spelled."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.metrics import Metrics
from service.routers.playground import STATIC
from service.settings import Settings

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
KEY = "playground-api-key-0123456789"


@pytest.fixture
def files_dir(models_dir: Path, tmp_path: Path) -> Path:
    """linear-test version 1 with a card, a picture and files that must never be served."""
    version = models_dir / "linear-test" / "1"
    (version / "card.md").write_text("# linear-test\n\n| metric | value |\n|---|---|\n")
    (version / "curves.png").write_bytes(PNG)
    (version / "notes.txt").write_text("not served")
    secret = tmp_path / "secret.png"  # outside the repository
    secret.write_bytes(PNG)
    (version / "leak.png").symlink_to(secret)
    (version / "leak.md").symlink_to(models_dir / "linear-test" / "config.json")
    (version / "folder.png").mkdir()
    return models_dir


@pytest.fixture
def files_client(files_dir: Path) -> Iterator[TestClient]:
    settings = Settings(models_dir=files_dir, access_log=False)
    with TestClient(create_app(settings, Metrics())) as client:
        yield client


def test_root_redirects_to_the_page(client: TestClient) -> None:
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"] == "/playground"
    page = client.get("/playground")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/playground/app.js">' in page.text


@pytest.mark.parametrize("path", ["/playground", "/docs", "/redoc"])
def test_pages_may_use_nothing_but_the_service(client: TestClient, path: str) -> None:
    """Their Content-Security-Policy keeps them air-gapped (the browser tests run under it)."""
    policy = client.get(path).headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'self'"
    for name in ("script-src", "connect-src", "img-src", "style-src"):
        sources = directives.get(name, directives["default-src"]).split()
        assert not [s for s in sources if s not in {"'self'", "'unsafe-inline'", "data:", "blob:"}]
    if path == "/playground":  # it holds the API key: no inline or eval'd script
        assert directives["script-src"] == "'self'"


def test_every_asset_is_served_from_the_service(client: TestClient) -> None:
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    served = [p for p in STATIC.iterdir() if p.suffix in types]
    assert {"app.js", "api.js", "style.css"} <= {p.name for p in served}
    for path in served:
        response = client.get(f"/static/playground/{path.name}")
        assert response.status_code == 200, path.name
        assert response.headers["content-type"].startswith(types[path.suffix])
        assert response.content == path.read_bytes()
    for text in (STATIC / "index.html").read_text(), *(p.read_text() for p in served):
        assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text


def test_the_page_ships_in_the_package() -> None:
    """A non-editable install (the Docker image) carries the page only through package-data."""
    root = STATIC.parents[2]
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = setuptools["package-data"]["service"]
    for path in (STATIC / "index.html", *STATIC.iterdir()):
        inside = path.relative_to(root / "service").as_posix()
        assert any(fnmatch(inside, pattern) for pattern in patterns), inside


@pytest.mark.parametrize(
    "asset",
    ["nope.js", "..%2F..%2Fapp.py", "%2e%2e%2fapp.py", "..", "app.py", ".hidden.js", "a%00.js"],
)
def test_unknown_assets_are_404(client: TestClient, asset: str) -> None:
    assert client.get(f"/static/playground/{asset}").status_code == 404


def test_model_files_are_listed_and_served(files_client: TestClient) -> None:
    listing = files_client.get("/v1/models/linear-test/versions/1/files")
    assert listing.status_code == 200
    assert listing.json() == {
        "model_name": "linear-test",
        "model_version": "1",
        "files": ["card.md", "curves.png"],  # no symlink out, no folder, no .txt/.json/.onnx
    }
    png = files_client.get("/v1/models/linear-test/versions/1/files/curves.png")
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png"
    assert png.content == PNG
    card = files_client.get("/v1/models/linear-test/versions/1/files/card.md")
    assert card.status_code == 200
    assert card.headers["content-type"].startswith("text/markdown")
    assert card.text.startswith("# linear-test")


@pytest.mark.parametrize(
    "path",
    [
        "linear-test/versions/1/files/model.onnx",  # only .png and .md
        "linear-test/versions/1/files/card.json",
        "linear-test/versions/1/files/notes.txt",
        "linear-test/versions/1/files/missing.png",
        "linear-test/versions/1/files/folder.png",  # a folder, not a file
        "linear-test/versions/1/files/leak.png",  # a symlink to a file outside the repository
        "linear-test/versions/1/files/leak.md",  # a symlink to config.json
        "linear-test/versions/1/files/..%2Fconfig.json",
        "linear-test/versions/1/files/..%2F..%2Flinear-test%2F1%2Fcurves.png",
        "linear-test/versions/1/files/%2e%2e%2f%2e%2e%2fsecret.png",
        "linear-test/versions/1/files/%2Fetc%2Fpasswd",
        "linear-test/versions/1/files/..%5C..%5Csecret.png",
        "linear-test/versions/1/files/curves.png%00.md",
        "linear-test/versions/1/files/.png",
        "linear-test/versions/2/files/curves.png",  # no such version
        "linear-test/versions/0/files/curves.png",
        "..%2F..%2Ftmp/versions/1/files/curves.png",
        "%2e%2e/versions/1/files/secret.png",
        "no-such-model/versions/1/files/curves.png",
    ],
)
def test_nothing_else_is_served(files_client: TestClient, path: str) -> None:
    response = files_client.get(f"/v1/models/{path}")
    assert response.status_code == 404, (path, response.status_code)
    assert PNG not in response.content
    assert "error" in response.json()


@pytest.mark.parametrize(
    "url",
    [
        "/v1/models/linear-test/versions/1/files/../../config.json",
        "/v1/models/linear-test/versions/1/files/../1/curves.png",
        "/v1/models/linear-test/versions/1/../../../etc/passwd",
        "/v1/models/linear-test/versions/-1/files/curves.png",
        "/v1/models/linear-test/versions/1.0/files/curves.png",
        "/v1/models/linear-test/versions/99999999999999999999/files/curves.png",
    ],
)
def test_dot_segments_and_bad_versions_do_not_escape(files_client: TestClient, url: str) -> None:
    response = files_client.get(url)
    # httpx and starlette normalise or refuse dot segments; whatever route answers, it is no file
    assert response.status_code == 404, (url, response.status_code)
    assert PNG not in response.content


def test_a_linked_version_folder_serves_only_its_own_files(files_dir: Path, tmp_path: Path) -> None:
    """As repository.py does for graphs: a version folder may be a link (deployments mount them),
    but each file must resolve into that folder."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "curves.png").write_bytes(PNG)
    (outside / "up.png").symlink_to(files_dir / "linear-test" / "1" / "curves.png")
    (files_dir / "linear-test" / "7").symlink_to(outside)
    with TestClient(create_app(Settings(models_dir=files_dir, access_log=False))) as client:
        base = "/v1/models/linear-test/versions/7/files"
        assert client.get(f"{base}/curves.png").status_code == 200
        assert client.get(f"{base}/up.png").status_code == 404
        assert client.get(base).json()["files"] == ["curves.png"]


def test_files_need_the_api_key_when_one_is_set(files_dir: Path) -> None:
    settings = Settings(models_dir=files_dir, access_log=False, api_key=KEY)
    with TestClient(create_app(settings)) as client:
        url = "/v1/models/linear-test/versions/1/files/curves.png"
        assert client.get(url).status_code == 401
        assert client.get(url, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        # the page and its assets are public: the page asks for the key itself
        assert client.get("/playground").status_code == 200
        assert client.get("/static/playground/app.js").status_code == 200


def test_only_the_files_routes_are_in_the_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/models/{model_name}/versions/{version}/files/{filename}" in paths
    assert "/v1/models/{model_name}/versions/{version}/files" in paths
    assert not {"/", "/playground", "/static/playground/{asset}"} & set(paths)


def test_assets_are_not_counted_in_http_metrics(files_dir: Path) -> None:
    metrics = Metrics()
    with TestClient(create_app(Settings(models_dir=files_dir, access_log=False), metrics)) as c:
        c.get("/static/playground/app.js")
        c.get("/v1/models/linear-test/versions/1/files/curves.png")
        text = c.get("/metrics").text
    assert "/static/playground" not in text
    assert 'route="/v1/models/{model_name}/versions/{version}/files/{filename}"' in text
