"""The fenced blocks of a Markdown file, each with the headings it sits under."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Block:
    path: str  # the Markdown file, relative to the repository root
    line: int  # of the opening fence, 1-based
    headings: tuple[str, ...]  # the headings it sits under, outermost first ("## Endpoints")
    language: str  # after the opening fence ("sh", "python", "json"; "" for none)
    code: str  # the lines between the fences, each ending with a newline

    @property
    def heading(self) -> str:
        return self.headings[-1] if self.headings else ""

    @property
    def first_line(self) -> str:
        return self.code.split("\n", 1)[0].strip()

    @property
    def key(self) -> tuple[str, str, str]:
        """What names the block in a list of blocks: file, nearest heading, first line."""
        return (self.path, self.heading, self.first_line)


def heading_level(line: str) -> int:
    """1 to 6 for a Markdown heading (`## Title`), else 0."""
    marks = len(line) - len(line.lstrip("#"))
    return marks if 0 < marks <= 6 and line[marks : marks + 1] == " " else 0


def blocks_of(text: str, path: str = "") -> list[Block]:
    """Every fenced block of `text` in order (a `# comment` inside a block is no heading)."""
    found: list[Block] = []
    headings: list[str] = []
    opened: tuple[int, str] | None = None  # (line index, language) of the open fence
    lines = text.splitlines(keepends=True)
    for index, line in enumerate(lines):
        if line.startswith("```"):
            if opened is None:
                opened = (index, line[3:].strip())
            else:
                start, language = opened
                code = "".join(lines[start + 1 : index])
                found.append(Block(path, start + 1, tuple(headings), language, code))
                opened = None
        elif opened is None and (level := heading_level(line)):
            headings = [h for h in headings if heading_level(h) < level] + [line.strip()]
    assert opened is None, f"{path}: the fence opened on line {opened[0] + 1} never closes"
    return found


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced block, in order."""
    return [(block.language, block.code) for block in blocks_of(text)]


def section(text: str, heading: str) -> str:
    """From `heading` to the next heading of the same or a higher level (a `# comment` inside a
    fenced block is no heading)."""
    lines = text.splitlines(keepends=True)
    start = lines.index(f"{heading}\n")
    level = heading_level(heading)
    fenced = False
    for end in range(start + 1, len(lines)):
        line = lines[end]
        fenced ^= line.startswith("```")
        if not fenced and 0 < heading_level(line) <= level:
            return "".join(lines[start:end])
    return "".join(lines[start:])


def markdown_files(root: Path) -> list[Path]:
    """README.md and every docs/*.md: the files whose examples must run."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]
