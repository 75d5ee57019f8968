"""Tests of ``proxy.transform.text.jsonstream``: the streamed output equals a reference built
whole, for every chunking; invalid JSON fails closed; nothing waits that need not."""

from __future__ import annotations

import asyncio
import codecs
import itertools
import json
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.transform.text.errors import TextFormatError
from proxy.transform.text.jsonstream import MAX_DEPTH, JsonArrayFramer, JsonRewriter
from proxy.transform.text.selectors import ANY, Path, Selector, matches, parse_selector

from .transform_support import chunkings, split

SETTINGS = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def examples(n: int) -> settings:
    return settings(SETTINGS, max_examples=n)


def drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends (the test sinks do not) without an event loop."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("the coroutine suspended")


# --------------------------------------------------------------------------------------------
# sinks


class Sink:
    """Records what it is fed; ``transform`` maps each piece (a per-character map, so piecewise
    equals whole); ``hold`` characters wait for the next feed or close; close adds ``suffix``."""

    transform: Callable[[str], str] = staticmethod(str.upper)
    hold = 0
    suffix = ""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fed: list[str] = []
        self.held = ""
        self.closed = False

    @classmethod
    def reference(cls, value: str) -> str:
        return cls.transform(value) + cls.suffix

    async def feed(self, text: str) -> str:
        assert not self.closed and text
        self.fed.append(text)
        self.held += self.transform(text)
        cut = max(len(self.held) - self.hold, 0)
        out, self.held = self.held[:cut], self.held[cut:]
        return out

    async def close(self) -> str:
        assert not self.closed
        self.closed = True
        return self.held + self.suffix


class Upper(Sink):
    pass


class Holding(Sink):
    transform = staticmethod(str.swapcase)
    hold = 3
    suffix = "#"


class Identity(Sink):
    transform = staticmethod(str)


SINKS = [Upper, Holding, Identity]


class Opener:
    """The ``open_text`` callable: makes a sink per text and keeps them in order."""

    def __init__(self, kind: type[Sink]) -> None:
        self.kind = kind
        self.sinks: list[Sink] = []

    def __call__(self, path: Path) -> Sink:
        sink = self.kind(path)
        self.sinks.append(sink)
        return sink


def rewrite(
    chunks: list[bytes], selectors: list[Selector], kind: type[Sink] = Upper, **kw: Any
) -> tuple[bytes, Opener]:
    opener = Opener(kind)
    rewriter = JsonRewriter(selectors, opener, **kw)
    out = [drive(rewriter.feed(chunk)) for chunk in chunks]
    out.append(drive(rewriter.close()))
    assert all(isinstance(piece, bytes) for piece in out)
    assert all(sink.closed for sink in opener.sinks)
    return b"".join(out), opener


def rewrite_until_error(
    chunks: list[bytes], selectors: list[Selector], **kw: Any
) -> tuple[bytes, bool]:
    """The output returned before a TextFormatError, and whether one was raised."""
    rewriter = JsonRewriter(selectors, Opener(Upper), **kw)
    out = []
    try:
        for chunk in chunks:
            out.append(drive(rewriter.feed(chunk)))
        out.append(drive(rewriter.close()))
    except TextFormatError:
        with pytest.raises(TextFormatError):  # and it stays failed
            drive(rewriter.feed(b"1"))
        return b"".join(out), True
    return b"".join(out), False


# --------------------------------------------------------------------------------------------
# documents: a tree rendered with chosen whitespace, escaping and number spellings


@dataclass(frozen=True)
class RawNumber:
    """A number written as this exact (valid) JSON text."""

    text: str


def ref_escape(text: str) -> str:
    """The documented re-escaping: json.dumps without ensure_ascii, lone surrogates escaped."""
    out = json.dumps(text, ensure_ascii=False)
    return re.sub("[\ud800-\udfff]", lambda m: f"\\u{ord(m.group()):04x}", out)


def render(
    value: Any,
    ws: Callable[[], str],
    ascii: bool,
    pick: Callable[[Path], bool] = lambda path: False,
    transform: Callable[[str], str] = str,
    path: Path = (),
) -> str:
    """``value`` as JSON text, whitespace from ``ws``; picked strings go through ``transform``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, RawNumber):
        return value.text
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        if pick(path):
            return ref_escape(transform(value))
        return json.dumps(value, ensure_ascii=ascii)
    if isinstance(value, list):
        items = [
            ws() + render(item, ws, ascii, pick, transform, (*path, i)) + ws()
            for i, item in enumerate(value)
        ]
        return "[" + (",".join(items) if items else ws()) + "]"
    members = [
        ws()
        + json.dumps(key, ensure_ascii=ascii)
        + ws()
        + ":"
        + ws()
        + render(item, ws, ascii, pick, transform, (*path, key))
        + ws()
        for key, item in value.items()
    ]
    return "{" + (",".join(members) if members else ws()) + "}"


def plain(value: Any, pick: Callable[[Path], bool], transform: Callable[[str], str]) -> Any:
    """What json.loads of the rendered document gives, picked strings transformed."""

    def walk(value: Any, path: Path) -> Any:
        if isinstance(value, RawNumber):
            return json.loads(value.text)
        if isinstance(value, str):
            return transform(value) if pick(path) else value
        if isinstance(value, list):
            return [walk(item, (*path, i)) for i, item in enumerate(value)]
        if isinstance(value, dict):
            return {key: walk(item, (*path, key)) for key, item in value.items()}
        return value

    return walk(value, ())


def paths(value: Any, path: Path = ()) -> list[tuple[Path, Any]]:
    """Every (path, value) of the tree, in document order."""
    found = [(path, value)]
    if isinstance(value, list):
        for i, item in enumerate(value):
            found += paths(item, (*path, i))
    elif isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*path, key))
    return found


ALPHABET = [
    "a", "Z", " ", "é", "漢", "😀", '"', "\\", "/", "\n", "\t", "\x00", "\x1f", "\x7f",
    "\u2028", "ß", "\ufeff", "\ud800", "\udc00", "\udbff", "\ud83d", "\ude00",
]  # fmt: skip


def strings(surrogates: bool) -> st.SearchStrategy[str]:
    alphabet = ALPHABET if surrogates else [c for c in ALPHABET if not 0xD800 <= ord(c) < 0xE000]
    chars = st.sampled_from(alphabet) | st.characters(exclude_categories=["Cs"])
    # a round trip pairs adjacent surrogates as a JSON parser does
    tricky = st.lists(chars, max_size=12).map(lambda cs: json.loads(json.dumps("".join(cs))))
    words = st.text("abcXYZ é漢😀-_", max_size=8)  # nothing to escape
    return words | tricky


NUMBERS = st.from_regex(
    r"-?(0|[1-9][0-9]{0,6})(\.[0-9]{1,5})?([eE][+-]?[0-9]{1,3})?", fullmatch=True
)


def trees(surrogates: bool) -> st.SearchStrategy[Any]:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(-(10**20), 10**20)
        | st.floats(allow_nan=False, allow_infinity=False)
        | NUMBERS.map(RawNumber)
        | strings(surrogates)
    )
    keys = st.sampled_from(["a", "b", "content", "", "é", "a.b", "[0]"]) | strings(surrogates)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=5),
        max_leaves=16,
    )


WHITESPACE = st.lists(st.sampled_from(["", "", "", " ", "\n", "\t", "\r\n", "  "]), min_size=1)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """A tree, how to write it, and selectors drawn from its paths."""
    ascii = draw(st.booleans())
    tree = draw(trees(surrogates=ascii))
    ws = draw(WHITESPACE)
    selectors: list[Selector] = []
    for path, _ in draw(st.lists(st.sampled_from(paths(tree)), max_size=4)):
        if path:
            steps = [ANY if isinstance(s, int) and draw(st.booleans()) else s for s in path]
            selectors.append(tuple(steps))
    if draw(st.booleans()):
        selectors.append(draw(st.sampled_from([("nothing",), (ANY,), ("a", ANY, "b")])))
    bom = "\ufeff" if draw(st.integers(0, 9)) == 0 else ""
    return {"tree": tree, "ascii": ascii, "ws": ws, "selectors": selectors, "bom": bom}


def build(doc: dict[str, Any], kind: type[Sink]) -> tuple[bytes, bytes, Any, list[Path]]:
    """(input, expected output, expected json.loads of it, picked string paths in order)."""
    tree, selectors = doc["tree"], doc["selectors"]

    def pick(path: Path) -> bool:
        return any(matches(s, path) for s in selectors)

    def ws() -> Callable[[], str]:
        return itertools.cycle(doc["ws"]).__next__

    data = doc["bom"] + ws()() + render(tree, ws(), doc["ascii"]) + ws()()
    expected = doc["bom"] + ws()() + render(tree, ws(), doc["ascii"], pick, kind.reference)
    expected += ws()()
    picked = [p for p, v in paths(tree) if isinstance(v, str) and pick(p)]
    return data.encode(), expected.encode(), plain(tree, pick, kind.reference), picked


# --------------------------------------------------------------------------------------------
# JsonRewriter: equality with the reference


@examples(200)
@given(doc=documents(), kind=st.sampled_from(SINKS), data=st.data())
def test_rewrite_equals_reference_for_every_chunking(
    doc: dict[str, Any], kind: type[Sink], data: st.DataObject
) -> None:
    body, expected, value, picked = build(doc, kind)
    out, opener = rewrite(data.draw(chunkings(body)), doc["selectors"], kind)
    assert out == expected  # every byte outside the picked values is the input's
    assert json.loads(out.decode().removeprefix("\ufeff")) == value
    assert [sink.path for sink in opener.sinks] == picked
    originals = plain(doc["tree"], lambda path: False, str)
    for sink in opener.sinks:  # each sink was fed exactly its decoded value
        node = originals
        for step in sink.path:
            node = node[step]
        assert "".join(sink.fed) == node


@examples(40)
@given(doc=documents().filter(lambda doc: not doc["ascii"]), data=st.data())
def test_identity_passes_byte_for_byte(doc: dict[str, Any], data: st.DataObject) -> None:
    """Written as json.dumps writes (so re-escaping an unchanged value gives the same bytes),
    a document comes out of an identity sink unchanged."""
    body, expected, _, _ = build(doc, Identity)
    assert expected == body
    out, _ = rewrite(data.draw(chunkings(body)), doc["selectors"], Identity)
    assert out == body


@examples(80)
@given(value=strings(surrogates=True).filter(bool), prefix=st.sampled_from(["", "x", "\\n", "é"]))
def test_splits_inside_escapes_and_surrogate_pairs(value: str, prefix: str) -> None:
    """With ensure_ascii every non-ASCII character is an escape; cut at every byte."""
    body = ('{"k": ["' + prefix + '", ' + json.dumps(value, ensure_ascii=True) + "]}").encode()
    selectors = [parse_selector("k[*]")]
    whole, _ = rewrite([body], selectors)
    assert json.loads(whole) == {"k": [json.loads('"' + prefix + '"').upper(), value.upper()]}
    held, _ = rewrite([body], selectors, Holding)
    for cut in range(len(body) + 1):
        assert rewrite(split(body, [cut]), selectors)[0] == whole
        assert rewrite(split(body, [cut, cut + 3]), selectors, Holding)[0] == held


def test_escapes_decode_and_re_escape() -> None:
    body = rb'{"t": "\u00e9\ud83d\ude00\ud800x\udc00\"\\\/\b\f\n\r\t\u0000A"}'
    out, opener = rewrite([body], [("t",)], Identity)
    assert "".join(opener.sinks[0].fed) == 'é😀\ud800x\udc00"\\/\b\f\n\r\t\x00A'
    assert out == '{"t": "é😀\\ud800x\\udc00\\"\\\\/\\b\\f\\n\\r\\t\\u0000A"}'.encode()
    assert json.loads(out) == json.loads(body)


def test_lone_high_surrogate_then_quote_or_text() -> None:
    for tail in (rb'\ud83d"', rb'\ud83dx"', rb'\ud83d\n"', rb'\ud83d\ud83d\ude00"'):
        body = b'["' + tail + b"]"
        for cut in range(len(body) + 1):
            out, _ = rewrite(split(body, [cut]), [(0,)], Identity)
            assert json.loads(out) == json.loads(body)


def test_keys_numbers_literals_and_paths() -> None:
    body = (
        b'{"a": {"b": "x", "c": ["y", {"b": "z"}]}, "n": -0.5e+10, "t": true, "f": false,'
        b' "z": null, "a.b": "dotted", "": "empty key", "e": ""}'
    )
    selectors = [parse_selector(s) for s in ("a.b", "a.c[*].b", "a.c[0]", "e", "n", "t")]
    for chunks in ([body], split(body, list(range(len(body))))):
        out, opener = rewrite(chunks, selectors, Holding)
        picked = [s.path for s in opener.sinks]
        assert picked == [("a", "b"), ("a", "c", 0), ("a", "c", 1, "b"), ("e",)]
        assert json.loads(out) == {
            "a": {"b": "X#", "c": ["Y#", {"b": "Z#"}]},
            "n": -0.5e10,
            "t": True,
            "f": False,
            "z": None,
            "a.b": "dotted",
            "": "empty key",
            "e": "#",
        }


@pytest.mark.parametrize(
    "body", [b'"top"', b"12", b"-0", b"1.5E-3", b"true", b"null", b"[]", b"{}", b" [ ] \n"]
)
def test_top_level_values(body: bytes) -> None:
    for cut in range(len(body) + 1):
        assert rewrite(split(body, [cut]), [("a",)])[0] == body


def test_bom_passes() -> None:
    body = '\ufeff{"a": "x"}'.encode()
    for cut in range(len(body) + 1):
        assert rewrite(split(body, [cut]), [("a",)])[0] == '\ufeff{"a": "X"}'.encode()


async def test_sinks_that_really_await() -> None:
    class Slow(Upper):
        async def feed(self, text: str) -> str:
            await asyncio.sleep(0)
            return await super().feed(text)

    opener = Opener(Slow)
    rewriter = JsonRewriter([("a", ANY)], opener)
    body = '{"a": ["héllo", "wörld"]}'.encode()
    out = b"".join([await rewriter.feed(body[i : i + 1]) for i in range(len(body))])
    out += await rewriter.close()
    assert json.loads(out) == {"a": ["HÉLLO", "WÖRLD"]}


# --------------------------------------------------------------------------------------------
# JsonRewriter: nothing waits


@examples(100)
@given(
    value=strings(surrogates=True).filter(lambda s: len(s) > 1),
    ascii=st.booleans(),
    data=st.data(),
)
def test_a_long_value_streams_before_its_end(value: str, ascii: bool, data: st.DataObject) -> None:
    """Fed up to inside a picked value, the sink has had every complete character and the output
    holds their transform: all but an incomplete escape, UTF-8 sequence or a pair's first half."""
    if not ascii:
        value = re.sub("[\ud800-\udfff]", "s", value)
    head = b'{"x": [1, "a"], "v": "'
    content = json.dumps(value, ensure_ascii=ascii)[1:-1].encode()
    cut = data.draw(st.integers(0, len(content)))
    body = head + content[:cut]
    opener = Opener(Upper)
    rewriter = JsonRewriter([("v",)], opener)
    out = b"".join(drive(rewriter.feed(c)) for c in data.draw(chunkings(body)))
    # the complete part of the prefix, by hand
    raw = codecs.getincrementaldecoder("utf-8")().decode(content[:cut])
    raw = re.sub(r"(?<!\\)((?:\\\\)*)\\(?:u[0-9a-fA-F]{0,3})?\Z", r"\1", raw)
    if re.search(r"(?<!\\)(\\\\)*\\u[dD][89abAB][0-9a-fA-F]{2}\Z", raw):
        raw = raw[:-6]
    complete = json.loads('"' + raw + '"')
    assert "".join(opener.sinks[0].fed) == complete
    assert out == head + ref_escape(complete.upper())[1:-1].encode()


def test_output_leaves_at_once() -> None:
    rewriter = JsonRewriter([("a",)], Opener(Upper))
    assert drive(rewriter.feed(b'{"a": "abc')) == b'{"a": "ABC'
    assert drive(rewriter.feed(b"\\u00")) == b""
    assert drive(rewriter.feed(b"e9\xc3")) == "É".encode()
    assert drive(rewriter.feed(b"\xa9")) == "É".encode()
    assert drive(rewriter.feed(b'", "b": [tru')) == b'", "b": ['
    assert drive(rewriter.feed(b"e, 12")) == b"true, "
    assert drive(rewriter.feed(b"3")) == b""
    assert drive(rewriter.feed(b"]")) == b"123]"
    assert drive(rewriter.feed(b', "long key')) == b', "long key'
    assert drive(rewriter.feed(b'": "x"} \n')) == b'": "x"} \n'
    assert drive(rewriter.close()) == b""


# --------------------------------------------------------------------------------------------
# JsonRewriter: fail closed


ESCAPES_AT_END = r"(?:\\u[0-9a-fA-F]{4})*(?:\\(?:u[0-9a-fA-F]{0,3})?)?"


def error_position(body: bytes) -> int | None:
    """None if ``body`` is one valid JSON document (RFC 8259), else a byte position at or before
    which the error lies: the reference for what may have gone out."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start
    bom = 3 if text.startswith("\ufeff") else 0

    def no_constant(name: str) -> None:
        raise ValueError(name)

    try:
        json.loads(text[1 if bom else 0 :], parse_constant=no_constant)
    except json.JSONDecodeError as exc:
        rest = exc.doc[exc.doc.rfind("\\", 0, exc.pos + 1) :]  # from the escape
        if exc.msg.startswith("Unterminated string") or (
            exc.msg.startswith("Invalid \\uXXXX") and re.fullmatch(ESCAPES_AT_END, rest)
        ):
            return len(body)  # a truncated string: Python points before the end
        return bom + len(text[1 if bom else 0 :][: exc.pos].encode())
    except ValueError:  # NaN or Infinity: the first one outside a string
        for m in re.finditer(r'"(?:[^"\\]|\\.)*"|NaN|Infinity', text):
            if m.group() in ("NaN", "Infinity"):
                return len(text[: m.start()].encode())
        raise
    return None


MUTATIONS = st.sampled_from(list(b'"\\{}[],:0123456789-+.eEtrufalsnN \t\n\x00\x1f\x7f\x80\xc3\xff'))


OTHER_BRACKET = {ord(a): ord(b) for a, b in zip("[]{}", "{}[]", strict=True)}


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    body, _, _, _ = build(draw(documents()), Upper)
    data = bytearray(body)
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.integers(0, len(data)))
        what = draw(st.sampled_from(["insert", "delete", "replace", "truncate", "bracket"]))
        brackets = [i for i, b in enumerate(data) if b in b"[]{}"]
        if what == "bracket" and brackets:  # a bracket of the other kind
            i = draw(st.sampled_from(brackets))
            data[i] = OTHER_BRACKET[data[i]]
        elif what == "insert":
            data[where:where] = bytes([draw(MUTATIONS)])
        elif what == "truncate":
            del data[where:]
        elif where < len(data):
            data[where : where + 1] = b"" if what == "delete" else bytes([draw(MUTATIONS)])
    return bytes(data)


def assert_fails_closed(body: bytes, chunks: list[bytes]) -> None:
    """``body`` in ``chunks``, through a rewrite that changes nothing: all of it when it is
    JSON, else a failure with no more than what came before the error."""
    out, failed = rewrite_until_error(chunks, [("no such key",)])
    position = error_position(body)
    if position is None:
        assert not failed and out == body
    else:
        assert failed, body
        assert body.startswith(out) and len(out) <= position, (body, out, position)


@examples(300)
@given(body=mutated(), data=st.data())
def test_agrees_with_json_loads_and_fails_closed(body: bytes, data: st.DataObject) -> None:
    assert_fails_closed(body, data.draw(chunkings(body)))


@examples(50)
@given(doc=documents())
def test_every_prefix_fails_closed(doc: dict[str, Any]) -> None:
    """A document cut anywhere is incomplete (unless the cut leaves a shorter document)."""
    body, _, _, _ = build(doc, Upper)
    for cut in range(len(body)):
        prefix = body[:cut]
        assert_fails_closed(prefix, split(prefix, [cut // 2]))


@pytest.mark.parametrize(
    "body",
    [
        b"", b" ", b"[1,]", b'{"a" 1}', b'{"a": 1,}', b"[,1]", b"[1 2]", b"NaN", b"[Infinity]",
        b"-Infinity", b"[1] x", b"{} {}", b"[01]", b"[1.]", b"[.5]", b"[1e]", b"[-]", b"[+1]",
        b"[0x1]", b'"\\x"', b'"\\u12G4"', b'"a\nb"', b'"a\x00"', b'["\xff"]', b'["\xc3"]',
        b'["\xed\xa0\x80"]', b'["\xc0\xaf"]', b"[tru]", b"[truex]", b"nul", b"[", b'{"a":',
        b'{"a": "b', b'"\\ud83d', b"{1: 2}", b"{'a': 1}", b"[1}", b'{"a": 1]', b"\xef\xbb",
        b'\xef\xbb\xbf\xef\xbb\xbf""', b"[1]]", b'{"a"}', b"[\x0c1]", b"TRUE",
    ],
)  # fmt: skip
def test_invalid_documents_raise(body: bytes) -> None:
    for chunks in ([body], split(body, list(range(len(body))))):
        out, failed = rewrite_until_error(chunks, [("no such key",)])
        assert failed and body.startswith(out)
        assert rewrite_until_error(chunks, [("a",)])[1]


def test_limits() -> None:
    deep = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert rewrite([deep], [])[0] == deep
    assert rewrite_until_error([b"[" + deep + b"]"], [])[1]
    assert rewrite_until_error([b'{"a":' * (MAX_DEPTH + 1)], [])[1]
    for cuts in ([], [1], [50], [103], [105]):
        for key in (b"k" * 100, "é".encode() * 50, b"\\n" * 50):
            doc = b'{"' + key + b'": 1}'
            assert rewrite(split(doc, cuts), [], max_token=100)[0] == doc
            assert rewrite_until_error(split(doc, cuts), [], max_token=99)[1]
        for number in (b"1" * 100, b"-0." + b"5" * 97, b"1e" + b"0" * 98):
            doc = b"[" + number + b", 2]"
            assert rewrite(split(doc, cuts), [], max_token=100)[0] == doc
            assert rewrite_until_error(split(doc, cuts), [], max_token=99)[1]
            assert rewrite_until_error(split(number + b"0", cuts), [], max_token=100)[1]
        value = b'["' + b"v" * 1000 + b'", {"k": "' + b"\\u00e9" * 100 + b'"}]'
        # string values are not held, so not bounded
        assert rewrite(split(value, cuts), [], max_token=100)[0] == value
        assert rewrite(split(value, cuts), [(0,)], Identity, max_token=100)[0] == value


# --------------------------------------------------------------------------------------------
# JsonArrayFramer


def frame(chunks: list[bytes], **kw: Any) -> list[tuple[str, bytes]]:
    framer = JsonArrayFramer(**kw)
    pieces = [piece for chunk in chunks for piece in framer.feed(chunk)]
    return pieces + framer.close()


@examples(100)
@given(
    items=st.lists(trees(surrogates=False), max_size=6),
    ws=WHITESPACE,
    ascii=st.booleans(),
    data=st.data(),
)
def test_framer_elements_for_every_chunking(
    items: list[Any], ws: list[str], ascii: bool, data: st.DataObject
) -> None:
    gap = itertools.cycle(ws).__next__
    texts = [render(item, gap, ascii).encode() for item in items]
    inside = b",".join(gap().encode() + t + gap().encode() for t in texts) or gap().encode()
    body = b"[" + inside + b"]"
    body = gap().encode() + body + gap().encode()
    pieces = frame(data.draw(chunkings(body)))
    assert b"".join(piece for _, piece in pieces) == body
    assert [piece for kind, piece in pieces if kind == "element"] == texts
    assert all(re.fullmatch(rb"[\[\],\s]+", p) for kind, p in pieces if kind == "raw")
    assert [json.loads(t) for t in texts] == json.loads(body)


def test_framer_releases_at_once() -> None:
    body = b' [ {"a": "],\\"[{"}, ["x", [2]], "s\\\\", 12, true ] '
    framer = JsonArrayFramer()
    got: list[list[tuple[str, bytes]]] = [framer.feed(body[i : i + 1]) for i in range(len(body))]
    assert framer.close() == []
    for i, pieces in enumerate(got):
        for kind, piece in pieces:
            if kind == "raw":
                assert piece == body[i : i + 1]  # raw bytes are never held
            elif piece[-1:] in b'}]"':
                assert body[: i + 1].endswith(piece)  # out with its last byte
            else:
                assert body[:i].endswith(piece)  # a scalar: out with the byte after it
    elements = [p for pieces in got for kind, p in pieces if kind == "element"]
    assert elements == [b'{"a": "],\\"[{"}', b'["x", [2]]', b'"s\\\\"', b"12", b"true"]


@examples(100)
@given(body=mutated(), data=st.data())
def test_framer_on_mutated_arrays(body: bytes, data: st.DataObject) -> None:
    """Whatever the input, the pieces reproduce it; a valid array frames into its elements."""
    framer = JsonArrayFramer()
    pieces: list[tuple[str, bytes]] = []
    failed = False
    try:
        for chunk in data.draw(chunkings(body)):
            pieces += framer.feed(chunk)
        pieces += framer.close()
    except TextFormatError:
        failed = True
    assert body.startswith(b"".join(piece for _, piece in pieces))
    if not failed:  # the pieces are a whole array: with every element 0, it parses as one
        skeleton = b"".join(b"0" if kind == "element" else piece for kind, piece in pieces)
        assert isinstance(json.loads(skeleton), list)
    if error_position(body) is None and body[:3] != b"\xef\xbb\xbf":
        value = json.loads(body)
        if isinstance(value, list):
            assert not failed
            assert [json.loads(p) for k, p in pieces if k == "element"] == value


@pytest.mark.parametrize(
    "body",
    [
        b"", b"{}", b'"a"', b"1", b"[1,]", b"[,1]", b"[1 2]", b"[1]x", b"[1] [2]", b"[", b"[1",
        b'["a]', b'[{"a": 1]', b"[{]}", b"[NaN]", b"[1,,2]", b"[]]", b'["\\', b"[[1]",
    ],
)  # fmt: skip
def test_framer_invalid(body: bytes) -> None:
    for chunks in ([body], split(body, list(range(len(body))))):
        with pytest.raises(TextFormatError):
            frame(chunks)


def test_framer_max_element() -> None:
    element = b'{"a": "' + b"x" * 100 + b'"}'
    assert frame([b"[" + element + b"]"], max_element=len(element)) == [
        ("raw", b"["),
        ("element", element),
        ("raw", b"]"),
    ]
    for cuts in ([], [20], list(range(0, len(element), 7))):
        with pytest.raises(TextFormatError):
            frame(split(b"[" + element + b"]", cuts), max_element=len(element) - 1)
