"""``redact`` on the bytes for literal ASCII patterns: the same output as the reference."""

from __future__ import annotations

import re
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugins.redact import Redact, redact_reference
from plugins.redact import literal as redact_literal
from plugins.redact import prefilter as redact_prefilter

from .test_redact import examples, run
from .transform_support import chunkings, make_ctx


def on_bytes(patterns: list[str], charset: str = "utf-8", **options: object) -> bool:
    return Redact(patterns=patterns, **options).open(make_ctx(charset))._on_bytes


def test_literal_patterns_run_on_the_bytes():
    assert on_bytes(["password=hunter2"])
    assert on_bytes(["password=hunter2", "AKIA", r"a\.b"])  # an escaped dot is a literal too
    assert on_bytes(["secret"], "iso-8859-1") and on_bytes(["secret"], "windows-1252")
    assert on_bytes(["secret"], replacement=r"<\g<0>>")


@pytest.mark.parametrize(
    ("patterns", "charset", "options"),
    [
        (["(?i)secret"], "utf-8", {}),  # case folding is re's business
        (["a.b"], "utf-8", {}),
        (["(secret)"], "utf-8", {}),
        (["secret", r"\d+"], "utf-8", {}),  # one regex: every stage on the text
        (["café"], "utf-8", {}),  # not ASCII
        (["secret"], "utf-16", {}),  # ASCII bytes are not characters there
        (["secret"], "shift_jis", {}),  # a double-byte character may end in an ASCII byte
        (["secret"], "iso-8859-1", {"replacement": "漢"}),  # cannot be encoded there
        (
            ["abcdef"],
            "utf-8",
            {"max_match": 4},
        ),  # longer than max_match
    ],
)
def test_other_patterns_run_on_the_text(patterns, charset, options):
    assert not on_bytes(patterns, charset, **options)


PIECES = ["a", "b", "ab", "aab", "é", "漢", "😀", "\n", " ", "pass", "word", "password"]


@examples(400)
@given(data=st.data())
def test_equals_reference(data):
    patterns = data.draw(
        st.lists(
            st.sampled_from(["a", "aa", "aba", "ab", "password", "wordp", "b"]),
            min_size=1,
            max_size=3,
        )
    )
    charset = data.draw(st.sampled_from(["utf-8", "iso-8859-1", "windows-1252"]))
    replacement = data.draw(st.sampled_from(["[REDACTED]", "", "a", r"<\g<0>>", "é"]))
    text = "".join(data.draw(st.lists(st.sampled_from(PIECES), max_size=40)))
    body = text.encode("utf-8") + data.draw(st.sampled_from([b"", b"\xff", b"\xe2\x82"]))
    transform = Redact(patterns=patterns, replacement=replacement)
    assert transform.open(make_ctx(charset))._on_bytes
    ctx = make_ctx(charset)
    got = run(transform, data.draw(chunkings(body)), ctx)
    assert got == redact_reference(body, patterns, replacement, charset)
    assert ctx.counters.get("redactions", 0) == matches(body, patterns, replacement, charset)


def matches(body: bytes, patterns: list[str], replacement: str, charset: str) -> int:
    """How many replacements the reference makes."""
    text = body.decode(charset, "surrogateescape")
    total = 0
    for pattern in patterns:
        text, n = re.subn(pattern, replacement, text)
        total += n
    return total


@pytest.mark.parametrize("finder", [True, False], ids=["hyperscan", "bytes.find"])
def test_dense_occurrences(finder, monkeypatch):
    if not finder:
        monkeypatch.setattr(redact_prefilter, "MAX_HITS", 0)  # every scan gives up: bytes.find
    body = b"a" * 9001 + b"b" + b"ab" * 5000
    chunks = [body[i : i + 301] for i in range(0, len(body), 301)]  # under MAX_HITS each
    ctx = make_ctx()
    got = run(Redact(patterns=["aa", "ab"], replacement="x"), chunks, ctx)
    assert got == redact_reference(body, ["aa", "ab"], "x")
    assert ctx.counters["redactions"] == matches(body, ["aa", "ab"], "x", "utf-8") == 9501


# --------------------------------------------------------------------------------------------
# dense matches: each way of finding them, forced, against the reference

SELF_OVERLAPPING = ["aa", "aaa", "abab", "aba", "abaab"]
LITERAL_PATHS = {
    "hyperscan": {"SPARSE_BYTES": 1},  # never dense: Hyperscan finds every occurrence
    "split": {"SPARSE_BYTES": 10**9},  # always dense: cut, then bytes.split and join
    "find": {"SPARSE_BYTES": 10**9, "_CUT_TRIES": 0},  # no cut found: a bytes.find loop
}


def dense_bodies(draw: st.DrawFn) -> bytes:
    """Runs of the patterns' own letters (most positions start an occurrence), with
    multi-byte characters and an invalid byte here and there."""
    pieces = st.sampled_from(["a", "b", "ab", "aab", "abab", "aaaa", "qxhost", "qx", "é", "😀"])
    text = "".join(draw(st.lists(pieces, max_size=60)))
    return text.encode("utf-8") + draw(st.sampled_from([b"", b"\xff", b"\xf0\x9f"]))


@pytest.mark.parametrize("path", list(LITERAL_PATHS))
@examples(300)
@given(data=st.data())
def test_dense_and_self_overlapping_literals_equal_reference(path, data):
    patterns = data.draw(
        st.lists(st.sampled_from([*SELF_OVERLAPPING, "ab", "b", "qxhost"]), min_size=1, max_size=3)
    )
    replacement = data.draw(st.sampled_from(["[REDACTED]", "", "a", "ab"]))
    body = dense_bodies(data.draw)
    chunks = data.draw(chunkings(body))
    transform = Redact(patterns=patterns, replacement=replacement)
    ctx = make_ctx()
    with mock.patch.multiple(redact_literal, **LITERAL_PATHS[path]):
        assert transform.open(make_ctx())._on_bytes
        got = run(transform, chunks, ctx)
    assert got == redact_reference(body, patterns, replacement)
    assert ctx.counters.get("redactions", 0) == matches(body, patterns, replacement, "utf-8")


@pytest.mark.parametrize("path", list(LITERAL_PATHS))
@pytest.mark.parametrize("pattern", [*SELF_OVERLAPPING, "qxhost"])
def test_long_dense_bodies_in_big_chunks(path, pattern):
    """Chunks of many occurrences (the split path's cut steps back over ones that straddle
    it), cut at every offset modulo the pattern's length."""
    body = (b"x" + pattern.encode() * 3 + pattern[:-1].encode() + b"\xc3\xa9") * 700
    want = redact_reference(body, [pattern], "#")
    count = matches(body, [pattern], "#", "utf-8")
    for offset in range(len(pattern) + 1):
        chunks = [body[:offset]] + [body[i : i + 4099] for i in range(offset, len(body), 4099)]
        ctx = make_ctx()
        with mock.patch.multiple(redact_literal, **LITERAL_PATHS[path]):
            got = run(Redact(patterns=[pattern], replacement="#"), chunks, ctx)
        assert got == want
        assert ctx.counters["redactions"] == count


def test_the_way_follows_the_density():
    """Hyperscan while occurrences are sparse, bytes.split once a chunk is dense, and back."""
    stage = redact_literal.LiteralStage(b"qxhost", b"#")
    sparse = b"x" * 10_000 + b"qxhost"
    dense = b"ab qxhost " * 1000
    stage.feed(sparse)
    assert not stage._dense
    stage.feed(dense)
    assert stage._dense
    stage.feed(sparse * 3)
    assert not stage._dense
    assert stage.redactions == 1 + 1000 + 3
