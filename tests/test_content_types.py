from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.transform.media import (
    DEFAULT_CONTENT_TYPES,
    ContentTypeMatcher,
    charset_of,
    parse_content_type,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ("", {})),
        ("", ("", {})),
        ("   ", ("", {})),
        ("text/html", ("text/html", {})),
        ("Text/HTML", ("text/html", {})),
        ("text/html; charset=UTF-8", ("text/html", {"charset": "utf-8"})),
        ('text/html; Charset="ISO-8859-1"', ("text/html", {"charset": "iso-8859-1"})),
        ("application/json ; charset = utf-8 ", ("application/json", {"charset": "utf-8"})),
        (
            'multipart/form-data; boundary="AbC;=x"; charset=utf-8',
            ("multipart/form-data", {"boundary": "AbC;=x", "charset": "utf-8"}),
        ),
        ('text/plain; title="a \\"quoted\\" word"', ("text/plain", {"title": 'a "quoted" word'})),
        ("text/plain; Format=Flowed", ("text/plain", {"format": "Flowed"})),
        ("text/plain; charset=utf-8; charset=latin1", ("text/plain", {"charset": "utf-8"})),
        ("text/plain;;junk; charset=utf-8", ("text/plain", {"charset": "utf-8"})),
        ("text/plain; charset=", ("text/plain", {"charset": ""})),
        ("text", ("", {})),
        ("text/", ("", {})),
        ("/html", ("", {})),
        ("text/html/x", ("", {})),
        ("text html/x", ("", {})),
        ("; charset=utf-8", ("", {})),
    ],
)
def test_parse_content_type(value: str | None, expected: tuple[str, dict[str, str]]) -> None:
    assert parse_content_type(value) == expected


@given(st.text(max_size=80))
def test_parse_content_type_never_raises(value: str) -> None:
    media_type, params = parse_content_type(value)
    assert media_type == media_type.lower()
    assert all(name == name.lower() for name in params)


def test_default_content_types() -> None:
    """The defaults are the ones the README names, in its order."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    documented = re.search(r"`content_types` \(globs; default: ([^)]*)\)", readme)
    assert documented is not None, "the README no longer names the default content types"
    named = tuple(re.findall(r"`([^`]+)`", documented[1]))
    assert named == DEFAULT_CONTENT_TYPES
    assert "text/*" in DEFAULT_CONTENT_TYPES and "application/json" in DEFAULT_CONTENT_TYPES


@pytest.mark.parametrize(
    ("media_type", "expected"),
    [
        ("text/html", True),
        ("text/event-stream", True),
        ("TEXT/Plain", True),
        ("application/json", True),
        ("application/problem+json", True),
        ("application/ld+json", True),
        ("application/x-ndjson", True),
        ("application/xml", True),
        ("application/javascript", True),
        ("application/json; charset=utf-8", True),
        ("application/jsonx", False),
        ("application/json+zip", False),
        ("application/octet-stream", False),
        ("image/png", False),
        ("texts/html", False),
        ("", False),
        ("   ", False),
    ],
)
def test_default_matcher(media_type: str, expected: bool) -> None:
    matcher = ContentTypeMatcher()
    assert matcher.matches(media_type) is expected
    assert matcher.matches(media_type) is expected  # cached answer


def test_custom_globs() -> None:
    matcher = ContentTypeMatcher(["*/*"])
    assert matcher.matches("image/png")
    assert not matcher.matches("")
    matcher = ContentTypeMatcher([" Application/*XML ", "*/vnd.*"])
    assert matcher.globs == ("application/*xml", "*/vnd.*")
    assert matcher.matches("application/xml")
    assert matcher.matches("application/atom+xml")
    assert matcher.matches("image/vnd.microsoft.icon")
    assert not matcher.matches("text/xml")


def test_globs_are_not_regexes() -> None:
    matcher = ContentTypeMatcher(["application/x.json"])
    assert matcher.matches("application/x.json")
    assert not matcher.matches("application/xajson")


def test_empty_glob_list_matches_nothing() -> None:
    matcher = ContentTypeMatcher([])
    assert not matcher.matches("text/html")


@pytest.mark.parametrize(
    "glob", ["text", "*", "text/", "/*", "text/*/x", "text/h?ml", "text/[ab]", "te xt/*", ""]
)
def test_invalid_globs_are_rejected(glob: str) -> None:
    with pytest.raises(ValueError, match=r"invalid content type pattern .*'type/subtype'"):
        ContentTypeMatcher(["text/*", glob])


def test_glob_list_must_not_be_a_string() -> None:
    with pytest.raises(TypeError):
        ContentTypeMatcher("text/*")
    with pytest.raises(TypeError):
        ContentTypeMatcher([1])  # type: ignore[list-item]


def test_cache_is_bounded() -> None:
    matcher = ContentTypeMatcher()
    for i in range(2000):
        assert matcher.matches(f"text/x-{i}")
        assert not matcher.matches(f"image/x-{i}")
    assert len(matcher._cache) <= ContentTypeMatcher._CACHE_SIZE


@given(st.text(max_size=40))
def test_matcher_never_raises(media_type: str) -> None:
    assert ContentTypeMatcher().matches(media_type) in (True, False)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, "utf-8"),
        ({"charset": ""}, "utf-8"),
        ({"charset": "utf-8"}, "utf-8"),
        ({"charset": "UTF8"}, "utf-8"),
        ({"charset": "latin1"}, "iso8859-1"),
        ({"charset": "iso-8859-1"}, "iso8859-1"),
        ({"charset": "windows-1252"}, "cp1252"),
        ({"charset": "shift_jis"}, "shift_jis"),
        ({"charset": "utf-16"}, "utf-16"),
        ({"charset": "us-ascii"}, "iso8859-1"),
        ({"charset": "no-such-charset"}, "utf-8"),
        ({"charset": '"unterminated'}, "utf-8"),
        ({"charset": "utf-8\x00"}, "utf-8"),
        ({"charset": "base64"}, "utf-8"),
        ({"charset": "zlib"}, "utf-8"),
        ({"charset": "rot13"}, "utf-8"),
        ({"charset": "undefined"}, "utf-8"),
        ({"charset": "unicode_escape"}, "utf-8"),
        ({"charset": "utf-7"}, "utf-8"),
    ],
)
def test_charset_of(params: dict[str, str], expected: str) -> None:
    assert charset_of(params) == expected


def test_charset_of_default() -> None:
    assert charset_of({"charset": "bogus"}, default="Latin-1") == "iso8859-1"
    assert charset_of({}, default="cp1252") == "cp1252"
    assert charset_of(parse_content_type("text/html; charset=KOI8-R")[1]) == "koi8-r"
