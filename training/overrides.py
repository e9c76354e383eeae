"""Command-line overrides parsed from `@dataclass` configs: `--batch-size 64 --widths 32,64`.

Every field of every config becomes an option (underscores spelled as dashes); an unknown option
or a value of the wrong type is an error, never silently ignored. `train_each` runs a family
module's shipped command lines one after the other (its `train_all`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class OptionError(ValueError):
    """A command-line option that no config knows, or a value of the wrong type."""


def parse_value(text: str, kind: Any, option: str) -> Any:
    """Convert `text` to the field type `kind` (int, float, str, bool, Path, tuples, X | None)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in {"none", ""} and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return parse_value(text, inner, option)
    if origin is tuple:
        item = args[0]
        return tuple(parse_value(part, item, option) for part in text.split(",") if part.strip())
    if kind is bool:
        if text.lower() in {"1", "true", "yes", "on"}:
            return True
        if text.lower() in {"0", "false", "no", "off"}:
            return False
        raise OptionError(f"--{option} expects true or false, got {text!r}")
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise OptionError(f"--{option} expects {kind.__name__}, got {text!r}") from None
    if kind in (str, Path):
        return kind(text)
    raise TypeError(f"--{option}: unsupported config field type {kind!r}")


def field_types(config: Any, fixed: Collection[str] = ()) -> dict[str, Any]:
    hints = typing.get_type_hints(type(config))
    return {f.name: hints[f.name] for f in dataclasses.fields(config) if f.name not in fixed}


def apply_overrides(argv: list[str], *configs: T, fixed: Collection[str] = ()) -> list[T]:
    """Return copies of `configs` with `--name value` / `--name=value` pairs from argv applied.

    `fixed` names fields that are not options because they follow from the data (the number of
    classes, say). A name shared by several configs sets it in each.
    """
    types_by_config = [field_types(c, fixed) for c in configs]
    known = sorted({name.replace("_", "-") for t in types_by_config for name in t})
    changes: list[dict[str, Any]] = [{} for _ in configs]
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise OptionError(f"expected --option, got {arg!r}")
        option, has_value, value = arg[2:].partition("=")
        if not has_value:
            if i + 1 >= len(argv):
                raise OptionError(f"--{option} needs a value")
            value, i = argv[i + 1], i + 1
        i += 1
        name = option.replace("-", "_")
        owners = [k for k, t in enumerate(types_by_config) if name in t]
        if not owners:
            raise OptionError(f"unknown option --{option}; known: {', '.join(known)}")
        for k in owners:
            changes[k][name] = parse_value(value, types_by_config[k][name], option)
    return [dataclasses.replace(c, **ch) for c, ch in zip(configs, changes, strict=True)]  # type: ignore[type-var]


def train_each(
    main: Callable[[str, str, list[str]], int],
    runs: Sequence[tuple[str, list[str]]],
    models_dir: Path | None = None,
) -> int:
    """`main("train", family, argv)` for each shipped (family, argv) in order, publishing into
    `models_dir` when given; stops at the first failure and returns its exit status."""
    extra = ["--models-dir", str(models_dir)] if models_dir else []
    for family, argv in runs:
        code = main("train", family, [*argv, *extra])
        if code:
            return code
    return 0
