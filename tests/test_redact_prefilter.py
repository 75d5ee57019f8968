"""The Hyperscan prefilter of ``redact``: it never hides a position where ``re`` could match."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.textgen import PATTERNS_10
from plugins.redact import Redact, redact_reference
from plugins.redact import prefilter as redact_prefilter
from plugins.redact.rewrite import _compile_spec, _Emitter

from .test_redact import draw_pattern, examples, run
from .transform_support import chunkings

pytestmark = pytest.mark.skipif(
    redact_prefilter.hyperscan is None, reason="Hyperscan has no wheel for this platform"
)

# The patterns of the benchmark and the README: each must get a prefilter.
REALISTIC = [*PATTERNS_10, r"(?i)password=\S+", r'"token":\s*"[^"]*"']


def head_regex(pattern: str) -> re.Pattern[str]:
    """The head the prefilter stands for, as a plain regex."""
    spec = _compile_spec(pattern)
    nodes = list(spec.parsed)[: spec.split]
    source = _Emitter("\x00", spec.parsed.state.groupwidths).seq(nodes, spec.flags, False)
    return re.compile(source, spec.flags)


def assert_sound(pattern: str, text: str) -> None:
    spec = _compile_spec(pattern)
    prefilter = spec.prefilter
    if prefilter is None:
        return
    starts = prefilter.starts(text, 0, len(text))
    data = text.encode("utf-8", "surrogatepass")
    assert prefilter.starts(text, 0, len(text), data) == starts  # the text's bytes given
    found = prefilter.finds(data)
    head = head_regex(pattern)
    expected = [q for q in range(len(text)) if head.match(text, q)]
    assert found or not expected, (pattern, text, expected)
    if starts is None:  # too many candidates: re scans everything itself
        return
    assert found or not starts, (pattern, text, starts)
    assert set(expected) <= set(starts), (pattern, text, expected, starts)
    assert starts == sorted(set(starts))


@pytest.mark.parametrize("pattern", REALISTIC)
def test_realistic_patterns_are_prefiltered(pattern):
    assert _compile_spec(pattern).prefilter is not None


@pytest.mark.parametrize(
    ("pattern", "text"),
    [
        (r"\b\d{4}-\d{4}-\d{4}-\d{4}\b", "x 4111-1111-1111-1111 y 2024-05-01 1234-5678-9012-3456"),
        (r"(?i)authorization: bearer ", "AUTHORIZATION: Bearer x authorization: bearer y"),
        (r"(?i)\u212a", "k K kk"),  # the Kelvin sign folds to ASCII k under re's rules
        (r"(?i)\u017ftop", "stop STOP Stop"),  # and the long s to s
        (r"a{1,3}b", "aaaab ab b aab"),
        (r"(?<=a)a{1,2}b", "aab aaab"),  # starts later than the leftmost start reported
        (r"(?:ab|a)(?=c)", "abc ac"),
        (r"[^\W\d]\d", "a1 _2 11"),
        (r"(?a)\w\d", "a1 é1"),
    ],
)
def test_starts_cover_every_match(pattern, text):
    assert_sound(pattern, text)
    body = text.encode()
    assert run(Redact(patterns=[pattern]), [body]) == redact_reference(body, [pattern])


def test_a_head_matching_no_ascii_text_has_no_candidates_there():
    prefilter = _compile_spec("éx").prefilter
    assert prefilter is not None and prefilter.source is None
    assert prefilter.starts("abc", 0, 3) == []
    assert prefilter.starts("aéx éy", 0, 6) == [1]  # scanned as UTF-8: character positions
    assert not prefilter.finds(b"abc") and not prefilter.finds("aé éy".encode())
    assert prefilter.finds("aéx".encode())


NON_ASCII = ["é", "漢", "😀", "\u212a", "\u017f", "\udcff", "\u0661"]


@pytest.mark.parametrize(
    ("pattern", "text"),
    [
        (r"\b\d{4}-\d{4}", "é 1234-5678 \u0661\u0662\u0663\u0664-1234 漢1234-5678"),
        (r"(?i)ks", "\u212as \u212a\u017f ks 😀KS"),
        (r"(?i)[j-l][r-t]x", "\u212a\u017fx ksx"),  # ranges fold to non-ASCII letters too
        (r"\w\W\w", "é 漢\udcffa 😀a"),
        (r"[^a]b", "漢b éb ab"),
        (r".😀", "a😀 😀😀"),
    ],
)
def test_starts_cover_every_match_in_utf8(pattern, text):
    assert_sound(pattern, text)
    body = text.encode("utf-8", "surrogateescape")
    chunks = [body[i : i + 3] for i in range(0, len(body), 3)]
    assert run(Redact(patterns=[pattern]), chunks) == redact_reference(body, [pattern])


def test_unfit_heads_get_no_prefilter():
    assert _compile_spec(r"a*").prefilter is None  # may match empty
    assert _compile_spec(r"\b").prefilter is None
    assert _compile_spec(r"\w+x").prefilter is None  # no bounded head
    # a backreference reads unboundedly far: the head stops before it
    spec = _compile_spec(r"(a)b\1")
    assert spec.split == 2 and spec.prefilter is not None
    got = run(Redact(patterns=[r"(a)b\1"]), [b"aba ab", b"a abb"])
    assert got == b"[REDACTED] [REDACTED] abb" == redact_reference(b"aba aba abb", [r"(a)b\1"])


def test_dense_candidates_fall_back_to_re():
    text = "ab" * 2000
    assert _compile_spec("[a-z]").prefilter.starts(text, 0, len(text)) is None
    body = text.encode()
    assert run(Redact(patterns=["[a-z]b"]), [body[:999], body[999:]]) == redact_reference(
        body, ["[a-z]b"]
    )


@examples(400)
@given(data=st.data())
def test_starts_are_sound_for_random_patterns(data):
    pattern = draw_pattern(data, ["", "(?i)", "(?s)", "(?a)"])
    alphabet = "aabbc \nA1-_K" + data.draw(st.sampled_from(["", "".join(NON_ASCII)]))
    text = data.draw(st.text(alphabet=alphabet, max_size=40))
    assert_sound(pattern, text)


@examples(300)
@given(data=st.data())
def test_prefiltered_stream_equals_reference(data):
    """Bodies (ASCII or not: both prefiltered paths) with realistic patterns, any chunking."""
    patterns = data.draw(st.lists(st.sampled_from(REALISTIC), min_size=1, max_size=4))
    pieces = [
        "password=hunter2",
        "4111-1111-1111-1111",
        "078-05-1120",
        "Authorization: Bearer abc.def",
        "client_secret=x",
        '"token": "t"',
        "AKIA" + "A" * 16,
        "-----BEGIN RSA PRIVATE KEY-----",
        "1",
        "-",
        " ",
        "\n",
        "x",
        "ghp_",
        *NON_ASCII,
    ]
    text = "".join(data.draw(st.lists(st.sampled_from(pieces), max_size=30)))
    body = text.encode("utf-8", "surrogateescape")
    chunks = data.draw(chunkings(body))
    assert run(Redact(patterns=patterns), chunks) == redact_reference(body, patterns)
