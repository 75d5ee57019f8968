"""String values of a whole JSON document: found by path, read, and rewritten in place.

Used on records that are already whole (an SSE event's data, an NDJSON line): the document is
parsed once with :func:`json.loads` (which validates it), the values are looked up in the parsed
object, and only when one changes are the raw spans of the changed values found — with the
``json`` module's C scanner, stepping over every value off the wanted paths — so that every
byte outside them stays as it came.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from json import decoder, scanner
from typing import Any

import orjson

from proxy.transform.text.errors import TextFormatError
from proxy.transform.text.selectors import ANY, Path, Selector

__all__ = [
    "dumps",
    "get_path",
    "load",
    "parse",
    "paths_of",
    "rewrite",
    "rewrite_one",
    "select",
    "set_path",
]

_scan_once = scanner.make_scanner(decoder.JSONDecoder())
_quote = json.encoder.encode_basestring  # a str as a JSON string, as json.dumps writes it
_scanstring = decoder.scanstring
_WS = re.compile(r"[ \t\n\r]*")
_ws = _WS.match
_SPACE = " \t\n\r"
_WANTED = object()  # the trie mark of a path whose string value is wanted


# Written as escapes even where the rest is raw UTF-8: lone surrogates (UTF-8 cannot carry one),
# and the separators that line-splitting readers (Python's splitlines, JavaScript) break at.
_ESCAPED = re.compile("[\ud800-\udfff\u2028\u2029\x85]")


def _escape_special(text: str) -> str:
    return _ESCAPED.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def dumps(value: Any, ensure_ascii: bool = False) -> str:
    """Compact JSON, safe to write as UTF-8 and to put on one line of NDJSON."""
    out = json.dumps(value, ensure_ascii=ensure_ascii, separators=(",", ":"))
    return out if ensure_ascii or not _ESCAPED.search(out) else _escape_special(out)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_decode = json.JSONDecoder(parse_constant=_no_constant).decode


def load(data: bytes) -> tuple[str, Any]:
    """The document as text and as a parsed value; TextFormatError when it is not JSON."""
    try:
        text = data.decode("utf-8")
        return text, _decode(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise TextFormatError(f"the data is not JSON: {exc}") from None


def parse(data: bytes) -> Any:
    """The parsed document; TextFormatError when it is not JSON.

    orjson reads it first (three times as fast as the ``json`` module on an event's few hundred
    bytes, and as strict: UTF-8, no ``NaN``, nothing after the value); what it refuses and the
    ``json`` module reads (a lone surrogate escape, a number beyond a double) is read by
    :func:`load`, so both accept the same documents. Only the strings and the small integers
    of the result are read (paths, indices); a record written out anew is parsed by
    :func:`load`.
    """
    try:
        return _orjson_loads(data)
    except orjson.JSONDecodeError:
        return load(data)[1]


_orjson_loads = orjson.loads


def get_path(obj: Any, path: Path) -> Any:
    for step in path:
        obj = obj[step]
    return obj


def set_path(obj: Any, path: Path, value: Any) -> None:
    for step in path[:-1]:
        obj = obj[step]
    obj[path[-1]] = value


def select(obj: Any, selector: Selector, prefix: Path = ()) -> Iterator[tuple[Path, str]]:
    """Every ``(concrete path, string)`` that ``selector`` picks in ``obj``, in document order."""
    if not selector:
        if isinstance(obj, str):
            yield prefix, obj
        return
    step, rest = selector[0], selector[1:]
    if isinstance(step, str):
        if isinstance(obj, Mapping) and step in obj:
            yield from select(obj[step], rest, (*prefix, step))
    elif isinstance(obj, list):
        if step == ANY:
            for i, item in enumerate(obj):
                yield from select(item, rest, (*prefix, i))
        elif step < len(obj):
            yield from select(obj[step], rest, (*prefix, step))


def rewrite(
    data: bytes, values: Mapping[Path, str], old: Mapping[Path, str] | None = None
) -> bytes:
    """The UTF-8 document ``data`` with the string at each path replaced (re-escaped); every
    other byte kept.

    ``old`` (the values now at those paths) allows a shortcut: in a document without ``\\u``
    or ``\\/`` escapes every string is written exactly as ``json.dumps`` writes it, so a
    value's token is found by its text alone when that text occurs once (on the bytes: no
    decoding and encoding of the whole document).
    """
    if old is not None and _plain_strings(data):
        out: bytes | None = data
        for path, value in values.items():
            out = _replace_token(out, old[path], value)
            if out is None:
                break
        else:
            return out  # type: ignore[return-value]
    doc = data.decode("utf-8")
    trie: dict[Any, Any] = {}
    for path in values:
        node = trie
        for step in path:
            node = node.setdefault(step, {})
        node[_WANTED] = path
    spans: list[tuple[int, int, Path]] = []
    _walk(doc, _ws(doc, 0).end(), trie, spans)
    parts: list[str] = []
    pos = 0
    for start, end, path in sorted(spans):
        parts.append(doc[pos:start])
        ascii_only = "\\u" in doc[start:end]
        parts.append(dumps(values[path], ensure_ascii=ascii_only))
        pos = end
    parts.append(doc[pos:])
    return "".join(parts).encode("utf-8")


def rewrite_one(data: bytes, path: Path, value: str, old: str) -> bytes:
    """:func:`rewrite` of one value (``old``, now at ``path``, becomes ``value``): the usual
    record's case, without the mappings."""
    if _plain_strings(data):
        out = _replace_token(data, old, value)
        if out is not None:
            return out
    return rewrite(data, {path: value})


def _plain_strings(data: bytes) -> bool:
    """Whether every string of ``data`` is written as ``json.dumps`` writes it (no ``\\u`` or
    ``\\/`` escape; one search for a backslash first: most documents have none)."""
    return b"\\" not in data or (b"\\u" not in data and b"\\/" not in data)


def _replace_token(data: bytes, old: str, value: str) -> bytes | None:
    """``data`` with the string token of ``old`` written as ``value``; None unless that token
    occurs exactly once."""
    token = _quote(old).encode("utf-8")  # no lone surrogate without a \\u
    at = data.find(token)
    if at < 0 or data.find(token, at + 1) >= 0:
        return None
    new = _quote(value)
    if not new.isascii() and _ESCAPED.search(new):  # isascii() reads a flag
        new = _escape_special(new)
    return b"".join((data[:at], new.encode("utf-8"), data[at + len(token) :]))


def _walk(doc: str, idx: int, trie: dict[Any, Any], spans: list[tuple[int, int, Path]]) -> int:
    """Step over the value at ``idx``, recording the spans of wanted strings; its end index."""
    c = doc[idx]
    if c == '"':
        end = _scanstring(doc, idx + 1)[1]
        path = trie.get(_WANTED)
        if path is not None:
            spans.append((idx, end, path))
        return end
    if c == "{":
        close, sep = "}", ":"
    elif c == "[":
        close, sep = "]", ""
    else:
        return _skip(doc, idx)
    idx += 1
    if doc[idx] in _SPACE:
        idx = _ws(doc, idx).end()
    if doc[idx] == close:
        return idx + 1
    i = 0
    while True:
        if sep:
            key, idx = _scanstring(doc, idx + 1)
            if doc[idx] != sep:
                idx = _ws(doc, idx).end()
            idx += 1
            if doc[idx] in _SPACE:
                idx = _ws(doc, idx).end()
            sub = trie.get(key)
        else:
            sub = trie.get(i)
            i += 1
        idx = _walk(doc, idx, sub, spans) if sub is not None else _skip(doc, idx)
        if doc[idx] in _SPACE:
            idx = _ws(doc, idx).end()
        if doc[idx] == close:
            return idx + 1
        idx += 1  # past the comma
        if doc[idx] in _SPACE:
            idx = _ws(doc, idx).end()


def _skip(doc: str, idx: int) -> int:
    try:
        return _scan_once(doc, idx)[1]
    except StopIteration:
        raise TextFormatError(f"the data is not JSON at position {idx}") from None


def paths_of(selectors: Sequence[Selector], obj: Any) -> list[tuple[Path, str]]:
    """Every value the selectors pick, each path once, in selector then document order."""
    seen: set[Path] = set()
    out: list[tuple[Path, str]] = []
    for selector in selectors:
        for path, value in select(obj, selector):
            if path not in seen:
                seen.add(path)
                out.append((path, value))
    return out
