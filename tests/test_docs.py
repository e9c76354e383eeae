"""The README's configuration table is generated from the settings: it cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

from service.settings import settings_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_settings_table_matches_code() -> None:
    text = README.read_text()
    block = re.search(r"<!-- settings:start -->\n(.*?)\n<!-- settings:end -->", text, re.S)
    assert block, "README lost its settings markers"
    assert block.group(1).strip() == settings_table().strip(), (
        "README configuration table is stale: regenerate it with "
        "python -c 'from service.settings import settings_table; print(settings_table())'"
    )


def test_readme_gives_the_two_commands() -> None:
    text = README.read_text()
    assert "make serve" in text and "make test" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci
