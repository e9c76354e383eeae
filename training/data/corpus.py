"""Text corpora for the language models: Jane Austen's six novels, or any user text.

Split: every book is cut into three contiguous pieces at paragraph boundaries, the first 90% of
its tokens for training, the next 5% for validation and the last 5% for test. So every split has
all six books' styles and characters, no paragraph is in two splits, and the test text is never
seen, not even as context. (Holding out whole books was the alternative; it measures
generalisation to unseen character names more than language modelling, and with six books leaves
the test split with one author voice.)

A text is paragraphs joined by blank lines; the R package gives lines, with empty lines between
paragraphs. Underscores are dropped: they are Project Gutenberg's italics markers (_very_).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.tasks.tokenizer import WordTokenizer, split_words
from training.data.rdata import LazyLoadDB, simplify

AUSTEN_DIR = Path(__file__).resolve().parents[2] / "data" / "austen"
# object name in the R package -> title as janeaustenr's austen_books() labels it
AUSTEN_TITLES = {
    "sensesensibility": "Sense & Sensibility",
    "prideprejudice": "Pride & Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
SPLITS = ("train", "validation", "test")


def austen_lines(data_dir: Path = AUSTEN_DIR) -> dict[str, list[str]]:
    """Title -> the book's lines, read from the installed R package's lazy-load database."""
    db = LazyLoadDB(data_dir / "data" / "Rdata")
    return {title: simplify(db.get(name)) for name, title in AUSTEN_TITLES.items()}


def lines_to_text(lines: Sequence[str | None]) -> str:
    """Paragraphs (runs of non-empty lines) joined by blank lines, italics markers removed."""
    paragraphs: list[list[str]] = [[]]
    for line in lines:
        line = (line or "").replace("_", "").strip()
        if line:
            paragraphs[-1].append(line)
        elif paragraphs[-1]:
            paragraphs.append([])
    return "\n\n".join(" ".join(p) for p in paragraphs if p)


def read_texts(path: Path | None) -> dict[str, str]:
    """Name -> text: the Austen novels when `path` is None, else a .txt file or a folder of them."""
    if path is None:
        return {title: lines_to_text(lines) for title, lines in austen_lines().items()}
    files = sorted(path.glob("**/*.txt")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"no .txt files in {path}")
    return {f.stem: f.read_text(encoding="utf-8", errors="replace") for f in files}


def split_text(text: str, fractions: tuple[float, float, float]) -> tuple[str, str, str]:
    """Cut `text` into contiguous (train, validation, test) at paragraph boundaries by token share."""
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    sizes = np.array([len(split_words(p)) + 1 for p in paragraphs])  # +1 for the break
    ends = np.cumsum(sizes) / max(int(sizes.sum()), 1)
    train_end = int(np.searchsorted(ends, fractions[0]))
    valid_end = int(np.searchsorted(ends, fractions[0] + fractions[1]))
    # Tiny texts (tests) would otherwise leave a split empty: keep a paragraph in each if possible.
    train_end = min(max(train_end, 1), max(len(paragraphs) - 2, 1))
    valid_end = min(max(valid_end, train_end + 1), max(len(paragraphs) - 1, train_end + 1))
    cuts = (paragraphs[:train_end], paragraphs[train_end:valid_end], paragraphs[valid_end:])
    return ("\n\n".join(cuts[0]), "\n\n".join(cuts[1]), "\n\n".join(cuts[2]))


@dataclass
class Corpus:
    """Texts of each split (one per book) and their sha256s, for the model card."""

    name: str
    source: str
    splits: dict[str, list[str]]
    sha256: dict[str, str]

    def encode(self, tokenizer: WordTokenizer, split: str) -> np.ndarray:
        """One int64 stream for a split: each book starts with the paragraph (start) token."""
        ids: list[int] = []
        for text in self.splits[split]:
            ids.extend(tokenizer.encode(text, add_bos=True))
        return np.array(ids, dtype=np.int64)


def load_corpus(
    path: Path | None = None, fractions: tuple[float, float, float] = (0.9, 0.05, 0.05)
) -> Corpus:
    """The Austen novels (path None) or user text, split per book into train/validation/test."""
    assert abs(sum(fractions) - 1.0) < 1e-9, f"split fractions must sum to 1, got {fractions}"
    texts = read_texts(path)
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    for text in texts.values():
        for split, piece in zip(SPLITS, split_text(text, fractions), strict=True):
            if piece:
                splits[split].append(piece)
    digests = {name: hashlib.sha256(text.encode()).hexdigest() for name, text in texts.items()}
    if path is None:
        name = "austen"
        source = (
            "Jane Austen's six novels, Debian r-cran-janeaustenr (janeaustenr 1.0.0), "
            "read with training/data/rdata.py"
        )
    else:
        name, source = path.stem, str(path)
    return Corpus(name=name, source=source, splits=splits, sha256=digests)
