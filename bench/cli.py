"""What the one-run benchmarks (`bench.generation`, `bench.compute`) share on the command line:
`--quick`, `--out`, `--generator`, and writing `<name>.json` and `<name>.md`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.loadgen import wrk_available

RESULTS = Path(__file__).resolve().parent / "results"


def parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--quick", action="store_true", help="a smoke run of seconds")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--generator",
        choices=("wrk", "python"),
        default="wrk" if wrk_available() else "python",
        help="load generator (default wrk when installed)",
    )
    return parser


def write_results(out: Path, name: str, doc: dict[str, Any], report: str) -> None:
    """`name`.json and `name`.md in `out`; the report is printed too."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / f"{name}.md").write_text(report)
    print(report)
