"""The built-in ``tag_lines`` transform: put a tag before every line of a streamed body.

Reference result (:func:`tag_lines_reference`): the tag before every line of the whole body.
Lines end at ``\\n``; a last line without ``\\n`` is tagged too; an empty body stays empty; no tag
follows the final newline (``a\\nb\\n`` -> ``T1a\\nT2b\\n``). Nothing is held back: a line's tag is
emitted with the first byte of the line, however the body is split.

The transform works on bytes (the tag is encoded with the body's charset, unencodable characters
replaced by ``?``), so it assumes an ASCII-compatible charset, where byte 0x0A is always a newline
(UTF-8, Latin-1, ...). CR, LF and NUL are removed from the route and upstream names put in a tag.
"""

from __future__ import annotations

import string
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, StrictStr
from pydantic_core import PydanticCustomError

from proxy.transform_api import codec_for, drive

__all__ = ["Options", "TagLines", "TagLinesStream", "render_tag", "tag_lines_reference"]

DEFAULT_TAG = "[{upstream}] "
FIELDS = ("route", "upstream", "n")
MAX_TAG_CHARS = 4096
_FORBIDDEN = str.maketrans("", "", "\r\n\x00")


def _template_fields(template: str) -> set[str]:
    """The field names a format template uses (format specs included); ValueError if malformed."""
    names: set[str] = set()
    for _, field, spec, _ in string.Formatter().parse(template):
        if field is not None:
            names.add(field)
            if spec:
                names |= _template_fields(spec)
    return names


def check_tag(tag: str) -> str:
    """Validate a tag template: only ``{route}``, ``{upstream}``, ``{n}``; no CR, LF, NUL."""
    if any(c in tag for c in "\r\n\x00"):
        raise PydanticCustomError("tag_chars", "the tag must not contain CR, LF or NUL")
    try:
        fields = _template_fields(tag)
    except ValueError as exc:
        raise PydanticCustomError(
            "tag_template", "not a valid tag template: {error}", {"error": str(exc)}
        ) from None
    unknown = sorted(f for f in fields if f not in FIELDS)
    if unknown:
        raise PydanticCustomError(
            "tag_field",
            "unknown field {field} in the tag (known: route, upstream, n)",
            {"field": repr(unknown[0])},
        )
    try:
        sample = tag.format(route="route", upstream="upstream", n=1)
        tag.format(route="", upstream="", n=10**9)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise PydanticCustomError(
            "tag_template", "not a valid tag template: {error}", {"error": str(exc)}
        ) from None
    if len(sample) > MAX_TAG_CHARS:
        raise PydanticCustomError(
            "tag_length", "the tag is too long ({length} characters)", {"length": len(sample)}
        )
    if any(c in sample for c in "\r\n\x00"):
        raise PydanticCustomError("tag_chars", "the tag must not produce CR, LF or NUL")
    return tag


class Options(BaseModel):
    """Options of ``tag_lines``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tag: Annotated[StrictStr, AfterValidator(check_tag)] = DEFAULT_TAG


def _tag_renderer(
    tag: str, route: str, upstream: str, charset: str | None
) -> Callable[[int], bytes]:
    codec = codec_for(charset)
    route = str(route).translate(_FORBIDDEN)
    upstream = str(upstream).translate(_FORBIDDEN)
    values = {"route": route, "upstream": upstream}
    pieces = list(string.Formatter().parse(tag))
    plain_n = [p for p in pieces if p[1] == "n"]
    if len(plain_n) == 1 and not plain_n[0][2] and plain_n[0][3] is None:
        # one bare {n}: pre-render everything around it, format the number as bytes
        before, after, seen = [], [], False
        for literal, field, spec, conversion in pieces:
            (after if seen else before).append(literal.replace("{", "{{").replace("}", "}}"))
            if field == "n":
                seen = True
            elif field is not None:
                conv = "!" + conversion if conversion else ""
                (after if seen else before).append(
                    "{" + field + conv + (":" + spec if spec else "") + "}"
                )
        pre = "".join(before).format(**values).encode(codec, errors="replace")
        post = "".join(after).format(**values).encode(codec, errors="replace")

        def render_fast(n: int) -> bytes:
            return b"%b%d%b" % (pre, n, post)

        return render_fast

    fmt = tag.format

    def render(n: int) -> bytes:
        return fmt(route=route, upstream=upstream, n=n).encode(codec, errors="replace")

    return render


def render_tag(tag: str, route: str, upstream: str, n: int, charset: str | None = "utf-8") -> bytes:
    """The encoded tag of line ``n`` (1-based)."""
    return _tag_renderer(tag, route, upstream, charset)(n)


def tag_lines_reference(
    body: bytes, tag: str, route: str, upstream: str, charset: str | None = "utf-8"
) -> bytes:
    """What the stream must produce: the tag before every line of the whole body."""
    if not body:
        return b""
    render = _tag_renderer(tag, route, upstream, charset)
    lines = body.split(b"\n")
    trailing = lines[-1] == b""
    if trailing:
        lines.pop()
    out = b"\n".join(render(i) + line for i, line in enumerate(lines, 1))
    return out + b"\n" if trailing else out


class TagLinesStream:
    """One body: chunks in, tagged chunks out, nothing held."""

    __slots__ = ("_at_line_start", "_n", "_nl_tag", "_render", "_tag")

    def __init__(self, render: Callable[[int], bytes], numbered: bool) -> None:
        self._render = render
        self._n = 0  # lines started so far
        self._at_line_start = True
        self._tag: bytes | None = None if numbered else render(0)
        self._nl_tag = b"" if self._tag is None else b"\n" + self._tag

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        if self._tag is not None:
            return self._feed_fixed(chunk, self._tag)
        return self._feed_numbered(chunk)

    def _feed_fixed(self, chunk: bytes, tag: bytes) -> bytes:
        if not tag:
            return chunk
        ends_line = chunk[-1] == 10
        out = chunk.replace(b"\n", self._nl_tag)
        if ends_line:  # the next line has not started yet
            out = out[: len(out) - len(tag)]
        if self._at_line_start:
            out = tag + out
        self._at_line_start = ends_line
        return out

    def _feed_numbered(self, chunk: bytes) -> bytes:
        render = self._render
        parts = chunk.split(b"\n")
        # parts[i] starts a new line if a newline precedes it in the chunk, or if it is the
        # first and the previous chunk ended a line; a last, empty part starts nothing yet
        first = 0 if self._at_line_start else 1
        end = len(parts) if parts[-1] else len(parts) - 1
        n = self._n
        for i in range(first, end):
            n += 1
            parts[i] = render(n) + parts[i]
        self._n = n
        self._at_line_start = not parts[-1]
        return b"\n".join(parts)

    def close(self) -> bytes:
        return b""


class TagLines:
    """Factory of the ``tag_lines`` transform."""

    Options = Options

    def __init__(self, **options: Any) -> None:
        self.options = Options(**options)  # a pydantic ValidationError is a ValueError
        self._numbered = "n" in _template_fields(self.options.tag)
        self._fixed: dict[tuple[str, str, str], bytes] = {}

    def open(self, ctx: Any) -> TagLinesStream:
        """A stream for one body (``ctx`` gives the route, upstream and charset)."""
        route, upstream = str(ctx.route), str(ctx.upstream)
        charset = getattr(ctx, "charset", None)
        render = _tag_renderer(self.options.tag, route, upstream, charset)
        if not self._numbered:  # the same bytes for every line: render them once per key
            key = (route, upstream, codec_for(charset))
            fixed = self._fixed.get(key)
            if fixed is None:
                if len(self._fixed) > 1024:
                    self._fixed.clear()
                fixed = self._fixed[key] = render(0)
            return TagLinesStream(lambda _n, _t=fixed: _t, False)
        return TagLinesStream(render, True)

    def __call__(self, chunks: AsyncIterator[bytes], ctx: Any) -> AsyncIterator[bytes]:
        return drive(self.open(ctx), chunks)
