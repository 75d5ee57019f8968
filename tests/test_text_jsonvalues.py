"""``proxy.transform.text.jsonvalues``: string values of a whole JSON document found, rewritten
in place, and everything else kept byte for byte."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxy.transform.text.errors import TextFormatError
from proxy.transform.text.jsonvalues import (
    load,
    parse,
    paths_of,
    rewrite,
    rewrite_one,
    set_path,
)
from proxy.transform.text.selectors import parse_selector

_TEXT = st.text(max_size=6) | st.sampled_from(["x", "y", "index", '"', "\\", "\u2028", "é😀"])
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12,
)


def strings(obj: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(obj, str):
        return [path]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in strings(v, (*path, k))]
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in strings(v, (*path, i))]
    return []


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_rewrite_changes_the_chosen_strings_and_nothing_else(data: st.DataObject) -> None:
    obj = data.draw(st.dictionaries(_TEXT, _VALUES, max_size=5))
    style = data.draw(st.sampled_from([{}, {"ensure_ascii": False}, {"separators": (",", ":")}]))
    doc = json.dumps(obj, **style)
    paths = strings(obj)
    chosen = data.draw(st.lists(st.sampled_from(paths), unique=True)) if paths else []
    new = {p: data.draw(_TEXT) for p in chosen}
    expected = json.loads(doc)
    for p, v in new.items():
        set_path(expected, p, v)
    old = {p: _get(json.loads(doc), p) for p in chosen}
    for hint in (None, old):
        out = rewrite(doc.encode("utf-8"), new, hint)
        assert json.loads(out) == expected
        out.decode("utf-8")  # always UTF-8
        if not new:
            assert out == doc.encode("utf-8")


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_rewrite_one_is_rewrite_of_one_value(data: st.DataObject) -> None:
    obj = data.draw(st.dictionaries(_TEXT, _VALUES, min_size=1, max_size=5))
    paths = strings(obj)
    if not paths:
        obj["k"] = data.draw(_TEXT)
        paths = strings(obj)
    style = data.draw(st.sampled_from([{}, {"ensure_ascii": False}, {"separators": (",", ":")}]))
    doc = json.dumps(obj, **style).encode("utf-8")
    path = data.draw(st.sampled_from(paths))
    value = data.draw(_TEXT)
    out = rewrite_one(doc, path, value, _get(obj, path))
    assert out == rewrite(doc, {path: value}, {path: _get(obj, path)})
    assert out == rewrite(doc, {path: value})  # the shortcut writes what the long way writes


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        obj = obj[step]
    return obj


def test_selectors_pick_values_in_document_order() -> None:
    obj = {"choices": [{"delta": {"content": "a"}}, {"delta": {}}, {"delta": {"content": "b"}}]}
    picked = paths_of([parse_selector("choices[*].delta.content")], obj)
    assert picked == [
        (("choices", 0, "delta", "content"), "a"),
        (("choices", 2, "delta", "content"), "b"),
    ]
    assert paths_of([parse_selector("choices[2].delta.content")], obj) == picked[1:]


def _shape(obj: Any) -> Any:
    """The strings and structure of a parsed value; every number as one mark (``parse`` may
    read an integer beyond 64 bits as a float: only strings and small integers are read)."""
    if isinstance(obj, dict):
        return {k: _shape(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_shape(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    return "<number>"


def _outcome(read: Any, data: bytes) -> Any:
    try:
        return _shape(read(data))
    except TextFormatError:
        return TextFormatError


_DOCS = st.one_of(
    _VALUES.map(lambda v: json.dumps(v).encode()),
    _VALUES.map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    st.binary(max_size=24),
    st.lists(
        st.sampled_from(
            [
                b"{",
                b"}",
                b"[",
                b"]",
                b",",
                b":",
                b'"a"',
                b'"\\ud800"',
                b'"\\udc00"',
                b"1e400",
                b"NaN",
                b"-Infinity",
                b"12345678901234567890123",
                b"0",
                b"-0.5",
                b" ",
                b"\xff",
                b"\xed\xa0\x80",
                b"\xef\xbb\xbf",
                b"true",
                b"null",
                b'"\\u00e9"',
                b'"\x01"',
            ]
        ),
        max_size=8,
    ).map(b"".join),
)


@settings(max_examples=600, deadline=None)
@given(_DOCS)
@example(b'{"a":"\\ud800"}')  # a lone surrogate escape: orjson refuses it, json reads it
@example(b"[1e400]")  # beyond a double: json reads inf
@example(b"[NaN]")
@example(b'{"a":1}x')
def test_parse_accepts_exactly_what_the_json_module_reads(data: bytes) -> None:
    assert _outcome(parse, data) == _outcome(lambda d: load(d)[1], data)


def test_parse_reads_a_lone_surrogate_escape() -> None:
    assert parse(b'{"a":"x\\ud800y"}') == {"a": "x\ud800y"}
    with pytest.raises(TextFormatError):
        parse(b'{"a":NaN}')
