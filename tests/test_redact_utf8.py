"""``redact`` on long pieces of UTF-8: the stages pass the bytes on as they are where the
prefilter finds no match start, only the last characters go through the patterns, and a
character cut between pieces waits for the next one.

The path is taken for pieces longer than ``LEAD_CHARS`` characters; the tests lower it so that
short texts (with every kind of cut, multi-byte characters included) take it too. Whatever the
split, the output must equal the whole-body reference, byte for byte, and the count its count.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.textgen import PATTERNS_10
from plugins.redact import Redact, redact_reference
from plugins.redact import stream as redact_stream

from .transform_support import chunkings, make_ctx

SETTINGS = settings(
    deadline=None,
    database=None,
    max_examples=300,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,  # ``long``: the same for every example
    ],
)

# The realistic set, and patterns that read non-ASCII characters, look behind or ahead, end
# with a repeat, or match at the end of the text.
PATTERNS = [
    *PATTERNS_10,
    r"é+x",
    r"(?i)straße=\w+",
    r"a.c",
    r"(?<=😀)ab",
    r"\bab\b",
    r"x\S+",
    r"b$",
    r"漢(?=字)",
    r"[^ab\n]{3}c",
    "abab",
    "b c",
]
TOKENS = ["a", "b", "c", "ab", "x", "é", "😀", "漢", "字", " ", "\n", "1234-", "123-45-", "-"]
TOKENS += ["password=hunter2", "AKIA", "ghp_", "api_key=", "STRASSE=", "Straße=", "xoxb-"]
TOKENS += ["0123456789abcdef", "ABCDEFGHIJ", "client_secret=", "Authorization: Bearer "]
REPLACEMENTS = ["[REDACTED]", "", "<\\g<0>>", "é😀", "ab"]


@pytest.fixture(params=[0, 16])
def long(request, monkeypatch):
    """Every piece (0), or those of more than 16 characters, is a long one."""
    monkeypatch.setattr(redact_stream, "LEAD_CHARS", request.param)
    return request.param


def run(transform: Redact, chunks: list[bytes]) -> tuple[bytes, int]:
    ctx = make_ctx()
    stream = transform.open(ctx)
    out = []
    for chunk in chunks:
        out.append(stream.feed(chunk))
        assert all(h <= transform.options.max_match for h in stream.held), stream.held
    out.append(stream.close())
    return b"".join(out), ctx.counters.get("redactions", 0)


def reference(body: bytes, patterns: list[str], replacement: str) -> tuple[bytes, int]:
    text, total = body.decode("utf-8", "surrogateescape"), 0
    for pattern in patterns:
        text, n = re.subn(pattern, replacement, text)
        total += n
    return text.encode("utf-8", "surrogateescape"), total


def bodies(max_size: int = 80) -> st.SearchStrategy[bytes]:
    return st.lists(st.sampled_from(TOKENS), max_size=max_size).map(lambda t: "".join(t).encode())


@SETTINGS
@given(data=st.data())
def test_chains_on_long_pieces_equal_the_reference(long: int, data: st.DataObject) -> None:
    patterns = data.draw(st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=6))
    replacement = data.draw(st.sampled_from(REPLACEMENTS))
    body = data.draw(bodies())
    chunks = data.draw(chunkings(body))
    got = run(Redact(patterns=patterns, replacement=replacement), chunks)
    assert got == reference(body, patterns, replacement)


@SETTINGS
@given(data=st.data())
def test_invalid_bytes_on_long_pieces_are_kept(long: int, data: st.DataObject) -> None:
    patterns = data.draw(st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=4))
    parts = data.draw(
        st.lists(
            st.one_of(bodies(8), st.sampled_from([b"\xff", b"\x80", b"\xf0\x9f", b"\xed\xa0\x80"])),
            max_size=12,
        )
    )
    body = b"".join(parts)
    chunks = data.draw(chunkings(body))
    assert run(Redact(patterns=patterns), chunks) == reference(body, patterns, "[REDACTED]")


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 64 * 1024])
def test_characters_cut_between_long_pieces(size: int) -> None:
    """The realistic set over lines with a secret and non-ASCII characters, in pieces of
    ``size`` bytes (most of them cutting a character)."""
    line = "2024-05-01T00:00:00Z INFO served é😀 user=bob path=/login password=hunter2 ok\n"
    body = (line * 40).encode() if size < 64 * 1024 else (line * 2000).encode()
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    stream = Redact(patterns=PATTERNS_10).open(make_ctx())
    out = [stream.feed(chunk) for chunk in chunks]
    assert stream._decoder is None  # valid UTF-8: no cut character made a decoder
    assert b"".join(out) + stream.close() == redact_reference(body, PATTERNS_10)
    assert stream.redactions == body.count(b"password=hunter2")


@pytest.mark.parametrize("first", ["password=hunter2", r"password=\w+"])
def test_a_stage_with_no_start_passes_the_bytes_on(monkeypatch, first: str) -> None:
    """Stages whose prefilter finds nothing make no text of a long piece, nor does a literal:
    only a regex with a match reads the text, the others their last characters."""
    fed: list[int] = []
    feed_long = redact_stream._Stage.feed_long

    def spy(self, text, data=None):
        fed.append(len(text))
        return feed_long(self, text, data)

    monkeypatch.setattr(redact_stream._Stage, "feed_long", spy)
    body = ("é😀 word " * 1000 + "password=hunter2 " + "word é " * 1000).encode()
    patterns = [first, *PATTERNS_10[1:]]
    stream = Redact(patterns=patterns).open(make_ctx())
    out = stream.feed(body) + stream.close()
    assert out == redact_reference(body, patterns)
    assert stream.redactions == 1
    if first == PATTERNS_10[0]:  # a literal, on the bytes
        assert len(fed) == 9 and max(fed) == 0
    else:  # the regex has a match: it reads the text
        assert len(fed) == 10 and fed[0] > 10_000 and max(fed[1:]) == 0


@pytest.mark.parametrize(
    ("pattern", "end"),
    [
        (r"(?<=😀)ab", "😀ab 😀a😀ab"),
        (r"\bab\b", " ab xab ab"),
        (r"(?<=ab漢)x", "ab漢x ab漢xx"),
        (r"b$", "ab\nb"),
    ],
)
def test_what_is_read_again_sees_the_text_before_it(long: int, pattern: str, end: str) -> None:
    """A long piece with no match start but one cut by its end: the characters kept to read
    again keep the text before them, for look-behinds and word boundaries."""
    body = ("é" * 300 + end).encode()
    for cut in range(len(body) - 20, len(body) + 1):
        chunks = [body[:cut], body[cut:]]
        assert run(Redact(patterns=[pattern]), chunks) == reference(body, [pattern], "[REDACTED]")
