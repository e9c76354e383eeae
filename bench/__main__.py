"""`python -m bench [options]`: measure the service against the in-process ceiling, a naive
FastAPI handler and the peers (Triton, MLServer, TorchServe, BentoML) in one run.

    python -m bench                                  # everything, 10 s per point (~15 min)
    python -m bench --smoke                          # seconds: ours + naive, tiny load
    python -m bench --systems seedserve,triton --concurrency 32 --duration 5 --repeats 3
    python -m bench --repeats 3 --doc                # and its summary into docs/benchmarks.md

Writes results.json, report.md and plot.png to --out (default bench/results). Peers are
installed into build/bench-venvs/<peer> on first use (PyPI; --no-install skips missing ones).
Run it on an otherwise idle machine: it loads every core it is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.report import SUMMARY_DOC, markdown, plot, write_doc_summary
from bench.run import DEFAULT_SYSTEMS, Options, run
from bench.systems import ROOT, SYSTEMS


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("concurrency levels must be at least 1")
    return values


def _systems(text: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown system(s) {unknown}; known: {', '.join(SYSTEMS)}"
        )
    return names


def parse(argv: list[str]) -> tuple[Options, Path, Path | None]:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", default="cnn-mnist", help="model in --models-dir")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--systems", type=_systems, default=DEFAULT_SYSTEMS, help="comma-separated")
    parser.add_argument("--concurrency", type=_ints, help="default 1,8,32,128 (smoke: 1,8)")
    parser.add_argument("--duration", type=float, help="seconds per point (default 10, smoke 1)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds (medians)")
    parser.add_argument(
        "--workloads",
        type=lambda text: tuple(w.strip() for w in text.split(",") if w.strip()),
        default=(),
        help="comma-separated (v2-json, v2-binary, classify-png, grpc, ...); default every one",
    )
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--inprocess", type=float, help="seconds for the ceiling (default 8)")
    parser.add_argument("--no-install", action="store_true", help="skip peers not installed")
    parser.add_argument("--no-cold-start", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--doc",
        type=Path,
        nargs="?",
        const=SUMMARY_DOC,
        help="also write the summary between the bench markers of this file "
        "(docs/benchmarks.md when no file is given)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="ours + naive only, concurrency 1 and 8, 1 s per point, no peers, no cold start",
    )
    args = parser.parse_args(argv)
    smoke = args.smoke
    args.concurrency = args.concurrency or ((1, 8) if smoke else (1, 8, 32, 128))
    args.duration = args.duration or (1.0 if smoke else 10.0)
    args.inprocess = args.inprocess or (1.0 if smoke else 8.0)
    if args.duration <= 0 or args.repeats < 1:
        parser.error("--duration must be positive and --repeats at least 1")
    options = Options(
        model=args.model,
        models_dir=args.models_dir,
        systems=args.systems,
        concurrency=args.concurrency,
        duration_s=args.duration,
        repeats=args.repeats,
        generator=args.generator,
        inprocess_s=args.inprocess,
        install_peers=not args.no_install,
        cold_start=not args.no_cold_start,
        workloads=args.workloads,
    )
    if smoke:
        options.systems = ("seedserve", "naive-fastapi")
        options.install_peers = False
        options.cold_start = False
    return options, args.out, args.doc


def main(argv: list[str]) -> int:
    options, out, summary_doc = parse(argv)
    doc = run(options)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    report = markdown(doc)
    (out / "report.md").write_text(report)
    plot(doc, out / "plot.png")
    if summary_doc is not None:
        write_doc_summary(doc, summary_doc)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
