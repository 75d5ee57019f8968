"""Tests of the ``redact`` transform: streamed output == ``redact_reference`` for every chunking."""

from __future__ import annotations

import asyncio
import re

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from plugins import redact as redact_module
from plugins.redact import Options, Redact, parse_size, redact_reference
from plugins.redact import stream as redact_stream
from proxy.transform_api import TransformContext

from .transform_support import chunkings, make_ctx, split

SETTINGS = settings(
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,  # ``way``: the same for every example
    ],
)


def examples(n: int) -> settings:
    return settings(SETTINGS, max_examples=n)


# Each equality test runs twice: as the stream decides by default (short texts: match by
# match), and with every stretch of decided text, however short, replaced in bulk (re.subn).
BULK = {"_BULK_MIN": 1, "SPARSE_CHARS": 10**9}


@pytest.fixture(params=["by match", "in bulk"])
def way(request, monkeypatch):
    if request.param == "in bulk":
        for name, value in BULK.items():
            monkeypatch.setattr(redact_stream, name, value)
    return request.param


EXTRA = ["é", "漢", "😀", " ", "\n"]  # multi-byte characters get split by the byte chunkings


def texts(tokens: list[str], max_size: int = 40, extra: bool = True) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(tokens + EXTRA if extra else tokens), max_size=max_size).map(
        "".join
    )


def run(transform: Redact, chunks: list[bytes], ctx: TransformContext | None = None) -> bytes:
    """Drive a stream chunk by chunk, checking that at most max_match is held after each."""
    stream = transform.open(ctx if ctx is not None else make_ctx())
    out = []
    for chunk in chunks:
        piece = stream.feed(chunk)
        assert isinstance(piece, bytes)
        out.append(piece)
        assert all(h <= transform.options.max_match for h in stream.held), stream.held
    out.append(stream.close())
    return b"".join(out)


async def collect(transform: Redact, chunks: list[bytes], ctx: TransformContext) -> list[bytes]:
    async def source():
        for chunk in chunks:
            yield chunk

    return [piece async for piece in transform(source(), ctx)]


# --------------------------------------------------------------------------------------------
# equality with the reference

# (pattern, tokens the texts are made of, extra replacement templates)
TRICKY: list[tuple[str, list[str], list[str]]] = [
    (r"abcd|ab", ["a", "b", "c", "d", "ab", "abc", "x"], []),
    (r"a+", ["a", "aa", "b"], [r"<\g<0>>"]),
    (r"password=\S+", ["password=", "pass", "word=", "=", "x", "\t", "\x1c", "\x85"], []),
    (r"(?i)secret", ["secret", "SECRET", "sec", "ret", "S", "\u017f", "x"], []),
    (r"\bkey\b", ["key", "k", "ey", "s", "_", "²", "-", "\u0301"], []),
    (r"foo(?=bar)", ["foo", "bar", "ba", "b", "z", "fo", "o"], []),
    (r"(?<=x)y+", ["x", "y", "yy", "z"], []),
    (r"^a", ["a", "b", "\n"], []),
    (r"(?m)^b.*$", ["b", "a", "\n", "\r", "bb"], []),
    (r"x$", ["x", "y", "\n", "x\n"], []),
    (r"\d{3}-\d{4}", ["1", "23", "-", "456", "٣", "x"], [r"<\g<0>>"]),
    (r"(a|b)*c", ["a", "b", "c", "ab", "x"], [r"<\1>", r"\1\1"]),
    (r'"token":\s*"[^"]*"', ['"token":', '"', "token", ":", "a", "\\", "\t", "\x1c"], []),
    (r"(?P<k>key)=(?P<v>\w+)", ["key=", "key", "=", "v", "é", "-"], [r"\g<k>=***", r"\2"]),
    (r"x*", ["x", "y", "xx"], ["-"]),
    (r"\s+", [" ", "\t", "\x1c", "\u2028", "a"], [" "]),
    (r"(?s)<!--.*?-->", ["<!--", "-->", "-", "->", "a", "<!"], []),
    (r"\w+@\w+\.com", ["a", "b", "@", ".", "com", ".co", "\u0301"], []),
    # small alphabets: lookaheads, counted repeats, lazy repeats near a chunk end
    (r"a(?=bc)", ["a", "b", "c"], []),
    (r"x(?!yz)\w", ["x", "y", "z"], []),
    (r"(?=(\w+))\w", ["a", "b", "-"], [r"<\1>"]),
    (r"xa{3,}", ["x", "a", "b"], []),
    (r"q\d{2,4}?z", ["q", "1", "z", "x"], []),
    (r"(a)(?:b\1)+", ["a", "b", "c"], [r"<\1>"]),
]
REPLACEMENTS = ["[REDACTED]", "", "Z"]


@pytest.mark.parametrize(("pattern", "tokens", "templates"), TRICKY, ids=[t[0] for t in TRICKY])
@examples(120)
@given(data=st.data())
def test_tricky_patterns_equal_reference(way, pattern, tokens, templates, data):
    text = data.draw(texts(tokens))
    replacement = data.draw(st.sampled_from(REPLACEMENTS + templates))
    body = text.encode()
    chunks = data.draw(chunkings(body))
    transform = Redact(patterns=[pattern], replacement=replacement)
    ctx = make_ctx()
    assert run(transform, chunks, ctx) == redact_reference(body, [pattern], replacement)
    expected = len(re.findall(pattern, text))
    assert ctx.counters.get("redactions", 0) == expected


# (pattern, body): every split of the body in two or three chunks is tried
BOUNDARIES = [
    (r"xa{3,}", "bxaaab xaab xaaaa"),
    (r"abcd|ab", "abcabcdab"),
    (r"foo(?=bar)", "foobafoobarfoob"),
    (r"x(?!yz)\w", "xyzxyaxy"),
    (r"(a)(?:b\1)+", "ababacabab"),
    (r"(a+)b\1", "aabaa abaa aaba"),
    (r"(['\"]).*?\1", "'a' \"b' c\""),
    (r"\bkey\b", "key keys akey key"),
    (r"x$", "ax\nx\n\nx"),
    (r"(?m)^b.*$", "b1\nab\nb"),
    (r"password=\S+", "password=1 passwor password="),
    (r"(?=(\w+))\w", "ab c"),
    (r"q\d{2,4}?z", "q12z q1234z q1z"),
    (r"x*", "axxb"),
    (r"(|a)b?", "aab ba"),  # re.sub's rule: after an empty match, a non-empty one at the same place
    (r"\B.", "ab cd"),
    (r"(?<=ab)c|b", "abcbc"),
    (r"é+|漢", "éé ée漢"),
]


@pytest.mark.parametrize(("pattern", "text"), BOUNDARIES, ids=[b[0] for b in BOUNDARIES])
def test_every_split_in_two_or_three(way, pattern, text):
    body = text.encode()
    expected = redact_reference(body, [pattern], r"<\g<0>>")
    transform = Redact(patterns=[pattern], replacement=r"<\g<0>>")
    for i in range(len(body) + 1):
        for j in range(i, len(body) + 1):
            chunks = [body[:i], body[i:j], body[j:]]
            assert run(transform, chunks) == expected, chunks


# (pattern, a line repeated into a body of dense matches): the body is cut at every offset of
# the line, then into 2,000-byte chunks, so that stretches replaced in bulk start everywhere
DENSE_LINES = [
    (r"\bkey\b", "akey key keys _key k\n"),
    (r"\b\d{3,4}\b", "x1234 123 12 12345 a999 9999 1\n"),
    (r"(?<=ab)c|b", "abcbc abc b\n"),
    (r"(?<![a-z])id=\d{1,5}", "xid=12 id=3 uid=4 id=123456\n"),
    (r"\s\d\d", "a\x1c12 b 34\t5\n"),  # \s: Unicode counts \x1c as space, ASCII does not
    (r"é\d|\w\d", "é1 e2 é3 漢4\n"),
    (r"(?i)qxhost", "QXhost qxhos qxhost\n"),
    (r"(?m)x$|^y", "x\nyx\n y\n"),
    (r"x$|\Ay", "x\nyx\n y\n"),
]


@pytest.mark.parametrize(("pattern", "line"), DENSE_LINES, ids=[d[0] for d in DENSE_LINES])
def test_dense_matches_in_long_chunks(way, pattern, line):
    body = (line * 300).encode()
    want = redact_reference(body, [pattern], r"<\g<0>>")
    count = len(re.findall(pattern, body.decode()))
    for offset in range(len(line.encode()) + 1):
        chunks = [body[:offset]] + [body[i : i + 2000] for i in range(offset, len(body), 2000)]
        ctx = make_ctx()
        assert run(Redact(patterns=[pattern], replacement=r"<\g<0>>"), chunks, ctx) == want
        assert ctx.counters.get("redactions", 0) == count


ALL_TOKENS = sorted({tok for _, tokens, _ in TRICKY for tok in tokens})


@examples(300)
@given(data=st.data())
def test_chains_of_patterns_equal_reference(way, data):
    patterns = data.draw(
        st.lists(st.sampled_from([p for p, _, _ in TRICKY]), min_size=2, max_size=4)
    )
    replacement = data.draw(st.sampled_from([*REPLACEMENTS, "password=x", "key", "a"]))
    body = data.draw(texts(ALL_TOKENS, 60)).encode()
    chunks = data.draw(chunkings(body))
    ctx = make_ctx()
    transform = Redact(patterns=patterns, replacement=replacement)
    assert run(transform, chunks, ctx) == redact_reference(body, patterns, replacement)
    text, total = body.decode(), 0
    for pattern in patterns:
        text, n = re.subn(pattern, replacement, text)
        total += n
    assert ctx.counters.get("redactions", 0) == total


@examples(200)
@given(data=st.data())
def test_invalid_utf8_bytes_are_kept(way, data):
    pattern = data.draw(st.sampled_from([r"password=\S+", r"a+", r".", r"[^a]+", r"\W"]))
    pieces = data.draw(
        st.lists(
            st.one_of(
                texts(["password=", "a", "b"], 5).map(str.encode),
                st.binary(max_size=4),
                st.sampled_from([b"\xff", b"\xe6\xbc", b"\xc3", b"\xed\xa0\x80", b"\xf0\x9f"]),
            ),
            max_size=12,
        )
    )
    body = b"".join(pieces)
    chunks = data.draw(chunkings(body))
    transform = Redact(patterns=[pattern])
    assert run(transform, chunks) == redact_reference(body, [pattern])


@examples(150)
@given(data=st.data())
def test_latin1_charset(way, data):
    pattern = data.draw(st.sampled_from([r"(?i)grüße=\S+", r"\w+é", r"[à-ÿ]+", r"\bÿ\b"]))
    tokens = ["grüße=", "GRÜSSE=", "é", "à", "ÿ", "x", "\xa0", "\x85", " ", "\n"]
    text = data.draw(texts(tokens, extra=False))
    body = text.encode("latin-1")
    chunks = data.draw(chunkings(body))
    got = run(Redact(patterns=[pattern]), chunks, make_ctx("latin-1"))
    assert got == redact_reference(body, [pattern], charset="latin-1")
    assert got == re.sub(pattern, "[REDACTED]", text).encode("latin-1")


def test_unknown_charset_falls_back_to_utf8():
    body = "é password=x漢 y".encode()
    got = run(Redact(patterns=[r"password=\S+"]), [body[:2], body[2:9], body[9:]], make_ctx("x"))
    assert got == "é [REDACTED] y".encode()
    assert redact_reference(body, [r"password=\S+"], charset="x") == got


@st.composite
def random_regexes(draw: st.DrawFn, depth: int = 0) -> str:
    """Small patterns over a, b, c with most of re's constructs."""
    simple = ["a", "b", "c", "[ab]", "[^a]", ".", r"\s", r"\w", r"\W"]
    assertions = ["^", "$", r"\b", r"\B", r"\Z", r"\A", "(?<=a)", "(?<!b)", "(?<=ab)"]
    alternatives = []
    for _ in range(draw(st.integers(1, 3))):
        pieces = []
        for _ in range(draw(st.integers(1, 4))):
            kind = draw(st.sampled_from(["simple"] * 4 + ["assertion", "group"]))
            if kind == "assertion" or (kind == "group" and depth >= 2):
                pieces.append(draw(st.sampled_from(assertions)))
                continue
            if kind == "group":
                inner = draw(random_regexes(depth + 1))
                forms = ["({})", "(?:{})", "(?>{})", "(a)?(?(1)b|{})", r"(a|{})\1"]
                lookaround = draw(st.sampled_from(["(?={})", "(?!{})", None, None]))
                if lookaround:
                    pieces.append(lookaround.format(inner))
                    continue
                item = draw(st.sampled_from(forms)).format(inner)
            else:
                item = draw(st.sampled_from(simple))
            quantifier = draw(st.sampled_from(["", "", "*", "+", "?", "{2}", "{1,3}", "{3,}"]))
            if quantifier:
                quantifier += draw(st.sampled_from(["", "?", "+"]))
            pieces.append(f"(?:{item}){quantifier}" if quantifier else item)
        alternatives.append("".join(pieces))
    return "|".join(alternatives)


def draw_pattern(data: st.DataObject, flags: list[str]) -> str:
    """A random pattern, with one of ``flags`` in front, that ``redact`` accepts."""
    pattern = data.draw(st.sampled_from(flags)) + data.draw(random_regexes())
    try:
        re.compile(pattern)
        Options(patterns=[pattern])
    except (re.error, ValidationError):
        assume(False)
    return pattern


@examples(400)
@given(data=st.data())
def test_random_patterns_equal_reference(way, data):
    pattern = draw_pattern(data, ["", "(?i)", "(?m)", "(?s)"])
    text = data.draw(st.text(alphabet="aabbc \nA", max_size=30))
    try:
        expected = redact_reference(text.encode(), [pattern], "<>")
    except SystemError:  # a bug of re itself on some patterns
        assume(False)
    chunks = data.draw(chunkings(text.encode()))
    try:
        got = run(Redact(patterns=[pattern], replacement="<>"), chunks)
    except SystemError:  # the same bug of re, met on the text with the sentinel appended
        assume(False)
    assert got == expected


@examples(60)
@given(data=st.data())
def test_async_generator_equals_reference(data):
    pattern, tokens, _ = data.draw(st.sampled_from(TRICKY))
    body = data.draw(texts(tokens)).encode()
    chunks = data.draw(chunkings(body))
    pieces = asyncio.run(collect(Redact(patterns=[pattern]), chunks, make_ctx()))
    assert all(pieces), "no empty chunk is yielded"
    assert b"".join(pieces) == redact_reference(body, [pattern])


def test_empty_body():
    assert run(Redact(patterns=[r"a+"]), []) == b""
    assert run(Redact(patterns=[r"a+"]), [b"", b""]) == b""
    assert asyncio.run(collect(Redact(patterns=[r"a+"]), [b"", b""], make_ctx())) == []
    assert redact_reference(b"", [r"x*"], "-") == b"-"
    assert run(Redact(patterns=[r"x*"], replacement="-"), [b""]) == b"-"


def test_reference_examples():
    body = b"user=bob password=hunter2 ok"
    assert redact_reference(body, [r"password=\S+"]) == b"user=bob [REDACTED] ok"
    assert redact_reference(b"ab", [r"(a)(b)"], r"\2\1") == b"ba"
    assert redact_reference(b"\xffab", [r"a", r"\udcff"], "X") == b"XXb"


# --------------------------------------------------------------------------------------------
# max_match: what is held is bounded, and a longer match never leaks

# (pattern, text before the secret, of which kept, text after it, of which kept)
RUNAWAYS = [
    (r"password=\S+", b"x password=", b"x ", b" tail", b" tail"),
    (r'"token":\s*"[^"]*"', b'{"token": "', b"{", b'", "n": 1}', b', "n": 1}'),
    (r"(?m)^b.*$", b"a\nb", b"a\n", b"\nnext line", b"\nnext line"),
    (
        r"-----BEGIN KEY-----[\s\S]*?-----END KEY-----",
        b"x\n-----BEGIN KEY-----\n",
        b"x\n",
        b"\n-----END KEY-----\nafter",
        b"\nafter",
    ),
]


@pytest.mark.parametrize(
    ("pattern", "before", "kept_before", "after", "kept_after"),
    RUNAWAYS,
    ids=[r[0] for r in RUNAWAYS],
)
@examples(60)
@given(data=st.data())
def test_longer_match_never_leaks(pattern, before, kept_before, after, kept_after, data):
    max_match = data.draw(st.integers(20, 64))
    secret = b"Q" * data.draw(st.integers(max_match, 5 * max_match))
    ends = data.draw(st.booleans())
    body = before + secret + (after if ends else b"")
    chunks = data.draw(chunkings(body))
    ctx = make_ctx()
    got = run(Redact(patterns=[pattern], max_match=max_match), chunks, ctx)
    assert b"Q" not in got
    assert got.startswith(kept_before + b"[REDACTED]")
    if ends:
        assert got.endswith(b"[REDACTED]" + kept_after)
    else:
        assert got.endswith(b"[REDACTED]")
    assert ctx.counters["redactions"] >= 1


@examples(150)
@given(data=st.data())
def test_matches_within_max_match_equal_reference(data):
    max_match = data.draw(st.integers(4, 24))
    word = st.text(alphabet="kxy=", min_size=1, max_size=max_match - 2)
    words = data.draw(st.lists(st.one_of(word, word.map(lambda w: "k=" + w)), max_size=12))
    body = " ".join(words).encode()
    chunks = data.draw(chunkings(body))
    transform = Redact(patterns=[r"k=\w+"], max_match=max_match)
    assert run(transform, chunks) == redact_reference(body, [r"k=\w+"])


def test_fail_closed_details():
    transform = Redact(patterns=[r"(?P<k>password)=(\S+)"], replacement=r"\g<k>=\2!", max_match=8)
    stream = transform.open(make_ctx())
    assert stream.feed(b"a pass") == b"a "
    assert stream.held == [4]
    out = stream.feed(b"word=01")  # 11 > 8 characters held: redacted, group references empty
    assert out == b"=!"
    assert stream.held == [0]
    assert stream.feed(b"89abc") == b""  # still the same runaway token: swallowed
    assert stream.feed(b"d e") == b" e"
    assert stream.feed(b" password=1 ") == b" password=1! "  # then as usual
    assert stream.close() == b""
    assert stream.redactions == 2


# --------------------------------------------------------------------------------------------
# latency: what cannot be part of a match is released before the next chunk is supplied


class QueueChunks:
    """An async iterator the test feeds by hand (None ends it)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def __aiter__(self) -> QueueChunks:
        return self

    async def __anext__(self) -> bytes:
        item = await self.queue.get()
        if item is None:
            raise StopAsyncIteration
        return item


async def next_piece(agen) -> bytes:
    return await asyncio.wait_for(anext(agen), timeout=5)


async def test_safe_text_is_released_at_once():
    source = QueueChunks()
    ctx = make_ctx()
    agen = Redact(patterns=[r"password=\S+"])(source, ctx)
    source.queue.put_nowait(b"hello world ")
    assert await next_piece(agen) == b"hello world "
    source.queue.put_nowait(b"hello pass")
    assert await next_piece(agen) == b"hello "  # "pass" may start a match: held
    source.queue.put_nowait(b"word=abc")  # still undecided: nothing is yielded for it
    source.queue.put_nowait(b"")
    source.queue.put_nowait(b" def")
    assert await next_piece(agen) == b"[REDACTED] def"
    assert ctx.counters == {"redactions": 1}
    source.queue.put_nowait(b"password=tail")
    source.queue.put_nowait(None)
    assert await next_piece(agen) == b"[REDACTED]"
    with pytest.raises(StopAsyncIteration):
        await next_piece(agen)


# Five patterns as an LLM answer's text meets them: tokens of a few characters each
TOKEN_PATTERNS = [
    r"sk-[A-Za-z0-9]{20,}",
    r"(?i)password=\S+",
    r"[\w.+-]+@[\w-]+\.[\w.]+",
    r"\b(?:\d[ -]?){13,16}\b",
    r"(?<=key:)\s*\w+",
]
TOKENS = ["sk-", "abc", "DEF", "0123", "x", "pass", "word=", "Pass", "bob", "@", "ex", ".com", " "]
TOKENS += ["4111", "-", "1111 ", "key:", " v", "!", "é", "😀", "\n"]


@examples(300)
@given(data=st.data())
def test_tiny_feeds_equal_reference(data):
    """Feeds of a few characters, most of which cannot start a match of most patterns (those
    stages let them through without scanning), cut anywhere (split characters too)."""
    body = "".join(data.draw(st.lists(st.sampled_from(TOKENS), max_size=60))).encode()
    chunks = split(body, data.draw(st.lists(st.integers(0, len(body)), max_size=40)))
    ctx = make_ctx()
    assert run(Redact(patterns=TOKEN_PATTERNS), chunks, ctx) == redact_reference(
        body, TOKEN_PATTERNS
    )


def test_what_no_match_can_start_in_is_not_scanned():
    stream = Redact(patterns=TOKEN_PATTERNS[:2]).open(make_ctx())
    assert [stage._spec.first is not None for stage in stream.stages] == [True, True]
    assert stream.feed(b"hello ") == b"hello "  # neither "s" nor "p": both stages skip it
    assert stream.feed(b"sk-") == b""
    assert stream.feed(b"a") == b""  # held by the first stage: it is not skipped then
    assert stream.feed(b"b" * 19 + b" ") == b"[REDACTED] "
    assert stream.close() == b""


async def test_decided_matches_and_split_characters_are_released_at_once():
    source = QueueChunks()
    agen = Redact(patterns=[r"(?i)secret", r"\bkey\b"])(source, make_ctx())
    source.queue.put_nowait(b"my SECRET is caf\xc3")  # "é" split across chunks
    assert await next_piece(agen) == b"my [REDACTED] is caf"
    source.queue.put_nowait(b"\xa9 key")  # "key" may go on ("keys"): held
    assert await next_piece(agen) == "é ".encode()
    source.queue.put_nowait(b"!")
    assert await next_piece(agen) == b"[REDACTED]!"
    source.queue.put_nowait(None)
    with pytest.raises(StopAsyncIteration):
        await next_piece(agen)


@pytest.mark.parametrize(
    ("pattern", "chunk", "released"),
    [
        (r"abcd|ab", b"xxabc", b"xx"),  # "abcd" may still complete
        (r"a+", b"baaa", b"b"),  # a+ may go on
        (r"x$", b"axy", b"axy"),
        (r"x$", b"ax", b"a"),
        (r"foo(?=bar)", b"a foo", b"a "),
        (r"\d{3}-\d{4}", b"call 555-12", b"call "),
        (r"(?i)secret", b"no match here", b"no match here"),
        (r'"token":\s*"[^"]*"', b'{"token": "ab', b"{"),
    ],
)
def test_hold_back_is_minimal(pattern, chunk, released):
    stream = Redact(patterns=[pattern]).open(make_ctx())
    assert stream.feed(chunk) == released
    assert stream.close() == redact_reference(chunk, [pattern])[len(released) :]


# --------------------------------------------------------------------------------------------
# options


def test_options_model():
    assert Redact.Options is Options is redact_module.Options
    opts = Options(patterns=["a"])
    assert opts.replacement == "[REDACTED]"
    assert opts.max_match == 4096
    with pytest.raises(ValidationError):
        opts.max_match = 5  # frozen
    # the loader calls the factory with the validated fields
    transform = Redact(**Options(patterns=[r"x+"], max_match="1KiB").model_dump())
    assert transform.options.max_match == 1024


def test_bad_regex_error_location():
    with pytest.raises(ValidationError) as info:
        Options(patterns=["ok", "fine", "(unclosed", "ok2"])
    (error,) = info.value.errors()
    assert error["loc"] == ("patterns", 2)
    assert error["msg"].startswith("not a valid regex: missing ), unterminated subpattern")
    with pytest.raises(ValueError, match="not a valid regex"):
        Redact(patterns=["a", "*"])


@pytest.mark.parametrize(
    ("options", "loc", "message"),
    [
        ({"patterns": []}, ("patterns",), "at least 1"),
        ({"patterns": "a+"}, ("patterns",), "list"),
        ({"patterns": [1]}, ("patterns", 0), "string"),
        ({"patterns": ["(?<=a(?=b))c"]}, ("patterns", 0), "not supported for streaming"),
        ({"patterns": ["(a)"], "replacement": r"\2"}, ("replacement",), "invalid group"),
        ({"patterns": ["a", "(?P<x>a)"], "replacement": r"\g<x>"}, ("replacement",), "[0]"),
        ({"patterns": ["a"], "max_match": "lots"}, ("max_match",), "got 'lots'"),
        ({"patterns": ["a"], "max_match": 0}, ("max_match",), "greater than or equal to 1"),
        ({"patterns": ["a"], "max_match": True}, ("max_match",), "expected a size"),
        ({"patterns": ["a"], "colour": "red"}, ("colour",), "Extra inputs"),
    ],
)
def test_option_errors(options, loc, message):
    with pytest.raises(ValidationError) as info:
        Options(**options)
    errors = info.value.errors()
    assert errors[0]["loc"] == loc
    assert message in errors[0]["msg"]
    with pytest.raises((ValueError, TypeError)):
        Redact(**options)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (512, 512),
        ("512", 512),
        ("512B", 512),
        ("4KiB", 4096),
        ("1MiB", 2**20),
        ("2GiB", 2**31),
        ("10KB", 10_000),
        ("1MB", 10**6),
        (" 8 kib ", 8192),
    ],
)
def test_parse_size(value, size):
    assert parse_size(value) == size
    assert Options(patterns=["a"], max_match=value).max_match == size


def test_replacement_backrefs_are_validated_per_pattern():
    Options(patterns=[r"(a)", r"(b)(c)"], replacement=r"<\1>")
    with pytest.raises(ValidationError, match=r"patterns\[0\]"):
        Options(patterns=[r"(a)", r"(b)(c)"], replacement=r"<\2>")
