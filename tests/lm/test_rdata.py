"""The pure-Python R reader, on the real janeaustenr package and on hand-made bytes."""

from __future__ import annotations

import struct

import pytest

from training.data.corpus import AUSTEN_DIR, AUSTEN_TITLES, austen_lines, load_corpus
from training.data.rdata import LazyLoadDB, simplify, unserialize

needs_austen = pytest.mark.skipif(
    not (AUSTEN_DIR / "data" / "Rdata.rdx").exists(),
    reason="data/austen is absent: run `make data`",
)


@needs_austen
def test_six_books_with_their_titles_and_openings() -> None:
    db = LazyLoadDB(AUSTEN_DIR / "data" / "Rdata")
    assert sorted(db.names()) == sorted(AUSTEN_TITLES)
    books = austen_lines()
    assert list(books) == list(AUSTEN_TITLES.values())
    assert books["Pride & Prejudice"][0] == "PRIDE AND PREJUDICE"
    assert (
        "It is a truth universally acknowledged, that a single man in possession"
        in (books["Pride & Prejudice"][:12])
    )
    assert books["Sense & Sensibility"][0] == "SENSE AND SENSIBILITY"
    assert books["Emma"][0] == "EMMA"
    assert books["Persuasion"][0] == "Persuasion"
    # line counts of janeaustenr 1.0.0
    assert {t: len(lines) for t, lines in books.items()} == {
        "Sense & Sensibility": 12624,
        "Pride & Prejudice": 13030,
        "Mansfield Park": 15349,
        "Emma": 16235,
        "Northanger Abbey": 7856,
        "Persuasion": 8328,
    }


@needs_austen
def test_splits_are_contiguous_and_disjoint() -> None:
    corpus = load_corpus()
    for train, valid, test in zip(*corpus.splits.values(), strict=True):
        assert train and valid and test
        n = len(train) + len(valid) + len(test)
        assert 0.85 < len(train) / n < 0.95  # about 90 / 5 / 5 of each book
        assert valid[:200] not in train and test[:200] not in train and test[:200] not in valid


def xdr(*items: bytes) -> bytes:
    """A version-3 XDR serialization header followed by items."""
    header = b"X\n" + struct.pack(">iii", 3, 0x040201, 0x030500) + struct.pack(">i", 5) + b"UTF-8"
    return header + b"".join(items)


def i32(*values: int) -> bytes:
    return struct.pack(f">{len(values)}i", *values)


def test_factor_data_frame_and_references() -> None:
    utf8 = 9 | (1 << 3 << 12)  # CHARSXP flagged UTF-8
    names_sym = i32(1) + i32(utf8, 5) + b"names"  # SYMSXP "names", becomes reference 1

    def string(text: str) -> bytes:
        return i32(utf8, len(text.encode())) + text.encode()

    # factor(c("b", "a", "b")): INTSXP codes with attributes levels and class
    factor = (
        i32(13 | (1 << 8) | (1 << 9), 3, 2, 1, 2)
        + i32(2 | (1 << 10))  # attribute pairlist cell with a tag
        + i32(1)
        + i32(utf8, 6)
        + b"levels"
        + i32(16, 2)
        + string("a")
        + string("b")
        + i32(2 | (1 << 10))
        + i32(1)
        + i32(utf8, 5)
        + b"class"
        + i32(16, 1)
        + string("factor")
        + i32(254)
    )
    # list(x = factor, y = c(1.5, NA)) with names; the second "names" symbol is a REFSXP
    frame = (
        i32(19 | (1 << 9), 2)
        + factor
        + i32(14, 2)
        + struct.pack(">d", 1.5)
        + struct.pack(">d", float("nan"))
        + i32(2 | (1 << 10))
        + names_sym
        + i32(16, 2)
        + string("x")
        + string("y")
        + i32(254)
    )
    value = simplify(unserialize(xdr(frame)))
    assert list(value) == ["x", "y"]
    assert value["x"] == ["b", "a", "b"]
    assert value["y"][0] == 1.5

    with_ref = xdr(i32(19, 2) + names_sym + i32((1 << 8) | 255))  # list(`names`, <ref 1>)
    items = unserialize(with_ref).value
    assert items[0] is items[1] and items[0].value == "names"
