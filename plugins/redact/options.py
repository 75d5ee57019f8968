"""The ``redact`` options and the whole-body reference every stream must equal."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictStr,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from plugins.redact.rewrite import _compile_spec, _Unsupported
from proxy import transform_api
from proxy.transform_api import codec_for

DEFAULT_REPLACEMENT = "[REDACTED]"
DEFAULT_MAX_MATCH = 4096

# --------------------------------------------------------------------------------------------
# reference


def redact_reference(
    body: bytes,
    patterns: Sequence[str],
    replacement: str = DEFAULT_REPLACEMENT,
    charset: str | None = "utf-8",
) -> bytes:
    """What the stream must produce: ``re.sub`` of every pattern, in order, on the whole body."""
    codec = codec_for(charset)
    text = body.decode(codec, errors="surrogateescape")
    for pattern in patterns:
        text = re.sub(pattern, replacement, text)
    return text.encode(codec, errors="surrogateescape")


# --------------------------------------------------------------------------------------------
# options


def parse_size(value: Any) -> int:
    """Sizes as everywhere in ``proxy.yaml`` (``512``, ``4KiB``, ``1MiB``), as a pydantic
    error when not one."""
    if isinstance(value, bool):
        raise PydanticCustomError("size", "expected a size like 4KiB, 512 or 1MiB, got a boolean")
    try:
        return transform_api.parse_size(value)
    except ValueError:
        raise PydanticCustomError(
            "size", "expected a size like 4KiB, 512 or 1MiB, got {value}", {"value": repr(value)}
        ) from None


def check_regex(pattern: str) -> str:
    """Validate one pattern: valid for ``re``, and supported for streaming."""
    try:
        re.compile(pattern)
    except (re.error, OverflowError, RecursionError, ValueError) as exc:
        raise PydanticCustomError(
            "regex", "not a valid regex: {error}", {"error": str(exc)}
        ) from None
    try:
        _compile_spec(pattern)
    except _Unsupported as exc:
        raise PydanticCustomError(
            "regex_streaming", "regex not supported for streaming: {error}", {"error": str(exc)}
        ) from None
    return pattern


class Options(BaseModel):
    """Options of ``redact``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    patterns: Annotated[
        list[Annotated[StrictStr, AfterValidator(check_regex)]], Field(min_length=1)
    ]
    replacement: StrictStr = DEFAULT_REPLACEMENT
    max_match: Annotated[int, BeforeValidator(parse_size), Field(ge=1)] = DEFAULT_MAX_MATCH

    @field_validator("replacement")
    @classmethod
    def _check_replacement(cls, value: str, info: ValidationInfo) -> str:
        for i, pattern in enumerate(info.data.get("patterns") or ()):
            try:
                re.compile(pattern).sub(value, "")  # parses the template eagerly
            except (re.error, IndexError, ValueError) as exc:
                raise PydanticCustomError(
                    "replacement",
                    "not a valid replacement template for patterns[{index}]: {error}",
                    {"index": i, "error": str(exc)},
                ) from None
        return value


# --------------------------------------------------------------------------------------------
# compiling a pattern: re's parse tree back to re syntax, plain or with the sentinel rewrite
