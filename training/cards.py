"""What every card and generated table is made of: markdown tables, a block between markers
replaced in a document, and a training-curves figure saved as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: training runs headless
from matplotlib.figure import Figure


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def replace_block(text: str, start: str, end: str, block: str) -> str:
    """`text` with the block between the markers replaced (appended when absent)."""
    if start in text and end in text:
        return text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    return text.rstrip("\n") + "\n\n" + block + "\n"


def save_figure(figure: Figure, title: str, path: Path, dpi: int = 80) -> Path:
    """Title, tight layout, PNG at `path`, and the figure closed."""
    import matplotlib.pyplot as plt

    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path
