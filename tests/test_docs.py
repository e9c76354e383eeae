"""The docs hold together: the configuration table is generated from the settings (it cannot
drift), the README stays a short front page that gives the two commands, and every relative link
of README.md, docs/*.md and CONTRIBUTING.md reaches a file (and a heading) that exists."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest
from helpers.doc_blocks import heading_level, markdown_files

from service.settings import settings_table

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"  # holds the generated settings table
README_MAX_LINES = 300  # the front page; everything else goes in docs/ (issue #16)
# [text](target) and ![alt](target), the target up to a space or the closing parenthesis
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"`+[^`\n]*`+")


def test_settings_table_matches_code() -> None:
    text = CONFIGURATION.read_text()
    block = re.search(r"<!-- settings:start -->\n(.*?)\n<!-- settings:end -->", text, re.S)
    assert block, "docs/configuration.md lost its settings markers"
    assert block.group(1).strip() == settings_table().strip(), (
        "docs/configuration.md's settings table is stale: regenerate it with "
        "python -c 'from service.settings import settings_table; print(settings_table())'"
    )


def test_readme_gives_the_two_commands() -> None:
    text = README.read_text()
    assert "make serve" in text and "make test" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci


def test_readme_is_a_front_page() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): move the detail into docs/ "
        "and link it"
    )


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def links_in(text: str) -> list[str]:
    """Every link's target outside fenced blocks and inline code (links there are examples)."""
    return [
        target for line in prose_lines(text) for target in LINK.findall(INLINE_CODE.sub("", line))
    ]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = INLINE_CODE.sub(lambda code: code.group(0).strip("`"), heading.lstrip("#").strip())
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a Markdown file (a repeated heading gets -1, -2...)."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose_lines(path.read_text()):
        if heading_level(line):
            base = slug(line)
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    return [
        target
        for target in links_in(path.read_text())
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:...
    ]


@pytest.mark.parametrize(
    "path",
    [*markdown_files(ROOT), ROOT / "CONTRIBUTING.md"],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_relative_links_reach_files_and_headings(path: Path) -> None:
    links = relative_links(path)
    broken = []
    for link in links:
        target, _, anchor = unquote(link).partition("#")
        resolved = (path.parent / target).resolve() if target else path
        if not resolved.is_relative_to(ROOT):
            broken.append(f"{link}: outside the repository")
        elif not resolved.exists():
            broken.append(f"{link}: no {resolved.relative_to(ROOT)}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{link}: no heading #{anchor} in {resolved.relative_to(ROOT)}")
    assert not broken, f"{path.relative_to(ROOT)}: broken links: {broken}"


def test_the_link_checker_reads_links_as_github_does() -> None:
    assert slug("## The checks (`make deploy-check`)") == "the-checks-make-deploy-check"
    assert slug("## Targets of issue #5, as last measured") == "targets-of-issue-5-as-last-measured"
    assert slug("## Model card (`card.json`)") == "model-card-cardjson"
    text = "[a](x.md#y) ![b](../m/s.png) [c](https://e.org) `[d](no.md)` <http://f>\n```\n[e](f)\n```\n"
    assert links_in(text) == ["x.md#y", "../m/s.png", "https://e.org"]
