"""How configuration problems are told: key paths, "did you mean", pydantic errors as lines.

Shared by :mod:`proxy.config.models` and :mod:`proxy.transform.loader` (which imports nothing of the
config), so that both report problems the same way.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Annotated, Any

from pydantic import BaseModel


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` holds one ``path: reason`` line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def key_path(loc: tuple[int | str, ...] | list[int | str]) -> str:
    """``('routes', 1, 'upstream')`` → ``routes[1].upstream``; always one printable line."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = str(part)
            name = name if name.isprintable() else repr(name)
            out += f".{name}" if out else name
    return out or "(top level)"


def suggest(word: str, choices: list[str] | tuple[str, ...]) -> str:
    near = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {near[0]!r}?)" if near else ""


def describe_error(
    err: Any, root: type[BaseModel] | None = None
) -> tuple[tuple[int | str, ...], str]:
    """(key path, reason) of one pydantic error; unknown keys get a "did you mean" from
    ``root``'s fields."""
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        model = _model_at(root, loc[:-1]) if root is not None else None
        hint = suggest(key, list(model.model_fields)) if model else ""
        return loc, f"unknown key{hint}"
    if kind == "missing":
        return loc, "required key is missing"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if kind not in ("value_error", "assertion_error") and "input" in err:
        msg = f"{msg}, got {err['input']!r}"
    return loc, msg


def _model_at(root: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model whose keys live at ``loc`` below ``root`` (for "did you mean" suggestions)."""
    tp: Any = root
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(str(part))
            if field is None:
                return None
            tp = field.annotation
        else:
            args = typing.get_args(tp)
            if not args:
                return None
            tp = args[-1]
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp
