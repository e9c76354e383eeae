"""The browser playground (`/playground`, its assets) and the files of a model version (its
card.md and pictures such as curves.png), which the playground shows next to each model.

Only `.png` and `.md` files are served from a version folder, by validated name, and only when the
resolved path stays inside that folder (a symlink pointing elsewhere is refused too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, RedirectResponse, Response

from service.auth import InferenceAuth
from service.deps import RegistryDep
from service.errors import ModelNotFound
from service.protocol.types import ErrorResponse, ModelFileList
from service.repository import Repository, check_name

STATIC = Path(__file__).resolve().parent.parent / "static" / "playground"
ASSETS_PREFIX = "/static/playground"  # under /static/: not counted in the HTTP metrics
ASSET_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
MODEL_FILE_TYPES = {".png": "image/png", ".md": "text/markdown; charset=utf-8"}
# The page runs only its own scripts and talks only to this service (it holds the API key):
# no inline or eval'd script; pictures from the service or made in the page (data:, blob:).
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)

router = APIRouter()


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    return RedirectResponse("/playground", status_code=307)


@router.get("/playground", include_in_schema=False)
async def playground() -> FileResponse:
    return FileResponse(
        STATIC / "index.html",
        media_type=ASSET_TYPES[".html"],
        headers={"Content-Security-Policy": PAGE_POLICY},
    )


@router.get(ASSETS_PREFIX + "/{asset}", include_in_schema=False)
async def playground_asset(asset: str) -> FileResponse:
    path = (STATIC / check_name(asset, "asset")).resolve()
    if path.parent != STATIC or path.suffix not in ASSET_TYPES or not path.is_file():
        raise ModelNotFound(f"no playground asset {asset!r}")
    return FileResponse(path, media_type=ASSET_TYPES[path.suffix])


def version_number(name: str, version: str) -> int:
    """A version folder's number; a version that is no number is no version there: 404, as on
    the Open Inference Protocol's routes."""
    if not (version.isascii() and version.isdigit() and len(version) <= 10):
        raise ModelNotFound(f"model {name!r} has no version {version!r}")
    return int(version)


def model_file(repository: Repository, name: str, version: int, filename: str) -> Path:
    """The path of a servable file of a model version; ModelNotFound for anything else."""
    folder = repository.version_dir(name, version).resolve()
    path = (folder / check_name(filename, "file name")).resolve()
    if path.parent != folder or path.suffix not in MODEL_FILE_TYPES or not path.is_file():
        raise ModelNotFound(
            f"model {name!r} version {version} has no file {filename!r} "
            "(only its .png and .md files are served)"
        )
    return path


VersionParam = PathParam(description="The model version (its folder), e.g. `1`.")
FILE_ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse}}


@router.get(
    "/v1/models/{model_name}/versions/{version}/files",
    tags=["models"],
    dependencies=[InferenceAuth],
    response_model=ModelFileList,
    responses=FILE_ERRORS,
)
async def list_model_files(
    registry: RegistryDep, model_name: str, version: str = VersionParam
) -> ModelFileList:
    """The card and pictures (`.md`, `.png`) of a model version, by name."""
    repository = registry.repository
    folder = repository.version_dir(model_name, version_number(model_name, version)).resolve()
    names = sorted(
        p.name
        for p in folder.iterdir()
        if p.suffix in MODEL_FILE_TYPES and p.is_file() and p.resolve().parent == folder
    )
    return ModelFileList(model_name=model_name, model_version=version, files=names)


@router.get(
    "/v1/models/{model_name}/versions/{version}/files/{filename}",
    tags=["models"],
    dependencies=[InferenceAuth],
    response_class=Response,
    responses={
        **FILE_ERRORS,
        200: {
            "description": "The file: a PNG picture or the Markdown model card.",
            "content": {"image/png": {}, "text/markdown": {}},
        },
    },
)
async def get_model_file(
    registry: RegistryDep, model_name: str, filename: str, version: str = VersionParam
) -> FileResponse:
    """One `.png` or `.md` file of a model version (card.md, curves.png, samples.png...)."""
    path = model_file(
        registry.repository, model_name, version_number(model_name, version), filename
    )
    return FileResponse(path, media_type=MODEL_FILE_TYPES[path.suffix])
