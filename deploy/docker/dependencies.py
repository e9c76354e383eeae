"""Print the project's runtime dependencies (pyproject.toml `[project].dependencies`), one a line.

The image installs them in a layer of their own, before the code, so that a change to the code
reuses the cached dependencies. `--onnxruntime PACKAGE` swaps the onnxruntime requirement for
another distribution of it (the GPU image's `onnxruntime-gpu==...`).
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path


def runtime_dependencies(pyproject: Path, onnxruntime: str | None = None) -> list[str]:
    """The `[project].dependencies` of `pyproject`, with onnxruntime replaced when asked."""
    with pyproject.open("rb") as file:
        requirements: list[str] = tomllib.load(file)["project"]["dependencies"]
    if onnxruntime is None:
        return requirements
    kept = [r for r in requirements if _name(r) != "onnxruntime"]
    if len(kept) == len(requirements):
        raise SystemExit(f"{pyproject} does not depend on onnxruntime: nothing to replace")
    return [*kept, onnxruntime]


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, f"not a requirement: {requirement!r}"
    return match.group(0).lower().replace("_", "-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("pyproject", type=Path, nargs="?", default=Path("pyproject.toml"))
    parser.add_argument("--onnxruntime", help="requirement that replaces onnxruntime")
    args = parser.parse_args()
    print("\n".join(runtime_dependencies(args.pyproject, args.onnxruntime)))


if __name__ == "__main__":
    main()
