"""Word-level tokenizer shared by training and the service (stdlib only: no torch, no numpy).

Splitting: a word is a run of letters/digits, with inner apostrophes kept ("don't", "ma'am",
"o'clock") except a possessive "'s", which is its own token ("Emma's" -> "Emma" "'s") so names do
not double the vocabulary. Every other visible character is a token of its own, except "--" (a
dash) which stays one token. A blank line (paragraph break) is the token "\\n", which is also
what a text starts with (see `bos_id`): the models always have one token of context.

Case is kept (the default): the models then write "Elizabeth" and "I" themselves, at the cost of
a few duplicate entries ("The"/"the"). With `lowercase=True` ids are looked up folded, but
`Token.text` always keeps what the user typed, so echoing a prompt never changes it.

Detokenization puts spaces back with simple English rules (no space before , . ; : ! ? ) 's,
none around - and --, quotes open and close by parity); `Detokenizer` does it one token at a
time so generated text can be streamed.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UNK = "<unk>"
PARAGRAPH = "\n"

# A paragraph break, a word (inner apostrophes allowed), a dash, or any other visible character.
TOKEN_PATTERN = re.compile(r"\n[ \t\r\f\v]*\n\s*|[^\W_]+(?:['’][^\W_]+)*|--|\S")
POSSESSIVE = re.compile(r"^(.+?)(['’][sS])$")

NO_SPACE_BEFORE = frozenset(",.;:!?)]}%")
NO_SPACE_AFTER = frozenset("([{$£")
JOINERS = frozenset({"-", "--", "/"})  # glued to both neighbours: "to-morrow", "tart--a"
QUOTES = frozenset({'"', "'"})


@dataclass(frozen=True)
class Token:
    """One token of a text: the exact characters typed, its id, and where it sits in the text."""

    text: str
    id: int
    start: int
    end: int


def split_words(text: str) -> list[tuple[str, int, int]]:
    """(token text, start, end) for every token of `text`; paragraph breaks become "\\n"."""
    pieces: list[tuple[str, int, int]] = []
    for match in TOKEN_PATTERN.finditer(text):
        piece, start, end = match.group(), match.start(), match.end()
        if piece[0] == "\n":
            pieces.append((PARAGRAPH, start, end))
            continue
        possessive = POSSESSIVE.match(piece) if piece[0].isalnum() else None
        if possessive:
            stem = possessive.group(1)
            pieces.append((stem, start, start + len(stem)))
            pieces.append((possessive.group(2), start + len(stem), end))
        else:
            pieces.append((piece, start, end))
    return pieces


class Detokenizer:
    """Turns tokens back into text one at a time, deciding the space before each.

    `push(token)` returns the text to append: the token with a leading space or not. Feed the
    prompt's tokens first (their output can be ignored) so quotes and spacing continue from it.
    """

    def __init__(self) -> None:
        self.previous: str | None = None
        self.open_quotes: dict[str, bool] = {q: False for q in QUOTES}

    def push(self, token: str) -> str:
        previous, self.previous = self.previous, token
        if token == PARAGRAPH:
            self.open_quotes = {q: False for q in QUOTES}  # quotes never span paragraphs here
            return "" if previous is None else "\n\n"
        if token in QUOTES:
            opening = not self.open_quotes[token]
            self.open_quotes[token] = opening
            space = opening and not self.glued_after(previous)
        else:
            space = not (
                self.glued_after(previous)
                or token[0] in NO_SPACE_BEFORE
                or token in JOINERS
                or token[0] in "'’"  # 's, 'll
            )
        return (" " if space else "") + token

    def glued_after(self, previous: str | None) -> bool:
        """Whether the next token attaches to `previous` with no space."""
        if previous is None or previous == PARAGRAPH:
            return True
        if previous in QUOTES:
            return self.open_quotes[previous]  # just after an opening quote
        return previous in JOINERS or previous[-1] in NO_SPACE_AFTER


def detokenize(tokens: Iterable[str]) -> str:
    """Join token strings into text with sensible spacing."""
    detokenizer = Detokenizer()
    return "".join(detokenizer.push(t) for t in tokens)


class WordTokenizer:
    """Word-level vocabulary: id 0 is `<unk>`, id 1 the paragraph break (also the start token)."""

    def __init__(self, words: list[str], lowercase: bool = False) -> None:
        assert words[:2] == [UNK, PARAGRAPH], (
            "vocabulary must start with <unk> and the paragraph token"
        )
        assert len(set(words)) == len(words), "vocabulary has duplicate words"
        self.words = words
        self.lowercase = lowercase
        self.ids = {w: i for i, w in enumerate(words)}
        self.unk_id = 0
        self.bos_id = 1  # the paragraph break: every text is read as if a paragraph just began

    def __len__(self) -> int:
        return len(self.words)

    # -- building and saving -------------------------------------------------------------------
    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int, min_count: int = 1, lowercase: bool = False
    ) -> WordTokenizer:
        """The `vocab_size - 2` most frequent tokens (seen at least `min_count` times) + specials.

        Ties are broken alphabetically so the vocabulary does not depend on dict order.
        """
        counts: Counter[str] = Counter()
        for text in texts:
            pieces = (piece for piece, _, _ in split_words(text))
            counts.update(p.lower() if lowercase else p for p in pieces)
        counts.pop(PARAGRAPH, None)
        ranked = sorted(
            (c for c in counts.items() if c[1] >= min_count), key=lambda c: (-c[1], c[0])
        )
        words = [UNK, PARAGRAPH] + [w for w, _ in ranked[: vocab_size - 2]]
        return cls(words, lowercase=lowercase)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "word",
            "lowercase": self.lowercase,
            "unk": UNK,
            "paragraph": PARAGRAPH,
            "bos_id": self.bos_id,
            "words": self.words,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WordTokenizer:
        if data.get("type") != "word":
            raise ValueError(f"not a word vocabulary (type {data.get('type')!r})")
        return cls(list(data["words"]), lowercase=bool(data.get("lowercase", False)))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=0) + "\n")

    @classmethod
    def load(cls, path: Path) -> WordTokenizer:
        return cls.from_json(json.loads(path.read_text()))

    # -- text <-> ids ----------------------------------------------------------------------------
    def token_id(self, word: str) -> int:
        return self.ids.get(word.lower() if self.lowercase else word, self.unk_id)

    def tokenize(self, text: str) -> list[Token]:
        """Tokens with ids; `text` of each is exactly what the user typed (unknown words too)."""
        return [Token(w, self.token_id(w), s, e) for w, s, e in split_words(text)]

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = [t.id for t in self.tokenize(text)]
        return [self.bos_id, *ids] if add_bos else ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text for ids (as the vocabulary spells them; the leading start token is dropped)."""
        return detokenize(self.words[i] for i in ids).lstrip("\n")

    def word(self, token_id: int) -> str:
        return self.words[token_id]
