"""Which class a request means: an index, a class name, or a class named in a free-text prompt."""

from __future__ import annotations

import re
from collections.abc import Sequence

from service.errors import InvalidInput


def resolve_label(value: int | str, labels: Sequence[str], param: str = "label") -> int:
    """A class index from an index or a class name (case-insensitive; "7" is the class "7")."""
    if isinstance(value, bool):
        raise InvalidInput(f"{param} must be a class index or name", param=param)
    if isinstance(value, int):
        if not 0 <= value < len(labels):
            raise InvalidInput(
                f"{param} must lie in [0, {len(labels) - 1}], got {value}", param=param
            )
        return value
    wanted = value.strip().lower()
    for index, name in enumerate(labels):
        if name.lower() == wanted:
            return index
    if wanted.isascii() and wanted.isdigit():  # not '²', which int() refuses
        return resolve_label(int(wanted), labels, param)
    raise InvalidInput(
        f"{param} {value!r} is not a class of this model: {', '.join(labels)}", param=param
    )


def label_from_prompt(prompt: str, labels: Sequence[str]) -> int:
    """The class whose name appears in the prompt as a whole word ("a sneaker, please")."""
    text = prompt.lower()
    found = [
        i
        for i, name in enumerate(labels)
        if re.search(rf"(?<![\w]){re.escape(name.lower())}(?![\w])", text)
    ]
    if not found:
        raise InvalidInput(
            f"prompt names none of this model's classes ({', '.join(labels)}); or give `label`",
            param="prompt",
        )
    # The longest name wins ("T-shirt/top" over "top"); the first mentioned breaks ties.
    return max(found, key=lambda i: (len(labels[i]), -text.find(labels[i].lower())))
