"""Render a results document (bench/run.py) as markdown tables and a PNG plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PEERS = ("triton", "mlserver", "torchserve", "bentoml")
OURS = "seedserve"
# where the summary goes: the doc holding the bench markers
SUMMARY_DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _row(
    doc: dict[str, Any], system: str, workload: str, concurrency: int
) -> dict[str, Any] | None:
    for row in doc["http"]:
        if (row["system"], row["workload"], row["concurrency"]) == (system, workload, concurrency):
            return row
    return None


def reference_concurrency(doc: dict[str, Any]) -> int:
    """32 when it was measured (the issue's targets are stated there), else the highest."""
    levels = doc["meta"]["concurrency"]
    return 32 if 32 in levels else max(levels)


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for the classifier, each with the measured figure and whether met."""
    c = reference_concurrency(doc)
    ours = _row(doc, OURS, "v2-json", c)
    out: list[dict[str, Any]] = []

    def add(target: str, value: float | None, goal: float, higher_is_better: bool = True) -> None:
        met = None if value is None else (value >= goal if higher_is_better else value <= goal)
        out.append({"target": target, "measured": value, "goal": goal, "met": met})

    naive = _row(doc, "naive-fastapi", "v2-json", c)
    add(
        f"JSON V2 at c={c}: ours / naive FastAPI ≥ 1.3",
        ours["rps"] / naive["rps"] if ours and naive else None,
        1.3,
    )
    add(
        f"JSON V2 at c={c}: p99 ours / naive ≤ 1 (no worse)",
        ours["p99_ms"] / naive["p99_ms"] if ours and naive else None,
        1.0,
        higher_is_better=False,
    )
    peers = [r for p in PEERS if (r := _row(doc, p, "v2-json", c)) is not None]
    best = max(peers, key=lambda r: r["rps"], default=None)
    add(
        f"JSON V2 at c={c}: ours / best peer ({best['system'] if best else '—'}) ≥ 1.5",
        ours["rps"] / best["rps"] if ours and best else None,
        1.5,
    )
    binary = _row(doc, OURS, "v2-binary", c)
    add(
        f"binary V2 / JSON V2 throughput at c={c} ≥ 2",
        binary["rps"] / ours["rps"] if binary and ours else None,
        2.0,
    )
    binary_big = _row(doc, OURS, "v2-binary-b16", c)
    json_big = _row(doc, OURS, "v2-json-b16", c)
    add(
        f"binary V2 / JSON V2 throughput at c={c}, 16 pictures per request ≥ 2",
        binary_big["rps"] / json_big["rps"] if binary_big and json_big else None,
        2.0,
    )
    binary1 = _row(doc, OURS, "v2-binary", 1)
    ort = doc["inprocess"]["ort_batch1"]
    add(
        "binary V2 at c=1: p50 minus in-process onnxruntime p50 ≤ 0.5 ms",
        binary1["p50_ms"] - ort["p50_ms"] if binary1 else None,
        0.5,
        higher_is_better=False,
    )
    return out


def markdown(doc: dict[str, Any]) -> str:
    meta, inproc = doc["meta"], doc["inprocess"]
    lines = [
        f"# Benchmark: {meta['model']} version {meta['version']}",
        "",
        f"{meta['started']} · {meta['machine']} · onnxruntime {meta['onnxruntime']} · load "
        f"generator `{meta['generator']}` · {meta['duration_s']:g} s per point · "
        f"{'median of ' + str(meta['repeats']) + ' interleaved rounds' if meta['repeats'] > 1 else 'one round'}"
        f" · input: {meta['input']}. Every server was checked to answer what in-process "
        "onnxruntime answers before it was loaded.",
        "",
        "## In process (the ceiling)",
        "",
        "| what | batch | calls/s | items/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    entries = [
        ("onnxruntime `run`", inproc["ort_batch1"]),
        ("onnxruntime `run`, best batch", inproc["ort_best"]),
        ("onnxruntime + V2 JSON decode/encode", inproc["ort_json_batch1"]),
        ("PyTorch eager", inproc.get("torch_batch1")),
        ("PyTorch eager, best batch", inproc.get("torch_best")),
    ]
    for label, stats in entries:
        if stats:
            lines.append(
                f"| {label} | {stats['batch']} | {_num(stats['calls_per_s'])} | "
                f"{_num(stats['items_per_s'])} | {_num(stats['p50_ms'], 3)} | {_num(stats['p99_ms'], 3)} |"
            )
    if inproc.get("torch_note"):
        lines += ["", f"PyTorch: {inproc['torch_note']}."]
    ceiling = inproc["ort_best"]["items_per_s"]

    levels = meta["concurrency"]
    lines += [
        "",
        "## Over HTTP on loopback: requests/s by concurrency",
        "",
        "| system | workload | " + " | ".join(f"c={c}" for c in levels) + " |",
        "|---|---|" + "---|" * len(levels),
    ]
    pairs = list(dict.fromkeys((r["system"], r["workload"]) for r in doc["http"]))
    for system, workload in pairs:
        cells = []
        for c in levels:
            row = _row(doc, system, workload, c)
            cells.append(_num(row["rps"]) if row else "—")
        lines.append(f"| {system} | {workload} | " + " | ".join(cells) + " |")

    return "\n".join([*lines, *_reference(doc, pairs, ceiling), *_outcomes(doc)]) + "\n"


def pictures_per_request(workload: str) -> int:
    """16 for "v2-json-b16", else 1."""
    _, _, suffix = workload.rpartition("-b")
    return int(suffix) if suffix.isdigit() else 1


def _reference(doc: dict[str, Any], pairs: list[tuple[str, str]], ceiling: float) -> list[str]:
    c = reference_concurrency(doc)
    ours = _row(doc, OURS, "v2-json", c)
    lines = [
        "",
        f"## At concurrency {c}",
        "",
        "Ratios are same-run: `× ceiling` is pictures/s over in-process onnxruntime at its best "
        "batch (a `-b16` request carries 16 pictures); `ours ×` is our JSON V2 requests/s over "
        "this row's. CPU is the server's whole process tree; RSS idle → after load.",
        "",
        "| system | workload | req/s | p50 ms | p90 ms | p99 ms | CPU s / 1k req | RSS MB | × ceiling | ours × | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for system, workload in pairs:
        row = _row(doc, system, workload, c)
        if row is None:
            continue
        lines.append(
            f"| {system} | {workload} | {_num(row['rps'])} | {_num(row['p50_ms'], 2)} | "
            f"{_num(row['p90_ms'], 2)} | {_num(row['p99_ms'], 2)} | {_num(row['cpu_s_per_1k'], 2)} | "
            f"{_num(row['rss_idle_mb'])} → {_num(row['rss_mb'])} | "
            f"{row['rps'] * pictures_per_request(workload) / ceiling:.3f} | "
            f"{_num(ours['rps'] / row['rps'], 2) if ours and row['rps'] else '—'} | {row['errors']} |"
        )
    return lines


def _outcomes(doc: dict[str, Any]) -> list[str]:
    """Targets, cold start, what was not measured and the systems."""
    lines = ["", "## Targets (issue #5)", "", "| target | measured | met |", "|---|---|---|"]
    for t in targets(doc):
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {_num(t['measured'], 2)} | {met} |")
    cold = doc.get("cold_start") or {}
    if cold:
        lines += [
            "",
            "## Cold start",
            "",
            f"`python -m service` to ready with all {len(cold['models'])} shipped models "
            f"({', '.join(cold['models'])}): first start {_num(cold.get('first_s'), 2)} s, "
            f"second start {_num(cold.get('second_s'), 2)} s "
            f"(RSS {_num(cold.get('second_rss_mb'))} MB)."
            + (f" Error: {cold['error']}" if cold.get("error") else ""),
        ]
    if doc["skipped"]:
        lines += ["", "## Not measured", ""]
        lines += [f"- {name}: {why}" for name, why in doc["skipped"].items()]
    lines += ["", "## Systems", ""]
    lines += [f"- **{name}**: {text}" for name, text in doc["systems"].items()]
    return lines


def summary(doc: dict[str, Any]) -> str:
    """The excerpt docs/benchmarks.md shows: the reference concurrency and the targets."""
    meta = doc["meta"]
    pairs = list(dict.fromkeys((r["system"], r["workload"]) for r in doc["http"]))
    ceiling = doc["inprocess"]["ort_best"]["items_per_s"]
    ort = doc["inprocess"]["ort_batch1"]
    lines = [
        f"Latest run ({meta['started']}, {meta['model']}, `{meta['generator']}`, "
        f"{meta['duration_s']:g} s per point; full report in `bench/results/report.md`): "
        f"in-process onnxruntime {_num(ort['calls_per_s'])} calls/s at batch 1, "
        f"{_num(ceiling)} items/s at its best batch ({doc['inprocess']['ort_best']['batch']}), "
        f"{_num(doc['inprocess']['ort_json_batch1']['calls_per_s'])}/s with JSON decode/encode.",
        *_reference(doc, pairs, ceiling),
        *_outcomes(doc),
    ]
    text = "\n".join(lines).replace("\n## ", "\n#### ")
    return text.split("\n#### Not measured")[0].split("\n#### Systems")[0].rstrip() + "\n"


def write_doc_summary(doc: dict[str, Any], path: Path = SUMMARY_DOC) -> None:
    """Replace what is between the bench markers of `path` with `summary(doc)`."""
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    text = path.read_text()
    if start not in text or end not in text:
        raise ValueError(f"{path} has no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    path.write_text(f"{head}{start}\n{summary(doc)}{end}{rest.split(end, 1)[1]}")


def plot(doc: dict[str, Any], path: Path) -> bool:
    """Requests/s and p99 by concurrency, one line per system and workload; False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    pairs = list(dict.fromkeys((r["system"], r["workload"]) for r in doc["http"]))
    for system, workload in pairs:
        rows = sorted(
            (r for r in doc["http"] if (r["system"], r["workload"]) == (system, workload)),
            key=lambda r: r["concurrency"],
        )
        xs = [r["concurrency"] for r in rows]
        style = "-" if system.startswith(OURS) else "--"
        label = f"{system} {workload}"
        left.plot(xs, [r["rps"] for r in rows], style, marker="o", label=label)
        right.plot(xs, [r["p99_ms"] for r in rows], style, marker="o", label=label)
    json_ceiling = doc["inprocess"]["ort_json_batch1"]["calls_per_s"]
    left.axhline(json_ceiling, color="grey", linestyle=":", label="in-process ORT + JSON, batch 1")
    for ax, title in ((left, "requests/s"), (right, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    right.set_yscale("log")
    left.legend(fontsize=7)
    fig.suptitle(
        f"{doc['meta']['model']}: batch-1 requests over loopback ({doc['meta']['started']})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
