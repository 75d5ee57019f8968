"""The configuration reference, generated from the config models.

``python -m proxy.config.reference > docs/configuration.md`` writes it; a test checks that the
committed file is what this produces, so the reference cannot drift from the code.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from proxy.config.models import Config, _workers
from proxy.config.units import parse_duration, parse_size

HEADER = """# Configuration reference

Generated from `proxy/config/models.py` by `python -m proxy.config.reference`; do not edit by hand.

Durations are `250ms`, `5s`, `2m`, `1h` or a number of seconds; sizes are `512KiB`, `100MiB`,
`1GiB` or a number of bytes. `${VAR}` and `${VAR:-default}` in any string are expanded from the
environment when the file is loaded. Unknown keys are errors.

| key | type | default | meaning |
|---|---|---|---|
"""


def _validators(tp: Any) -> list[Any]:
    return [getattr(m, "func", None) for m in getattr(tp, "__metadata__", ())]


def type_name(tp: Any) -> str:
    funcs = _validators(tp)
    if _workers in funcs:
        return "int or `auto`"
    if parse_duration in funcs:
        return "duration"
    if parse_size in funcs:
        return "size"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Annotated:
        return type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(names)
    if origin is Literal:
        return " or ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is dict:
        return f"mapping of name to {type_name(args[1])}"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "mapping"
    if tp is Any:
        return "transform entry"
    if hasattr(tp, "CONFIG_TYPE"):
        return str(tp.CONFIG_TYPE)
    return getattr(tp, "__name__", str(tp))


def _model_of(tp: Any) -> tuple[type[BaseModel] | None, str]:
    """The model nested in a field's type, and the key suffix that reaches it."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Annotated:
        return _model_of(args[0])
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            model, suffix = _model_of(arg)
            if model is not None:
                return model, suffix
        return None, ""
    if origin is list:
        model, suffix = _model_of(args[0])
        return model, "[]" + suffix
    if origin is dict:
        model, suffix = _model_of(args[1])
        return model, ".NAME" + suffix
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp, ""
    return None, ""


def _size(n: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def _default(field: FieldInfo, kind: str) -> str:
    if field.is_required():
        return "required"
    value = field.default
    if kind == "duration" and isinstance(value, float):
        return f"`{value:g}s`"
    if kind == "size" and isinstance(value, int):
        return f"`{_size(value)}`"
    if value is PydanticUndefined or value is None:
        return "unset"
    if isinstance(value, BaseModel):
        return "see below"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return "`[]`"
    return f"`{value}`"


def rows(model: type[BaseModel] = Config, prefix: str = "") -> Iterator[str]:
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        tp = field.annotation
        meta = field.metadata
        if meta:
            tp = Annotated[tp, *meta]  # type: ignore[valid-type]
        doc = " ".join((field.description or "").split()).replace("|", "\\|")
        kind = type_name(tp)
        yield f"| `{path}` | {kind} | {_default(field, kind)} | {doc} |"
        nested, suffix = _model_of(field.annotation)
        if nested is not None:
            yield from rows(nested, f"{path}{suffix}.")


def render() -> str:
    return HEADER + "\n".join(rows()) + "\n"


if __name__ == "__main__":
    print(render(), end="")
