"""Tests of the ``tag_lines`` transform: streamed output == ``tag_lines_reference``."""

from __future__ import annotations

import asyncio
import functools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from plugins import tag_lines as tag_lines_module
from plugins.tag_lines import Options, TagLines, render_tag, tag_lines_reference
from proxy.transform_api import TransformContext

from .transform_support import chunkings
from .transform_support import make_ctx as _make_ctx

make_ctx = functools.partial(_make_ctx, route="logs", upstream="api")

SETTINGS = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TAGS = ["[{upstream}] ", "{n}:", "", "{route}/{upstream}#{n:03d} ", "é{n}漢 ", "{n}{n}", "-"]


def examples(n: int) -> settings:
    return settings(SETTINGS, max_examples=n)


bodies = st.lists(
    st.sampled_from(["a", "bc", "\n", "\n\n", "\r\n", "é", "漢", "😀", " ", "\x00"]), max_size=30
).map("".join)


def run(transform: TagLines, chunks: list[bytes], ctx: TransformContext) -> bytes:
    stream = transform.open(ctx)
    out = []
    for chunk in chunks:
        piece = stream.feed(chunk)
        assert bool(piece) == bool(chunk), "nothing is held back, nothing is made up"
        out.append(piece)
    out.append(stream.close())
    return b"".join(out)


@examples(600)
@given(data=st.data())
def test_streamed_equals_reference(data):
    tag = data.draw(st.sampled_from(TAGS))
    charset = data.draw(st.sampled_from(["utf-8", "latin-1", "bogus"]))
    text = data.draw(bodies)
    body = text.encode("utf-8")
    chunks = data.draw(chunkings(body))
    ctx = make_ctx(charset=charset)
    expected = tag_lines_reference(body, tag, "logs", "api", charset)
    assert run(TagLines(tag=tag), chunks, ctx) == expected


@examples(60)
@given(data=st.data())
def test_async_generator_equals_reference(data):
    tag = data.draw(st.sampled_from(TAGS))
    body = data.draw(bodies).encode()
    chunks = data.draw(chunkings(body))

    async def collect():
        async def source():
            for chunk in chunks:
                yield chunk

        return [piece async for piece in TagLines(tag=tag)(source(), make_ctx())]

    pieces = asyncio.run(collect())
    assert all(pieces), "no empty chunk is yielded"
    assert b"".join(pieces) == tag_lines_reference(body, tag, "logs", "api")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", b""),
        (b"a", b"T1a"),
        (b"a\nb\n", b"T1a\nT2b\n"),
        (b"a\nb", b"T1a\nT2b"),
        (b"\n", b"T1\n"),
        (b"\n\n", b"T1\nT2\n"),
        (b"a\r\n\nb", b"T1a\r\nT2\nT3b"),
    ],
)
def test_reference_examples(body, expected):
    assert tag_lines_reference(body, "T{n}", "r", "u") == expected
    for i in range(len(body) + 1):
        assert run(TagLines(tag="T{n}"), [body[:i], body[i:]], make_ctx()) == expected


def test_tag_fields_and_charset():
    assert render_tag("[{route}|{upstream}|{n:>3}] ", "logs", "api", 7) == b"[logs|api|  7] "
    assert render_tag("{upstream}é", "r", "api", 1, "latin-1") == b"api\xe9"
    assert render_tag("{upstream}漢", "r", "api", 1, "latin-1") == b"api?"
    # CR, LF and NUL never reach the output through a route or upstream name
    assert render_tag("[{upstream}] ", "r", "a\r\nb\x00", 1) == b"[ab] "
    body = "é\nü".encode("latin-1")
    got = run(TagLines(tag="{upstream}é "), [body], make_ctx(upstream="x", charset="latin-1"))
    assert got == b"x\xe9 \xe9\nx\xe9 \xfc"


async def test_partial_line_is_tagged_at_once():
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def source():
        while (item := await queue.get()) is not None:
            yield item

    agen = TagLines(tag="[{upstream}:{n}] ")(source(), make_ctx())

    async def step(chunk: bytes | None) -> bytes:
        queue.put_nowait(chunk)
        return await asyncio.wait_for(anext(agen), timeout=5)

    assert await step(b"abc") == b"[api:1] abc"  # before its newline arrives
    assert await step(b"def\ngh") == b"def\n[api:2] gh"
    assert await step(b"\n") == b"\n"  # the next line has not started: no tag yet
    queue.put_nowait(b"")  # an empty chunk yields nothing
    assert await step(b"\n") == b"[api:3] \n"
    with pytest.raises(StopAsyncIteration):
        await step(None)


def test_fixed_tag_fast_path_across_chunks():
    transform = TagLines()  # default "[{upstream}] "
    line = b"x" * 79 + b"\n"
    body = line * 3000
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    got = run(transform, chunks, make_ctx(upstream="backend"))
    assert got == tag_lines_reference(body, "[{upstream}] ", "logs", "backend")
    assert got.count(b"[backend] ") == 3000


def test_options_model():
    assert TagLines.Options is Options is tag_lines_module.Options
    assert Options().tag == "[{upstream}] "
    opts = Options(tag="{route} {n:04d} ")
    with pytest.raises(ValidationError):
        opts.tag = "x"  # frozen
    assert TagLines(**opts.model_dump()).options == opts


@pytest.mark.parametrize(
    ("tag", "message"),
    [
        ("{host} ", "unknown field 'host'"),
        ("{0} ", "unknown field '0'"),
        ("{} ", "unknown field ''"),
        ("{route.name} ", "unknown field 'route.name'"),
        ("{upstream[0]} ", "unknown field 'upstream[0]'"),
        ("{n:{host}} ", "unknown field 'host'"),
        ("{n:zz} ", "not a valid tag template"),
        ("{route:d} ", "not a valid tag template"),
        ("{n!x} ", "not a valid tag template"),
        ("{n ", "not a valid tag template"),
        ("} ", "not a valid tag template"),
        ("a\nb", "CR, LF or NUL"),
        ("a\rb", "CR, LF or NUL"),
        ("a\x00b", "CR, LF or NUL"),
        ("{n:>100000}", "too long"),
        (5, "valid string"),
    ],
)
def test_bad_tags(tag, message):
    with pytest.raises(ValidationError) as info:
        Options(tag=tag)
    (error,) = info.value.errors()
    assert error["loc"] == ("tag",)
    assert message in error["msg"]
    with pytest.raises((ValueError, TypeError)):
        TagLines(tag=tag)


def test_unknown_option():
    with pytest.raises(ValidationError) as info:
        Options(tag="x", prefix="y")
    assert info.value.errors()[0]["loc"] == ("prefix",)
