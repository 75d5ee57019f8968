"""``redact``'s lead check: the cheap test that no match can start in a piece of text.

Most small pieces of a token stream hold no character a match can begin with; the stage then
passes them without running its patterns. Whatever the split, the output must still equal the
whole-body reference, and the stage must hold no more than the patterns would.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugins.redact import Redact, redact_reference

from .transform_support import chunkings, make_ctx

SETTINGS = settings(
    deadline=None,
    database=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Each shape of lead: literal heads (cut by the end), a run of one test followed by a disjoint
# one, a repeat of several tests (its first test only), bounded runs, case folding, zero-width
# tests in front, and patterns with no lead at all.
PATTERNS = [
    r"sk-[A-Za-z0-9]{4,}",
    r"[\w.+-]+@[\w-]+\.\w+",
    r"(?i)pass=\S+",
    r"(?:ab)+c",
    r"a{1,3}b",
    r"[ab]+c",
    r"\b\d{3}\b",
    r"(?<=x)ab",
    r"a+(?=b)",
    r"(?:é|😀)+x",
    r"a*b",
]
TOKENS = ["a", "b", "c", "ab", "abc", "x", "sk-", "Ab9", "@", ".", "e", "pass=", "PASS=", "1"]
TOKENS += ["123", " ", "\n", "é", "😀", "漢", "-"]


def run(transform: Redact, chunks: list[bytes]) -> bytes:
    stream = transform.open(make_ctx())
    out = [stream.feed(chunk) for chunk in chunks]
    return b"".join(out) + stream.close()


@SETTINGS
@given(data=st.data())
def test_each_pattern_equals_the_reference(data: st.DataObject) -> None:
    pattern = data.draw(st.sampled_from(PATTERNS))
    body = "".join(data.draw(st.lists(st.sampled_from(TOKENS), max_size=40))).encode()
    chunks = data.draw(chunkings(body))
    assert run(Redact(patterns=[pattern]), chunks) == redact_reference(body, [pattern])


@SETTINGS
@given(data=st.data())
def test_chains_of_patterns_equal_the_reference(data: st.DataObject) -> None:
    patterns = data.draw(st.lists(st.sampled_from(PATTERNS), min_size=2, max_size=5))
    body = "".join(data.draw(st.lists(st.sampled_from(TOKENS), max_size=60))).encode()
    chunks = data.draw(chunkings(body))
    assert run(Redact(patterns=patterns), chunks) == redact_reference(body, patterns)


@pytest.mark.parametrize(
    ("pattern", "lead"),
    [
        ("sk-[a-z]{3,}", True),
        (r"[\w.]+@x", True),
        (r"(?:ab)+c", True),
        (r"\b\d+", True),
        (r"a*b", False),
        (r"(a|b)c", False),
        (r"\b", False),
    ],
)
def test_which_patterns_have_a_lead(pattern: str, lead: bool) -> None:
    assert (Redact(patterns=[pattern])._specs[0].lead is not None) is lead


def test_a_piece_no_match_can_start_in_passes_at_once() -> None:
    stream = Redact(patterns=[r"sk-[a-z]{3,}", r"[\w.]+@[\w]+\.\w+"]).open(make_ctx())
    assert stream.feed(b"the ") == b"the "  # nothing held: 'the' is followed by a space
    assert stream.feed(b"s") == b""  # may start a key, and an address
    assert stream.feed(b"k-abc ") == b"[REDACTED] "
    assert stream.feed(b"me") == b""  # may be the start of an address
    assert stream.feed(b"@x") == b""
    assert stream.feed(b".io!") == b"[REDACTED]!"
    assert stream.close() == b""


def test_a_long_piece_skips_the_lead(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lead is an ``re`` search over the whole piece: only short pieces are worth it, long
    ones go to the prefilter (or the patterns) at once."""
    transform = Redact(patterns=[r"(?i)pass=\S+", r"sk-[A-Za-z0-9]{4,}"])
    read: list[int] = []
    for spec in transform._specs:
        lead = spec.lead

        class Spy:
            def search(self, text: str, lead: Any = lead) -> Any:
                read.append(len(text))
                return lead.search(text)

        monkeypatch.setattr(spec, "lead", Spy())
    body = "the word " * 100 + "PASS=x1 and sk-abcd "
    stream = transform.open(make_ctx())
    out = stream.feed(body.encode()) + stream.feed(b"tail") + stream.close()
    assert out == redact_reference((body + "tail").encode(), [s.pattern for s in transform._specs])
    assert read == [4, 4]  # the short piece only, once per stage
